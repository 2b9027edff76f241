"""How far an experiment is from its plan: units per arm the plan needs (primary and
guardrails), the effect detectable now, enrolment progress and days left, and the pre-period
moments `plan --config` reads from the warehouse.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any

from ab_pipeline.core.config import ExperimentConfig
from ab_pipeline.metrics import kind_of
from ab_pipeline.metrics.base import conditional_aggregate
from ab_pipeline.stats.statistics import (
    SampleSize,
    mde_means,
    mde_two_proportions,
    sample_size_means,
    sample_size_non_inferiority,
    sample_size_two_proportions,
)
from ab_pipeline.warehouse import Warehouse
from ab_pipeline.warehouse.sources import source_relation


def primary_sample_size(config: ExperimentConfig) -> SampleSize | None:
    """Units per arm the primary needs: proportion (plan's formula) or mean/ratio (plan.sd),
    at alpha split across the treatment arms as the configured correction will split it."""
    plan = config.plan
    if plan is None:
        return None
    k, correction = len(config.treatments), config.analysis.correction
    if plan.sd is not None:
        return sample_size_means(plan.sd, plan.mde, plan.alpha, plan.power, k, correction)
    return sample_size_two_proportions(
        plan.baseline, plan.mde, plan.alpha, plan.power, plan.formula, k, correction
    )


def detectable_now(config: ExperimentConfig, per_arm: int) -> float:
    """The smallest |effect| the primary's plan can detect with `per_arm` units (same rules)."""
    plan = config.plan
    assert plan is not None
    k, correction = len(config.treatments), config.analysis.correction
    if plan.sd is not None:
        return mde_means(plan.sd, per_arm, plan.alpha, plan.power, k, correction)
    return mde_two_proportions(
        plan.baseline, per_arm, plan.alpha, plan.power, plan.formula, k, correction, plan.mde > 0
    )


def guardrail_sample_sizes(config: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Per planned guardrail: units per arm for its one-sided bound to clear the budget with
    the plan's power when the true effect is 0."""
    plan = config.plan
    if plan is None:
        return {}
    sizes = {}
    for name, given in plan.guardrails.items():
        guardrail = config.guardrails[name]
        size = sample_size_non_inferiority(
            given.baseline,
            guardrail.budget,
            guardrail.relative,
            guardrail.harmful_direction == "increase",
            config.decision.alpha,
            plan.power,
            given.sd,
        )
        sizes[name] = {
            "required_per_arm": size.per_arm,
            "formula": size.formula,
            "budget": guardrail.budget,
            "budget_kind": guardrail.budget_kind,
            "baseline": given.baseline,
            "assumed_effect": 0.0,
        }
    return sizes


def plan_summary(config: ExperimentConfig) -> dict[str, Any] | None:
    """results.json `plan`: the config's plan, the primary's required size and each planned
    guardrail's non-inferiority size."""
    size = primary_sample_size(config)
    if size is None or config.plan is None:
        return None
    return {
        **config.plan.model_dump(exclude={"formula"}),
        "required_per_arm": size.per_arm,
        "formula": size.formula,
        "formula_name": config.plan.formula,
        "alpha_per_comparison": size.alpha_per_comparison,
        "comparisons": len(config.treatments),
        "correction": config.analysis.correction,
        "guardrail_sizes": guardrail_sample_sizes(config),
    }


def progress(
    config: ExperimentConfig, counts: dict[str, int], run_date: date
) -> dict[str, Any] | None:
    """Enrolment against the plan: fraction, MDE reachable now, enrolment rate and days left.

    Planned size and MDE now follow the same rules as the plan (`primary_sample_size`: its
    formula, alpha split across arms); days left assumes the smallest arm keeps enrolling at
    its average daily rate so far.
    """
    size = primary_sample_size(config)
    if size is None or config.plan is None:
        return None
    plan = config.plan
    planned = size.per_arm
    enrolled = {arm: int(counts.get(arm, 0)) for arm in config.arms}
    smallest = min(enrolled.values())
    days = max(min((run_date - config.start).days + 1, (config.end - config.start).days + 1), 1)
    per_day = smallest / days
    remaining = max(planned - smallest, 0)
    days_left = 0 if remaining == 0 else (math.ceil(remaining / per_day) if per_day else None)
    mde_now = detectable_now(config, smallest)
    return {
        "planned_per_arm": planned,
        "enrolled_per_arm": enrolled,
        "fraction": smallest / planned,
        # None, not infinity, before any unit enrolled: results.json is strict JSON.
        "mde_now": mde_now if math.isfinite(mde_now) else None,
        "mde_planned": abs(plan.mde),
        "formula": size.formula,
        "alpha_per_comparison": size.alpha_per_comparison,
        "enrolment_per_day": per_day,
        "days_left": days_left,
        "days_to_end": max((config.end - run_date).days, 0),
    }


def pre_period_moments(
    warehouse: Warehouse, config: ExperimentConfig, before: date, lookback_days: int
) -> dict[str, Any]:
    """The primary's baseline (and per-unit SD) over [before - lookback, before), for a plan.

    Units are those with any event in the window (the population an experiment would expose);
    each gets the primary's per-unit value over the whole window: 1 if it had the event
    (proportion), the sum or count of its values (mean), or numerator and denominator (ratio,
    SD of the linearised (X - R Y) / mean Y). Event metrics only; `unless` and the metric's
    window are not applied (a plan needs a rough variance, not the readout's definition).
    """
    from datetime import datetime, time, timedelta

    metric = config.metrics[config.primary]
    kind = kind_of(metric)
    parts = kind.pre_period_parts(metric)
    if parts is None:
        raise ValueError(
            f"primary {config.primary!r}: a pre-period plan needs an `event` metric (give "
            "--baseline / --sd instead)"
        )
    (x_event, x_how), denominator = parts
    x, y = _per_unit(x_event, x_how, "nx"), "1"
    params: dict[str, Any] = {"nx": x_event}
    if denominator is not None:
        y_event, y_how = denominator
        y, params["ny"] = _per_unit(y_event, y_how, "ny"), y_event
    until = datetime.combine(before, time())
    params |= {"since": until - timedelta(days=lookback_days), "until": until}
    [row] = warehouse.query(
        f"""WITH per_unit AS (
              SELECT unit_id, {x} AS x, {y} AS y
              FROM {source_relation(config.source, "events", warehouse.dialect)} AS e
              WHERE occurred_at >= :since AND occurred_at < :until GROUP BY unit_id)
            SELECT COUNT(*) AS n, SUM(x) AS sx, SUM(y) AS sy, SUM(x * x) AS sxx,
                   SUM(y * y) AS syy, SUM(x * y) AS sxy FROM per_unit""",
        params,
    )
    n = int(row["n"] or 0)
    if n < 2:
        raise ValueError(
            f"{config.source.describe('events')}: {n} unit(s) with events in the "
            f"{lookback_days} days before {before}; a pre-period plan needs at least 2"
        )
    sx, sy, sxx, syy, sxy = (float(row[k] or 0.0) for k in ("sx", "sy", "sxx", "syy", "sxy"))
    return kind.pre_period_moments(metric, n, sx, sy, sxx, syy, sxy)


def _per_unit(event: str, aggregate: str, param: str) -> str:
    """Per-unit aggregate of one event: any (0/1), count or sum of `value`."""
    return conditional_aggregate(aggregate, f"event_name = :{param}", "value")
