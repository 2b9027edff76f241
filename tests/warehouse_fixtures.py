"""Small hand-made warehouses in the warehouse contract (docs/warehouse.md), for tests.

Rows are built in Python (tests only; the product never moves raw events into Python) and
inserted with executemany, so the same fixture loads into DuckDB and PostgreSQL.
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
    from sqlalchemy import text

    prefix = f"{schema}." if schema else ""
    exposure_rows = [
        {"k": k, "u": u, "a": a, "t": t, "i": i, "b": b, "p": json.dumps(p) if p else None}
        for k, u, a, t, i, b, p in exposures
    ]
    event_rows = [{"u": u, "n": n, "t": t, "v": v, "k": k} for u, n, t, v, k in events]
    with warehouse.connect() as connection:
        if exposure_rows:
            values = "(:k, :u, :a, :t, :i, :b, CAST(:p AS JSON))"
            insert = text(f"INSERT INTO {prefix}exposures VALUES {values}")
            connection.execute(insert, exposure_rows)
        if event_rows:
            connection.execute(
                text(f"INSERT INTO {prefix}events VALUES (:u, :n, :t, :v, :k)"), event_rows
            )


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
    from ab_pipeline import extract

    seen: list[int] = []

    def forced(exposure_rows: int, memory_limit: str) -> int:
        seen.append(exposure_rows)
        return partitions

    monkeypatch.setattr(extract, "partitions_for", forced)
    return seen
