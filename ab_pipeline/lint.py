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
  is the binding one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from ab_pipeline.config import ExperimentConfig
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
    from ab_pipeline.diagnosis import primary_sample_size

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
    ]
