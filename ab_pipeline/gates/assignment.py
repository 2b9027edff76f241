"""Assignment-integrity gate: were the logged arms the arms the hash gives?

For a config with `assignment: hash`, the warehouse recomputes every enrolled unit's arm with
the same function product code calls (ab_pipeline.core.assignment, in SQL) and compares it with
every arm logged for the unit's exposures up to the run date. Any disagreement fails the gate
(RERUN): the logged arm is not the randomised arm, so the comparison is no longer randomised.

With `assignment_check.first_event`, units whose first exposure was logged before their first
such event (the moment they could see the variant) are reported as early exposures; they fail the
gate only above `assignment_check.max_early_rate`. Early exposure dilutes the effect (units are
counted who never saw the change) without biasing the split, hence report-only by default.

The gate does not apply (returns None) when neither is configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

from ab_pipeline.core.assignment import arm_case_sql, bucket_sql, digest_sql, salt_prefix
from ab_pipeline.core.config import ExperimentConfig
from ab_pipeline.warehouse import Warehouse, quote_ident
from ab_pipeline.warehouse.run_tables import RunWindow
from ab_pipeline.warehouse.sources import source_relation

if TYPE_CHECKING:
    from ab_pipeline.gates.base import GateContext, GateResult

EXAMPLES = 5


def _mismatch_sql(
    config: ExperimentConfig, units_table: str, dialect: str | None = None
) -> tuple[str, dict[str, Any]]:
    """One row per enrolled unit: its expected arm and any logged arm that differs."""
    case, params = arm_case_sql("h.bucket", config.arms)
    sql = f"""
WITH hashed AS (
  SELECT d.unit_id, {bucket_sql("d.digest")} AS bucket
  FROM (SELECT unit_id, {digest_sql("unit_id")} AS digest FROM {quote_ident(units_table)}) d
),
expected AS (SELECT h.unit_id, {case} AS arm FROM hashed h),
logged AS (
  SELECT DISTINCT x.unit_id, x.arm
  FROM {source_relation(config.source, "exposures", dialect)} x
  JOIN expected e ON e.unit_id = x.unit_id
  WHERE x.experiment_key = :key AND x.exposed_at >= :start
    AND x.exposed_at < :end_exclusive AND x.exposed_at < :run_end
),
wrong AS (
  SELECT e.unit_id, e.arm AS expected, MIN(l.arm) AS logged
  FROM expected e JOIN logged l ON l.unit_id = e.unit_id
  WHERE l.arm <> e.arm
  GROUP BY e.unit_id, e.arm
)"""
    return sql, params


def check_hash(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, run_date: date
) -> dict[str, Any]:
    """Counts, rate and a few examples of units whose logged arm is not their hashed arm."""
    window = RunWindow.of(config, run_date)
    cte, params = _mismatch_sql(config, units_table, warehouse.dialect)
    params.update(
        assign_prefix=salt_prefix(config.key, config.version),
        key=config.key,
        start=window.start,
        end_exclusive=window.end_exclusive,
        run_end=window.run_end,
    )
    [totals] = warehouse.query(
        f"{cte} SELECT (SELECT COUNT(*) FROM expected) AS units, "
        f"(SELECT COUNT(*) FROM wrong) AS mismatches",
        params,
    )
    examples = warehouse.query(
        f"{cte} SELECT unit_id, logged, expected FROM wrong ORDER BY unit_id LIMIT {EXAMPLES}",
        params,
    )
    units, mismatches = int(totals["units"]), int(totals["mismatches"])
    return {
        "units": units,
        "mismatches": mismatches,
        "rate": mismatches / units if units else 0.0,
        "examples": [{k: str(v) for k, v in row.items()} for row in examples],
    }


def check_early_exposures(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, run_date: date, event: str
) -> dict[str, Any]:
    """Units first exposed before their first `event` (or who never had one by the run date)."""
    window = RunWindow.of(config, run_date)
    sql = f"""
