"""Spec linter: the one-pager checklist, checked on a valid config (`ab-pipeline validate`).

Warnings, not errors: a config that breaks them still runs (`--strict` makes them errors for
CI). Each warning names the field, like a validation problem, and says how to satisfy it.

Rules:
- `hypothesis.mechanism`: a hypothesis says *why* the change should move the metric;
- `start`/`end`: the planned run covers whole weeks (day-of-week and weekly business cycles);
- `risks`: at least one risk is named;
- `guardrails`: every business-risk topic the config's risks mention has a guardrail about it.
  The rule is a keyword table (TOPICS): a topic is *mentioned* when one of its keywords occurs
  in a risk text, and *covered* when one of its keywords occurs in a guardrail metric's name,
  event or description. Plain substring matching, lowercase, so the rule is predictable;
- `plan`: the sample size per arm is reachable by `end` at the enrolment rate, stated
  (`plan.expected_units_per_day`) or observed in the warehouse (`--warehouse`); the smallest arm
  is the binding one;
- with `--warehouse`, a source given as `{sql: ...}` is one read-only SELECT in the warehouse's
  dialect, runs (with LIMIT 0: no row is read) and returns every column of the contract with a
  type the pipeline reads (the data-quality gate's `contract_column_types` check); a source that
  does not is an error, not a warning (`blocking`): the run could not read it;
- with `--warehouse`: every event name the config reads exists in the events table, and every
  receipt field is a property of the experiment's exposures (of any exposure before it has
  one); a missing name is reported with the nearest existing one (difflib), since a misspelt
  event would otherwise be a metric without data. `sql:` metrics parse as one read-only SELECT
  in the warehouse's own dialect.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from ab_pipeline.core.config import SOURCE_COLUMNS, ExperimentConfig, SourceName
from ab_pipeline.metrics import kind_of
from ab_pipeline.warehouse import Warehouse
from ab_pipeline.warehouse.sources import SourceQueryError, source_columns, source_relation

# topic -> keywords. Substrings, so "escalat" matches escalation/escalated/escalations.
TOPICS: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "slow", "response time", "load time", "timeout"),
    "support": ("support", "ticket", "contact", "complaint"),
    "escalation": ("escalat",),
    "revenue": ("revenue", "order value", "basket", "spend", "aov"),
    "churn": ("churn", "cancel", "unsubscrib", "retention"),
    "errors": ("error", "crash", "failure"),
}


@dataclass(frozen=True)
class LintWarning:
    field: str
    reason: str
    # An error even without --strict: the run would fail on it (a source query that does not
    # match the contract).
    blocking: bool = False


@dataclass(frozen=True)
class Enrolment:
    """An enrolment rate (units per day, all arms) and where it came from."""

    per_day: float
    source: str


def planned_days(config: ExperimentConfig) -> int:
    return (config.end - config.start).days + 1


def check_mechanism(config: ExperimentConfig) -> list[LintWarning]:
    if config.hypothesis.mechanism and config.hypothesis.mechanism.strip():
        return []
    return [
        LintWarning(
            "hypothesis.mechanism",
            "the hypothesis has no mechanism: say why the change should move "
            f"{config.hypothesis.metric}",
        )
    ]


def check_whole_weeks(config: ExperimentConfig) -> list[LintWarning]:
    days = planned_days(config)
    if days % 7 == 0:
        return []
    whole = -(-days // 7) * 7  # rounded up: a shorter run would lose power
    suggested = config.start + timedelta(days=whole - 1)
    return [
        LintWarning(
            "end",
            f"the planned run is {days} days ({config.start} to {config.end}), not whole weeks; "
            f"day-of-week effects are then over- or under-weighted (e.g. end {suggested}: "
            f"{whole} days)",
        )
    ]


def check_risks(config: ExperimentConfig) -> list[LintWarning]:
    if any(risk.strip() for risk in config.risks):
        return []
    return [LintWarning("risks", "no risk is named: what could go wrong, and how would we see it?")]


def _guardrail_texts(config: ExperimentConfig) -> list[str]:
    texts = []
    for name in config.guardrails:
        metric = config.metrics[name]
        parts = [name, getattr(metric, "event", None) or "", metric.description or ""]
        texts.append(" ".join(parts).lower().replace("_", " "))
    return texts


def check_guardrail_topics(config: ExperimentConfig) -> list[LintWarning]:
    risk_text = " ".join(config.risks).lower()
    guarded = _guardrail_texts(config)
    warnings = []
    for topic, keywords in TOPICS.items():
        mentioned = [k for k in keywords if k in risk_text]
        if not mentioned:
            continue
        if any(k in text for k in keywords for text in guarded):
            continue
        warnings.append(
            LintWarning(
                "guardrails",
                f"the risks mention {mentioned[0]!r} ({topic}) but no guardrail metric's name, "
                f"event or description mentions any of {', '.join(keywords)}",
            )
        )
    return warnings


def check_sample_size(config: ExperimentConfig, enrolment: Enrolment | None) -> list[LintWarning]:
    if config.plan is None or enrolment is None:
        return []
    from ab_pipeline.readout.progress import primary_sample_size

    size = primary_sample_size(config)
    assert size is not None  # config.plan is set
    required = size.per_arm
    days = planned_days(config)
    smallest = min(config.arms.values())
    reachable = enrolment.per_day * days * smallest
    if reachable >= required:
        return []
    needed_days = required / (enrolment.per_day * smallest)
    return [
        LintWarning(
            "plan",
            f"{required:,} units per arm are needed but {enrolment.per_day:,.0f} units/day "
            f"({enrolment.source}) reach about {reachable:,.0f} in the smallest arm "
            f"({smallest:g}) over {days} planned days; that takes about {needed_days:.0f} days",
        )
    ]


def observed_enrolment(
    warehouse: Warehouse, config: ExperimentConfig, as_of: date | None = None
) -> Enrolment | None:
    """Distinct enrolled units per day from the exposures table, over the days seen so far."""
    if not readable(config, warehouse, "exposures"):
        return None
    table = source_relation(config.source, "exposures", warehouse.dialect)
    [row] = warehouse.query(
        f"SELECT COUNT(DISTINCT unit_id) AS units, MAX(exposed_at) AS last FROM {table} AS x "
        "WHERE experiment_key = :key AND exposed_at >= :start",
        {"key": config.key, "start": config.start},
    )
    if not row["units"] or row["last"] is None:
        return None
    last = row["last"].date() if hasattr(row["last"], "date") else date.fromisoformat(row["last"])
    seen = min(last, as_of or last, config.end)
    days = max(1, (seen - config.start).days + 1)
    return Enrolment(int(row["units"]) / days, f"observed over {days} days in the warehouse")


def config_events(config: ExperimentConfig) -> dict[str, str]:
    """{field path: event name} for every event the config reads."""
    events: dict[str, str] = {}
    for name, metric in config.metrics.items():
        for field, event in kind_of(metric).event_fields(metric).items():
            events[f"metrics.{name}.{field}"] = event
    if config.assignment_check and config.assignment_check.first_event:
        events["assignment_check.first_event"] = config.assignment_check.first_event
    return events


def _nearest(name: str, existing: list[str]) -> str:
    close = difflib.get_close_matches(name, existing, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def check_event_names(config: ExperimentConfig, warehouse: Warehouse) -> list[LintWarning]:
    """Event names missing from the events table, each with the nearest existing name."""
    events = config_events(config)
    if not events or not readable(config, warehouse, "events"):
        return []
    table = source_relation(config.source, "events", warehouse.dialect)
    wanted = sorted(set(events.values()))
    binds = {f"e{i}": event for i, event in enumerate(wanted)}
    found = warehouse.query(
        f"SELECT event_name FROM {table} AS e WHERE event_name IN "
        f"({', '.join(':' + b for b in binds)}) GROUP BY event_name",
        binds,
    )
    missing = set(wanted) - {str(row["event_name"]) for row in found}
    if not missing:
        return []
    existing = [
        str(row["event_name"])
        for row in warehouse.query(
            f"SELECT event_name FROM {table} AS e WHERE event_name IS NOT NULL "
            "GROUP BY event_name ORDER BY event_name LIMIT 100000"
        )
    ]
    return [
        LintWarning(
            field,
            f"no `{event}` events in {config.source.describe('events')}: the metric would "
            "have no data" + _nearest(event, existing),
        )
        for field, event in events.items()
        if event in missing
    ]


def exposure_property_names(warehouse: Warehouse, config: ExperimentConfig) -> list[str]:
    """Top-level keys of the experiment's exposures' `properties` (of every exposure's when
    the experiment has none yet); distinct documents are parsed, not every row."""
    table = source_relation(config.source, "exposures", warehouse.dialect)
    keys = warehouse.sql_dialect.json_keys_sql("d.doc")
    for where in ("AND x.experiment_key = :key", ""):
        rows = warehouse.query(
            "SELECT DISTINCT k.name AS name FROM (SELECT CAST(x.properties AS TEXT) AS doc "
            f"FROM {table} x WHERE x.properties IS NOT NULL {where} GROUP BY 1) d "
            f"CROSS JOIN {keys} AS k(name) ORDER BY 1",
            {"key": config.key},
        )
        if rows:
            return sorted({_key_text(row["name"]) for row in rows})
    return []


def _key_text(name: Any) -> str:
    """A key as text: Snowflake's FLATTEN yields VARIANTs, which arrive as JSON text."""
    text = str(name)
    return str(json.loads(text)) if text.startswith('"') and text.endswith('"') else text


