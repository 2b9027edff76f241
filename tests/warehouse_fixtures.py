"""Small hand-made warehouses in the warehouse contract (docs/warehouse.md), for tests.

Rows are built in Python (tests only; the product never moves raw events into Python) and
bulk-loaded (DuckDB from a pandas frame, PostgreSQL by COPY, Spark as one INSERT of literal
rows per table), so the same fixture loads into every engine quickly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ab_pipeline.warehouse import Warehouse

EXPOSURES_DDL = """CREATE TABLE {schema}exposures (
  experiment_key TEXT NOT NULL, unit_id TEXT NOT NULL, arm TEXT NOT NULL,
  exposed_at TIMESTAMP NOT NULL, is_internal BOOLEAN DEFAULT FALSE,
  is_bot BOOLEAN DEFAULT FALSE, properties JSON)"""
EVENTS_DDL = """CREATE TABLE {schema}events (
  unit_id TEXT NOT NULL, event_name TEXT NOT NULL, occurred_at TIMESTAMP NOT NULL,
  value DOUBLE PRECISION, experiment_key TEXT)"""

Exposure = tuple[str, str, str, datetime, bool, bool, dict[str, Any] | None]
Event = tuple[str, str, datetime, float | None, str | None]
EXPOSURE_COLUMNS = (
    "experiment_key",
    "unit_id",
    "arm",
    "exposed_at",
    "is_internal",
    "is_bot",
    "properties",
)
EVENT_COLUMNS = ("unit_id", "event_name", "occurred_at", "value", "experiment_key")


def create_contract_tables(warehouse: Warehouse, schema: str = "") -> None:
    prefix = f"{schema}." if schema else ""
    warehouse.execute(
        [
            f"DROP TABLE IF EXISTS {prefix}exposures",
            f"DROP TABLE IF EXISTS {prefix}events",
            EXPOSURES_DDL.format(schema=prefix),
            EVENTS_DDL.format(schema=prefix),
        ]
    )


def insert_rows(
    warehouse: Warehouse,
    exposures: Iterable[Exposure],
    events: Iterable[Event],
    schema: str = "",
) -> None:
    """Bulk-load the rows in one transaction: DuckDB inserts from a registered pandas frame,
    PostgreSQL reads a CSV through COPY (row-by-row inserts cost about a second per thousand
    rows)."""
    prefix = f"{schema}." if schema else ""
    exposure_rows = [
        (k, u, a, t, i, b, json.dumps(p) if p else None) for k, u, a, t, i, b, p in exposures
    ]
    tables = [
        (f"{prefix}exposures", EXPOSURE_COLUMNS, exposure_rows),
        (f"{prefix}events", EVENT_COLUMNS, list(events)),
    ]
    if warehouse.dialect == "snowflake":
        for table, columns, rows in tables:
            if rows:
                _snowflake_insert(warehouse, table, columns, rows)
        return
    if warehouse.dialect == "spark":
        warehouse.execute(
            [
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES {spark_values(warehouse, rows)}"
                for table, columns, rows in tables
                if rows
            ]
        )
        return
    load = _duckdb_insert if warehouse.dialect == "duckdb" else _postgres_copy
    with warehouse.connect() as connection:
        raw = connection.connection.dbapi_connection
        for table, columns, rows in tables:
            if rows:
                load(raw, table, columns, rows)


def spark_values(warehouse: Warehouse, rows: Iterable[Sequence[Any]]) -> str:
    """Rows as literal `(...), (...)` for a Spark INSERT (Spark Connect takes no bound rows)."""
    literal = warehouse.sql_dialect.literal

    def value(v: Any) -> str:
        return f"TIMESTAMP '{v.isoformat(sep=' ')}'" if isinstance(v, datetime) else literal(v)

    return ", ".join("(" + ", ".join(value(v) for v in row) + ")" for row in rows)


def _duckdb_insert(raw: Any, table: str, columns: Sequence[str], rows: list[Any]) -> None:
    import pandas as pd

    # NaN in a float column and None in a text column arrive as NULL.
    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    select = ", ".join(f"CAST({c} AS JSON)" if c == "properties" else c for c in columns)
    raw.register("fixture_rows", frame)
    try:
        raw.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select} FROM fixture_rows")
    finally:
        raw.unregister("fixture_rows")


def _snowflake_insert(
    warehouse: Warehouse, table: str, columns: Sequence[str], rows: list[Any]
) -> None:
    """INSERT ... SELECT over VALUES, rendered like the pipeline's SQL (Snowflake takes no
    function call such as PARSE_JSON inside VALUES)."""
    from ab_pipeline.warehouse.dialects import dialect_named

    literal = dialect_named("snowflake").literal
    names = ", ".join(f"c{i}" for i in range(len(columns)))
    select = ", ".join(
        f"CAST(c{i} AS JSON)" if c == "properties" else f"c{i}" for i, c in enumerate(columns)
    )
    statements = []
    for start in range(0, len(rows), 500):
        values = ", ".join(
            "(" + ", ".join(_typed(literal, v) for v in row) + ")"
            for row in rows[start : start + 500]
        )
        statements.append(
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select} "
            f"FROM (VALUES {values}) AS v({names})"
        )
    warehouse.execute(statements)


def _typed(literal: Any, value: Any) -> str:
    if isinstance(value, datetime):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    if isinstance(value, float) and value != value:
        return "NULL"
    return str(literal(value))


def _postgres_copy(raw: Any, table: str, columns: Sequence[str], rows: list[Any]) -> None:
    import io

    data = io.StringIO("".join(",".join(map(_csv_field, row)) + "\n" for row in rows))
    with raw.cursor() as cursor:
        cursor.copy_expert(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", data
        )


def _csv_field(value: Any) -> str:
    """PostgreSQL CSV: an unquoted empty field is NULL, so every text is quoted."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace('"', '""') + '"'


def rows_by_unit(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(row["unit_id"]): row for row in rows}


def experiment_data(
    key: str, metrics: dict[str, Any], primary: str, schema: str = "", **fields: Any
) -> dict[str, Any]:
    """A minimal valid experiment config (two arms, May 2026) reading `[schema.]exposures` and
    `[schema.]events`; `fields` override or add top-level fields."""
    prefix = f"{schema}." if schema else ""
    data: dict[str, Any] = {
        "key": key,
        "version": 1,
        "title": key,
        "owner": "o@example.com",
        "recipients": ["r@example.com"],
        "hypothesis": {"change": "c", "metric": primary, "direction": "increase"},
        "unit": "user",
        "arms": {"control": 0.5, "treatment": 0.5},
        "control": "control",
        "start": "2026-05-04",
        "end": "2026-05-31",
        "source": {"exposures": f"{prefix}exposures", "events": f"{prefix}events"},
        "metrics": metrics,
        "primary": primary,
    }
    return data | fields


def split_metric_pass(monkeypatch: Any, partitions: int) -> list[int]:
    """Make the extract's DuckDB plan run its metric pass in `partitions` hash partitions.

    Returns the list that receives the exposure-row counts the plan sized itself from, so a
    test can check the real count reached the sizing."""
    from ab_pipeline.readout import extract

    seen: list[int] = []

    def forced(exposure_rows: int, memory_limit: str) -> int:
        seen.append(exposure_rows)
        return partitions

    monkeypatch.setattr(extract, "partitions_for", forced)
    return seen