WITH first_seen AS (
  SELECT e.unit_id, MIN(e.occurred_at) AS first_event_at
  FROM {source_relation(config.source, "events", warehouse.dialect)} e
  JOIN {quote_ident(units_table)} u ON u.unit_id = e.unit_id
  WHERE e.event_name = :event AND e.occurred_at >= :start AND e.occurred_at < :run_end
  GROUP BY e.unit_id
),
flagged AS (
  SELECT u.unit_id, u.first_exposed_at, f.first_event_at
  FROM {quote_ident(units_table)} u LEFT JOIN first_seen f ON f.unit_id = u.unit_id
  WHERE f.first_event_at IS NULL OR u.first_exposed_at < f.first_event_at
)"""
    params = {"event": event, "start": window.start, "run_end": window.run_end}
    [row] = warehouse.query(
        f"{sql} SELECT (SELECT COUNT(*) FROM {quote_ident(units_table)}) AS units, "
        "COUNT(first_event_at) AS early, COUNT(*) - COUNT(first_event_at) AS never FROM flagged",
        params,
    )
    examples = warehouse.query(
        f"{sql} SELECT unit_id, first_exposed_at, first_event_at FROM flagged "
        f"WHERE first_event_at IS NOT NULL ORDER BY unit_id LIMIT {EXAMPLES}",
        params,
    )
    units, early = int(row["units"]), int(row["early"])
    return {
        "event": event,
        "units": units,
        "early": early,
        "rate": early / units if units else 0.0,
        "without_event": int(row["never"]),
        "examples": [{k: str(v) for k, v in r.items()} for r in examples],
    }


def evaluate_assignment(
    config: ExperimentConfig, hashed: dict[str, Any] | None, early: dict[str, Any] | None
) -> dict[str, Any]:
    """The gate outcome as it appears in results.json (gates.assignment)."""
    details, passed = [], True
    if hashed is not None:
        if hashed["mismatches"]:
            passed = False
            details.append(
                f"{hashed['mismatches']:,} of {hashed['units']:,} enrolled units "
                f"({hashed['rate']:.2%}) were logged in an arm the assignment hash does not give "
                f"them (e.g. {', '.join(e['unit_id'] for e in hashed['examples'][:3])})"
            )
        else:
            details.append(f"all {hashed['units']:,} enrolled units are in their hashed arm")
    limit = config.assignment_check.max_early_rate if config.assignment_check else None
    if early is not None:
        too_many = limit is not None and early["rate"] > limit
        passed = passed and not too_many
        details.append(
            f"{early['early']:,} units ({early['rate']:.2%}) were exposed before their first "
            f"{early['event']!r} event"
            + (f", {early['without_event']:,} never had one" if early["without_event"] else "")
            + (f" (limit {limit:.2%})" if limit is not None else " (reported, not gating)")
        )
    return {
        "passed": passed,
        "detail": "; ".join(details),
        "method": "md5(key:version:unit) -> bucket of 10,000 -> allocation (in the warehouse)"
        if hashed is not None
        else None,
        "units": hashed["units"] if hashed else (early["units"] if early else 0),
        "mismatches": hashed["mismatches"] if hashed else None,
        "rate": hashed["rate"] if hashed else None,
        "examples": hashed["examples"] if hashed else [],
        "early_exposures": early,
    }


def run_assignment_gate(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, run_date: date
) -> dict[str, Any] | None:
    """None when the config neither hashes its arms nor names a first event."""
    event = config.assignment_check.first_event if config.assignment_check else None
    if config.assignment != "hash" and event is None:
        return None
    hashed = (
        check_hash(warehouse, config, units_table, run_date)
        if config.assignment == "hash"
        else None
    )
    early = (
        check_early_exposures(warehouse, config, units_table, run_date, event) if event else None
    )
    return evaluate_assignment(config, hashed, early)


def run(context: GateContext, units_table: str) -> GateResult:
    """The gate as the registry runs it (ab_pipeline.gates.registry)."""
    return run_assignment_gate(context.warehouse, context.config, units_table, context.run_date)


# ---- the brief ---------------------------------------------------------------------------------


def brief_view(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """Mismatches and early exposures, formatted (templates/gates/assignment.*.j2)."""
    from ab_pipeline.core.formatting import fmt_count, fmt_pct

    def pct(value: float | None) -> str | None:
        return None if value is None else fmt_pct(value, 2)

    early = outcome.get("early_exposures") or None
    return {
        "method": outcome.get("method"),
        "units": fmt_count(outcome.get("units")),
        "mismatches": fmt_count(outcome.get("mismatches")),
        "rate": pct(outcome.get("rate")),
        "examples": list(outcome.get("examples") or [])[:10],
        "early": None
        if early is None
        else {
            "event": early.get("event"),
            "units": fmt_count(early.get("units")),
            "early": fmt_count(early.get("early")),
            "rate": pct(early.get("rate")),
            "examples": list(early.get("examples") or [])[:10],
        },
    }