def check_receipt_fields(config: ExperimentConfig, warehouse: Warehouse) -> list[LintWarning]:
    if not config.receipt or not readable(config, warehouse, "exposures"):
        return []
    existing = exposure_property_names(warehouse, config)
    if not existing:
        return []
    return [
        LintWarning(
            "receipt",
            f"`{field}` is not a property of the exposures in "
            f"{config.source.describe('exposures')}" + _nearest(field, existing),
        )
        for field in config.receipt
        if field not in existing
    ]


def check_sql_dialect(config: ExperimentConfig, warehouse: Warehouse) -> list[LintWarning]:
    """`sql:` metrics in the warehouse's own dialect (the config checked any dialect)."""
    from ab_pipeline.core.sql_safety import UnsafeSQL, checked_select

    warnings = []
    for name, metric in config.metrics.items():
        if (sql := kind_of(metric).sql_text(metric)) is None:
            continue
        try:
            checked_select(sql, warehouse.sql_dialect.sqlglot_name)
        except UnsafeSQL as error:
            warnings.append(LintWarning(f"metrics.{name}.sql", f"in {warehouse.dialect}: {error}"))
    return warnings


def readable(config: ExperimentConfig, warehouse: Warehouse, which: SourceName) -> bool:
    """Whether the other checks can read the source: its table exists, or its query runs and
    returns the contract's columns (`check_source_queries` reports why not)."""
    table = config.source.table(which)
    if table is not None:
        return warehouse.table_exists(table)
    try:
        columns = source_columns(warehouse, config.source, which)
    except SourceQueryError:
        return False
    return set(SOURCE_COLUMNS[which]) <= set(columns)


