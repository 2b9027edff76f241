"""Analysis: sufficient statistics from the warehouse -> per-metric comparisons.

One aggregate query over the units table gives counts, sums and sums of squares per arm for
every unit-level metric; quantile metrics get their order statistics from the events table.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from ab_pipeline.config import ExperimentConfig, MeanMetric, ProportionMetric, QuantileMetric
from ab_pipeline.errors import PipelineError
from ab_pipeline.extract import metric_column, quantile_events_sql
from ab_pipeline.statistics import (
    Comparison,
    MeanSummary,
    QuantileSummary,
    compare_means,
    compare_proportions,
    compare_quantiles,
    quantile_bracket,
)
from ab_pipeline.warehouse import Warehouse, quote_ident


def metric_role(config: ExperimentConfig, name: str) -> str:
    if name == config.primary:
        return "primary"
    return "guardrail" if name in config.guardrails else "secondary"


def unit_level_sums(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str
) -> dict[str, dict[str, MeanSummary]]:
    """{metric: {arm: (n, sum, sum of squares)}} for every unit-level metric, in one scan."""
    names = [n for n, m in config.metrics.items() if not isinstance(m, QuantileMetric)]
    select = ", ".join(
        f"COUNT({c}) AS n_{i}, SUM({c}) AS s_{i}, SUM({c} * {c}) AS q_{i}"
        for i, c in enumerate(metric_column(n) for n in names)
    )
    rows = warehouse.query(
        f"SELECT arm, {select} FROM {quote_ident(units_table)} GROUP BY arm ORDER BY arm"
    )
    sums: dict[str, dict[str, MeanSummary]] = {name: {} for name in names}
    for row in rows:
        for i, name in enumerate(names):
            sums[name][str(row["arm"])] = MeanSummary(
                n=int(row[f"n_{i}"] or 0),
                total=float(row[f"s_{i}"] or 0.0),
                total_sq=float(row[f"q_{i}"] or 0.0),
            )
    return sums


def quantile_summaries(
    warehouse: Warehouse,
    config: ExperimentConfig,
    name: str,
    metric: QuantileMetric,
    units_table: str,
    run_date: date,
) -> dict[str, QuantileSummary]:
    """Per arm: event count, the sample quantile and the order statistics bracketing it."""
    body, params = quantile_events_sql(config, metric, units_table, run_date)
    counts = warehouse.query(f"SELECT u.arm AS arm, COUNT(*) AS n {body} GROUP BY u.arm", params)
    summaries = {}
    for row in counts:
        arm, n = str(row["arm"]), int(row["n"])
        if n < 2:
            continue
        low, high, z = quantile_bracket(metric.quantile, n, config.decision.alpha)
        [values] = warehouse.query(
            f"""SELECT
                  percentile_cont({metric.quantile!r}) WITHIN GROUP (ORDER BY e.value) AS estimate,
                  percentile_disc({low!r}) WITHIN GROUP (ORDER BY e.value) AS lower,
                  percentile_disc({high!r}) WITHIN GROUP (ORDER BY e.value) AS upper
                {body} AND u.arm = :arm""",
            {**params, "arm": arm},
        )
        summaries[arm] = QuantileSummary(
            n=n,
            estimate=float(values["estimate"]),
            lower=float(values["lower"]),
            upper=float(values["upper"]),
            z=z,
        )
    return summaries


def _arm_entry(metric: Any, summary: MeanSummary | QuantileSummary) -> dict[str, Any]:
    if isinstance(summary, QuantileSummary):
        return {"events": summary.n, "value": summary.estimate}
    entry: dict[str, Any] = {"units": summary.n, "value": summary.mean if summary.n else None}
    if isinstance(metric, ProportionMetric):
        entry["successes"] = int(round(summary.total))
    return entry


def _compare(metric: Any, c: Any, t: Any, alpha: float) -> Comparison:
    if isinstance(metric, ProportionMetric):
        return compare_proportions(int(round(c.total)), c.n, int(round(t.total)), t.n, alpha)
    if isinstance(metric, MeanMetric):
        return compare_means(c, t, alpha)
    return compare_quantiles(c, t, alpha)


def _metric_result(
    config: ExperimentConfig, name: str, metric: Any, per_arm: dict[str, Any]
) -> dict[str, Any]:
    control = per_arm.get(config.control)
    comparisons = {}
    for arm in config.treatments:
        treated = per_arm.get(arm)
        if control is None or treated is None or min(control.n, treated.n) < 2:
            continue
        try:
            comparisons[arm] = _compare(metric, control, treated, config.decision.alpha).as_dict()
        except ValueError as error:
            raise PipelineError(str(error), experiment=config.key, metric=name) from error
    return {
        "role": metric_role(config, name),
        "type": metric.type,
        "unit_label": config.unit,
        "description": getattr(metric, "description", None),
        "arms": {arm: _arm_entry(metric, s) for arm, s in per_arm.items() if arm in config.arms},
        "comparisons": comparisons,
    }


def analyse(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, run_date: date
) -> dict[str, dict[str, Any]]:
    """Every metric's per-arm values and treatment-vs-control comparisons (results.json shape)."""
    sums = unit_level_sums(warehouse, config, units_table)
    results = {}
    for name, metric in config.metrics.items():
        if isinstance(metric, QuantileMetric):
            per_arm: dict[str, Any] = quantile_summaries(
                warehouse, config, name, metric, units_table, run_date
            )
        else:
            per_arm = sums[name]
        results[name] = _metric_result(config, name, metric, per_arm)
    return results
