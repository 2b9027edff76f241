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
- with `--warehouse`: every event name the config reads exists in the events table, and every
  receipt field is a property of the experiment's exposures (of any exposure before it has
  one); a missing name is reported with the nearest existing one (difflib), since a misspelt
  event would otherwise be a metric without data. `sql:` metrics parse as one read-only SELECT
  in the warehouse's own dialect.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import date, timedelta

from ab_pipeline.core.config import ExperimentConfig
from ab_pipeline.metrics import kind_of
from ab_pipeline.warehouse import Warehouse, quote_ident

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
    table = quote_ident(config.source.exposures)
    if not warehouse.table_exists(config.source.exposures):
        return None
    [row] = warehouse.query(
        f"SELECT COUNT(DISTINCT unit_id) AS units, MAX(exposed_at) AS last FROM {table} "
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
    if not events or not warehouse.table_exists(config.source.events):
        return []
    table = quote_ident(config.source.events)
    wanted = sorted(set(events.values()))
    binds = {f"e{i}": event for i, event in enumerate(wanted)}
    found = warehouse.query(
        f"SELECT event_name FROM {table} WHERE event_name IN "
        f"({', '.join(':' + b for b in binds)}) GROUP BY event_name",
        binds,
    )
    missing = set(wanted) - {str(row["event_name"]) for row in found}
    if not missing:
        return []
    existing = [
        str(row["event_name"])
        for row in warehouse.query(
            f"SELECT event_name FROM {table} WHERE event_name IS NOT NULL "
            "GROUP BY event_name ORDER BY event_name LIMIT 100000"
        )
    ]
    return [
        LintWarning(
            field,
            f"no `{event}` events in {config.source.events}: the metric would have no data"
            + _nearest(event, existing),
        )
        for field, event in events.items()
        if event in missing
    ]


def exposure_property_names(warehouse: Warehouse, config: ExperimentConfig) -> list[str]:
    """Top-level keys of the experiment's exposures' `properties` (of every exposure's when
    the experiment has none yet); distinct documents are parsed, not every row."""
    table = quote_ident(config.source.exposures)
    keys = warehouse.sql_dialect.json_keys_sql("d.doc")
    for where in ("AND x.experiment_key = :key", ""):
        rows = warehouse.query(
            f"SELECT DISTINCT {keys} AS name FROM (SELECT CAST(x.properties AS TEXT) AS doc "
            f"FROM {table} x WHERE x.properties IS NOT NULL {where} GROUP BY 1) d "
            "ORDER BY 1",
            {"key": config.key},
        )
        if rows:
            return [str(row["name"]) for row in rows]
    return []


def check_receipt_fields(config: ExperimentConfig, warehouse: Warehouse) -> list[LintWarning]:
    if not config.receipt or not warehouse.table_exists(config.source.exposures):
        return []
    existing = exposure_property_names(warehouse, config)
    if not existing:
        return []
    return [
        LintWarning(
            "receipt",
            f"`{field}` is not a property of the exposures in {config.source.exposures}"
            + _nearest(field, existing),
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


def check_warehouse_names(config: ExperimentConfig, warehouse: Warehouse) -> list[LintWarning]:
    return [
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