def check_source_queries(config: ExperimentConfig, warehouse: Warehouse) -> list[LintWarning]:
    """Each source given as `{sql: ...}`: one read-only SELECT in the warehouse's dialect that
    runs (LIMIT 0) and returns the contract's columns with types the pipeline reads."""
    from ab_pipeline.gates.data_quality import contract_problems

    warnings: list[LintWarning] = []
    queries: list[SourceName] = [w for w in ("exposures", "events") if config.source.sql(w)]
    for which in queries:
        field = f"source.{which}.sql"
        try:
            columns = source_columns(warehouse, config.source, which)
        except SourceQueryError as error:
            reason = str(error).removeprefix(f"{field}: ").removeprefix(field + " ")
            warnings.append(LintWarning(field, reason, blocking=True))
            continue
        missing = [c for c in SOURCE_COLUMNS[which] if c not in columns]
        if missing:
            names = ", ".join(f"`{c}`" for c in missing)
            warnings.append(
                LintWarning(
                    field,
                    f"the query returns no column {names}; an {which} source returns "
                    f"{', '.join(SOURCE_COLUMNS[which])} (docs/warehouse.md)",
                    blocking=True,
                )
            )
    if not warnings and queries:
        # The data-quality gate's own type check, over the queries' LIMIT 0 results.
        for problem in contract_problems(warehouse, config, config.end):
            source, _, rest = problem.partition(".")
            column, _, found = rest.partition(" is ")
            if source in queries and found != "missing":
                warnings.append(
                    LintWarning(
                        f"source.{source}.sql",
                        f"column `{column}` is {found}, a type the pipeline cannot read the "
                        "same on every worker: ids, arms and names text, timestamps TIMESTAMP "
                        "(without time zone, in UTC), value numeric, flags boolean, properties "
                        "JSON; cast it in the query",
                        blocking=True,
                    )
                )
    return warnings


def check_warehouse_names(config: ExperimentConfig, warehouse: Warehouse) -> list[LintWarning]:
    return [
        *check_source_queries(config, warehouse),
        *check_event_names(config, warehouse),
        *check_receipt_fields(config, warehouse),
        *check_sql_dialect(config, warehouse),
    ]


def lint_config(config: ExperimentConfig, warehouse: Warehouse | None = None) -> list[LintWarning]:
    """Every checklist warning for one config (observed rate wins over the stated one)."""
    enrolment = observed_enrolment(warehouse, config) if warehouse is not None else None
    if enrolment is None and config.plan and config.plan.expected_units_per_day:
        enrolment = Enrolment(config.plan.expected_units_per_day, "plan.expected_units_per_day")
    return [
        *check_mechanism(config),
        *check_whole_weeks(config),
        *check_risks(config),
        *check_guardrail_topics(config),
        *check_sample_size(config, enrolment),
        *(check_warehouse_names(config, warehouse) if warehouse is not None else []),
    ]
