"""Results tables: every readout, queryable in the warehouse next to the data it came from.

Four tables (in `results_schema()`), one row set per readout *attempt* (experiment, run_date,
attempt_id):

- `ab_readouts`        one decision record per attempt: decision, status, reason, config hash,
                       code version, owner, when it was written, and the whole results.json;
- `ab_metric_results`  per metric and arm: units/events, value; for a treatment arm its
                       comparison with control (absolute, interval, relative, p-values, SE);
                       the metric's definition hash and catalog origin (ab_pipeline.core.catalog);
- `ab_gate_results`    per gate: ran, passed, detail, the outcome as JSON;
- `ab_checks`          every check behind the decision, PASS/FAIL with its numbers.

Nothing is ever deleted across attempts: re-running a date adds an attempt, so a RERUN (data
broke overnight) never erases the date's earlier SHIP. `write_readout` replaces only its own
attempt's rows (a retried brief task), in a single transaction: a run killed mid-write leaves
every earlier row untouched. The views `ab_latest_readouts`, `ab_latest_metric_results`,
`ab_latest_gate_results` and `ab_latest_checks` show, per (experiment, run_date), the attempt the
date stands on: its latest decision-grade readout (anything but RERUN), else its latest attempt.
`history` reads those views back for results.json (`history`, docs/results.md) and the brief's
trajectory chart; `latest_final_readout` serves `ab-pipeline decide`.

Tables written before attempts existed are migrated on the next write (their rows become
attempt `before-attempts`); columns added since (`ADDED_COLUMNS`) are added, NULL in old rows.
Only SQL that DuckDB and PostgreSQL share; JSON is stored as TEXT.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from ab_pipeline.warehouse import Warehouse, quote_ident
from ab_pipeline.warehouse.dialects import dialect_named

if TYPE_CHECKING:
    from sqlalchemy import TextClause
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

RESULTS_SCHEMA_ENV = "AB_PIPELINE_RESULTS_SCHEMA"
_KEY = "experiment TEXT NOT NULL, run_date DATE NOT NULL"
# After a table's original columns; a table from before attempts migrates by naming its columns.
_ATTEMPT = "attempt_id TEXT NOT NULL"
# Columns added after the tables first shipped: last, so that `ensure_tables` can add them to a
# table that lacks them (ALTER TABLE ... ADD COLUMN appends).
ADDED_COLUMNS: dict[str, list[str]] = {
    "ab_metric_results": ["definition_sha256 TEXT", "catalog_metric TEXT", "catalog_file TEXT"],
}
LEGACY_ATTEMPT = "before-attempts"
TABLES: dict[str, str] = {
    "ab_readouts": f"""{_KEY}, version INTEGER, status TEXT NOT NULL, decision TEXT NOT NULL,
        decision_reason TEXT, config_sha256 TEXT NOT NULL, code_version TEXT, owner TEXT,
        title TEXT, written_at TIMESTAMP NOT NULL, results_json TEXT NOT NULL, {_ATTEMPT},
        PRIMARY KEY (experiment, run_date, attempt_id)""",
    "ab_metric_results": f"""{_KEY}, metric TEXT NOT NULL, role TEXT, metric_type TEXT,
        arm TEXT NOT NULL, is_control BOOLEAN NOT NULL, units BIGINT, events BIGINT,
        value DOUBLE PRECISION, absolute DOUBLE PRECISION, ci_low DOUBLE PRECISION,
        ci_high DOUBLE PRECISION, relative DOUBLE PRECISION, relative_ci_low DOUBLE PRECISION,
        relative_ci_high DOUBLE PRECISION, p_value DOUBLE PRECISION,
        p_value_adjusted DOUBLE PRECISION, se DOUBLE PRECISION, method TEXT, {_ATTEMPT},
        {", ".join(ADDED_COLUMNS["ab_metric_results"])},
        PRIMARY KEY (experiment, run_date, attempt_id, metric, arm)""",
    "ab_gate_results": f"""{_KEY}, gate TEXT NOT NULL, ran BOOLEAN NOT NULL, passed BOOLEAN,
        detail TEXT, outcome_json TEXT, {_ATTEMPT},
        PRIMARY KEY (experiment, run_date, attempt_id, gate)""",
    "ab_checks": f"""{_KEY}, position INTEGER NOT NULL, name TEXT NOT NULL, passed BOOLEAN,
        detail TEXT, metric TEXT, arm TEXT, observed DOUBLE PRECISION, bound DOUBLE PRECISION,
        {_ATTEMPT}, PRIMARY KEY (experiment, run_date, attempt_id, position)""",
}
T = TypeVar("T")
LATEST = "ab_latest_"  # + the table's name without `ab_`: the view of the attempts dates stand on


def _text(connection: Connection, statement: str) -> TextClause:
    """A canonical statement rendered for the connection's engine (SQLAlchemy names its
    dialects as the pipeline does: duckdb, postgresql, snowflake)."""
    from sqlalchemy import text

    return text(dialect_named(connection.dialect.name).render(statement))


def results_schema(default: str | None = None) -> str | None:
    """$AB_PIPELINE_RESULTS_SCHEMA, else `default` (the experiment's work schema), else none."""
    return os.environ.get(RESULTS_SCHEMA_ENV) or default


def table(name: str, schema: str | None) -> str:
    return quote_ident(f"{schema}.{name}" if schema else name)


def latest_view(name: str) -> str:
    """`ab_readouts` -> `ab_latest_readouts`."""
    return LATEST + name.removeprefix("ab_")


def ensure_tables(connection: Connection, schema: str | None) -> None:
    """Create the tables and views; migrate tables from before attempts (callers serialise)."""
    from sqlalchemy import inspect

    if schema:
        connection.execute(_text(connection, f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"))
    existing = set(inspect(connection).get_table_names(schema=schema))
    for name, columns in TABLES.items():
        if name in existing and "attempt_id" not in _columns(connection, name, schema):
            _migrate(connection, name, columns, schema)
        elif name in existing:
            _add_columns(connection, name, schema)
        connection.execute(
            _text(connection, f"CREATE TABLE IF NOT EXISTS {table(name, schema)} ({columns})")
        )
    for statement in view_statements(schema):
        connection.execute(_text(connection, statement))


def _columns(connection: Connection, name: str, schema: str | None) -> list[str]:
    # Not the inspector's get_columns: duckdb_engine cannot run its catalog query.
    result = connection.execute(
        _text(connection, f"SELECT * FROM {table(name, schema)} WHERE 1 = 0")
    )
    return list(result.keys())


def _add_columns(connection: Connection, name: str, schema: str | None) -> None:
    """Give a table written by an earlier version the columns added since (NULL in old rows)."""
    present = set(_columns(connection, name, schema))
    for column in ADDED_COLUMNS.get(name, []):
        if column.split()[0] not in present:
            connection.execute(
                _text(connection, f"ALTER TABLE {table(name, schema)} ADD COLUMN {column}")
            )


def _migrate(connection: Connection, name: str, columns: str, schema: str | None) -> None:
    """Rebuild a table from before attempts: its rows become one attempt per date."""
    old = f"{name}__before_attempts"
    names = ", ".join([*_columns(connection, name, schema), "attempt_id"])
    statements = [
        f"ALTER TABLE {table(name, schema)} RENAME TO {quote_ident(old)}",
        f"CREATE TABLE {table(name, schema)} ({columns})",
        f"INSERT INTO {table(name, schema)} ({names}) SELECT *, :legacy FROM {table(old, schema)}",
        f"DROP TABLE {table(old, schema)}",
    ]
    for statement in statements:
        connection.execute(_text(connection, statement), {"legacy": LEGACY_ATTEMPT})
    log.info("results table %s migrated to one row set per attempt", table(name, schema))


def view_statements(schema: str | None) -> list[str]:
    """The `ab_latest_*` views: per date, its latest decision-grade attempt, else its latest."""
    readouts = table("ab_readouts", schema)
    latest = table(latest_view("ab_readouts"), schema)
    statements = [
        f"""CREATE OR REPLACE VIEW {latest} AS
SELECT r.* FROM {readouts} r
WHERE r.attempt_id = (
  SELECT c.attempt_id FROM {readouts} c
  WHERE c.experiment = r.experiment AND c.run_date = r.run_date
  ORDER BY CASE WHEN c.decision = 'RERUN' THEN 1 ELSE 0 END, c.written_at DESC,
           c.attempt_id DESC
  LIMIT 1)"""
    ]
    for name in list(TABLES)[1:]:
        statements.append(
            f"""CREATE OR REPLACE VIEW {table(latest_view(name), schema)} AS
SELECT t.* FROM {table(name, schema)} t JOIN {latest} l
  ON l.experiment = t.experiment AND l.run_date = t.run_date AND l.attempt_id = t.attempt_id"""
        )
    return statements


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _pair(value: Any) -> tuple[float | None, float | None]:
    if isinstance(value, list | tuple) and len(value) == 2:
        return _float(value[0]), _float(value[1])
    return None, None


def readout_row(results: Mapping[str, Any], written_at: datetime) -> dict[str, Any]:
    return {
        "version": results.get("version"),
        "status": results["status"],
        "decision": results["decision"],
        "decision_reason": results.get("decision_reason"),
        "config_sha256": results["config_sha256"],
        "code_version": results.get("code_version"),
        "owner": results.get("owner"),
        "title": results.get("title"),
        "written_at": written_at,
        # history is derived from these tables: storing it would nest every earlier readout.
        "results_json": json.dumps({k: v for k, v in results.items() if k != "history"}),
    }


def metric_rows(results: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    control = results.get("control")
    definitions = results.get("metric_definitions") or {}
    for metric, body in (results.get("metrics") or {}).items():
        comparisons = body.get("comparisons") or {}
        defined = definitions.get(metric) or {}
        for arm, stats in (body.get("arms") or {}).items():
            comp = comparisons.get(arm) or {}
            ci_low, ci_high = _pair(comp.get("ci"))
            rel_low, rel_high = _pair(comp.get("relative_ci"))
            yield {
                "metric": metric,
                "role": body.get("role"),
                "metric_type": body.get("type"),
                "arm": arm,
                "is_control": arm == control,
                "units": stats.get("units"),
                "events": stats.get("events"),
                "value": _float(stats.get("value")),
                "absolute": _float(comp.get("absolute")),
                "ci_low": ci_low,
                "ci_high": ci_high,
                "relative": _float(comp.get("relative")),
                "relative_ci_low": rel_low,
                "relative_ci_high": rel_high,
                "p_value": _float(comp.get("p_value")),
                "p_value_adjusted": _float(comp.get("p_value_adjusted")),
                "se": _float(comp.get("se")),
                "method": comp.get("method"),
                "definition_sha256": defined.get("sha256"),
                "catalog_metric": defined.get("catalog_metric"),
                "catalog_file": defined.get("catalog_file"),
            }


def gate_rows(results: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for gate, outcome in (results.get("gates") or {}).items():
        yield {
            "gate": gate,
            "ran": outcome is not None,
            "passed": None if outcome is None else bool(outcome.get("passed")),
            "detail": None if outcome is None else outcome.get("detail"),
            "outcome_json": None if outcome is None else json.dumps(outcome, default=str),
        }


def check_rows(results: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for position, check in enumerate(results.get("checks") or []):
        yield {
            "position": position,
            "name": check["name"],
            "passed": check.get("passed"),
            "detail": check.get("detail"),
            "metric": check.get("metric"),
            "arm": check.get("arm"),
            "observed": _float(check.get("observed")),
            "bound": _float(check.get("bound")),
        }


def _insert(
    connection: Connection, name: str, schema: str | None, key: dict[str, Any], rows: list[dict]
) -> None:
    if not rows:
        return
    columns = [*key, *rows[0]]
    sql = (
        f"INSERT INTO {table(name, schema)} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)})"
    )
    connection.execute(_text(connection, sql), [{**key, **row} for row in rows])


def write_readout(
    warehouse: Warehouse,
    results: Mapping[str, Any],
    schema: str | None = None,
    written_at: datetime | None = None,
    attempt: str | None = None,
) -> str:
    """Store one attempt's rows in every results table, in one transaction; returns its id.

    Earlier attempts of the date stay; only this attempt's own rows (a retried brief) are
    replaced. Without `attempt`, every call is a new attempt.
    """
    written_at = written_at or datetime.now(UTC).replace(tzinfo=None)
    attempt = attempt or f"adhoc-{written_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    key = {
        "experiment": results["experiment"],
        "run_date": date.fromisoformat(results["run_date"]),
        "attempt_id": attempt,
    }
    with warehouse.connect() as connection:  # commits at the end, rolls back on any error
        lock = warehouse.sql_dialect.results_lock()
        if lock is not None:  # PostgreSQL: writers of the results tables take turns
            connection.execute(_text(connection, lock))
        ensure_tables(connection, schema)
        for name in TABLES:
            connection.execute(
                _text(
                    connection,
                    f"DELETE FROM {table(name, schema)} WHERE experiment = :experiment "
                    "AND run_date = :run_date AND attempt_id = :attempt_id",
                ),
                key,
            )
        _insert(connection, "ab_readouts", schema, key, [readout_row(results, written_at)])
        _insert(connection, "ab_metric_results", schema, key, list(metric_rows(results)))
        _insert(connection, "ab_gate_results", schema, key, list(gate_rows(results)))
        _insert(connection, "ab_checks", schema, key, list(check_rows(results)))
    return attempt


def history(
    warehouse: Warehouse, experiment: str, before: date, schema: str | None = None
) -> list[dict[str, Any]]:
    """Earlier readouts, oldest first: `[{run_date, decision, status, primary: {absolute, ci}}]`.

    One per date: the attempt the date stands on (`ab_latest_readouts`). `primary` is the
    primary metric's first treatment comparison (null when none was analysed).
    """
    readouts = warehouse.query(
        f"""SELECT r.run_date, r.decision, r.status, m.absolute, m.ci_low, m.ci_high, m.arm
        FROM {table(latest_view("ab_readouts"), schema)} r
        LEFT JOIN {table("ab_metric_results", schema)} m
          ON m.experiment = r.experiment AND m.run_date = r.run_date
         AND m.attempt_id = r.attempt_id AND m.role = 'primary' AND NOT m.is_control
        WHERE r.experiment = :experiment AND r.run_date < :before
        ORDER BY r.run_date, m.arm""",
        {"experiment": experiment, "before": before},
    )
    days: dict[str, dict[str, Any]] = {}
    arms: dict[str, dict[str, Any]] = {}
    for row in readouts:
        day = _iso(row["run_date"])
        days.setdefault(day, row)
        if row["arm"] is not None:
            arms.setdefault(day, {})[row["arm"]] = row
    out = []
    for day, row in days.items():
        first = first_treatment(arms.get(day, {}))
        primary = None
        if first is not None and first["absolute"] is not None:
            primary = {"absolute": first["absolute"], "ci": [first["ci_low"], first["ci_high"]]}
        out.append(
            {
                "run_date": day,
                "decision": row["decision"],
                "status": row["status"],
                "primary": primary,
            }
        )
    return out


def first_treatment(comparisons: Mapping[str, T]) -> T | None:
    """What stands for a readout with several treatment arms (`history`, the brief's
    trajectory): the first treatment arm by name. None without any."""
    return comparisons[min(comparisons)] if comparisons else None


def previous_readout(
    warehouse: Warehouse,
    experiment: str,
    run_date: date,
    attempt: str,
    schema: str | None = None,
) -> dict[str, Any] | None:
    """results.json of the readout before this attempt: the latest written of the latest date
    up to `run_date` (an earlier attempt of the same date included), or None."""
    rows = warehouse.query(
        f"""SELECT results_json FROM {table("ab_readouts", schema)}
        WHERE experiment = :experiment AND run_date <= :run_date
          AND NOT (run_date = :run_date AND attempt_id = :attempt)
        ORDER BY run_date DESC, written_at DESC, attempt_id DESC LIMIT 1""",
        {"experiment": experiment, "run_date": run_date, "attempt": attempt},
    )
    return dict(json.loads(rows[0]["results_json"])) if rows else None


def latest_final_readout(
    warehouse: Warehouse, experiment: str, schema: str | None = None
) -> dict[str, Any] | None:
    """results.json of the experiment's latest final readout, as its date stands (or None)."""
    view = latest_view("ab_readouts")
    if not warehouse.table_exists(f"{schema}.{view}" if schema else view):
        return None
    rows = warehouse.query(
        f"SELECT results_json FROM {table(view, schema)} WHERE experiment = :experiment "
        "AND status = 'final' ORDER BY run_date DESC LIMIT 1",
        {"experiment": experiment},
    )
    if not rows:
        return None
    from ab_pipeline.readout.results_model import validate_results

    results = dict(json.loads(rows[0]["results_json"]))
    validate_results(results, f"{table(view, schema)} results_json of {experiment}")
    return results


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)[:10]


def store_readout(
    warehouse: Warehouse,
    results: dict[str, Any],
    schema: str | None,
    attempt: str,
    run_date: date,
) -> dict[str, Any]:
    """Write the readout's rows (this attempt's); return `results` with `history` and
    `definition_changes` (catalog metrics whose definition differs from the previous readout)."""
    from ab_pipeline.core.catalog import definition_changes

    write_readout(warehouse, results, schema, attempt=attempt)
    earlier = history(warehouse, results["experiment"], run_date, schema)
    previous = previous_readout(warehouse, results["experiment"], run_date, attempt, schema)
    log.info(
        "[experiment=%s run_date=%s] readout stored in the results tables (%d earlier)",
        results["experiment"],
        results["run_date"],
        len(earlier),
    )
    return {
        **results,
        "history": earlier,
        "definition_changes": definition_changes(previous, results),
    }
