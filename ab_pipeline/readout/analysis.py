"""Analysis: sufficient statistics from the warehouse -> per-metric comparisons.

One aggregate query over the units table gives counts, sums and sums of squares per arm for
every unit-level metric; quantile metrics get their order statistics from the events table.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any

from ab_pipeline.core.config import ExperimentConfig
from ab_pipeline.core.errors import PipelineError
from ab_pipeline.metrics import kind_of
from ab_pipeline.readout.extract import (
    covariate_column,
    metric_column,
)
from ab_pipeline.stats.statistics import (
    CupedSummary,
    MeanSummary,
    adjust_p_values,
    compare_means,
    cuped_adjust,
    sequential_look,
)
from ab_pipeline.warehouse import Warehouse, quote_ident


def metric_role(config: ExperimentConfig, name: str) -> str:
    if name == config.primary:
        return "primary"
    return "guardrail" if name in config.guardrails else "secondary"


def unit_sums(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str
) -> dict[str, dict[str, Any]]:
    """{metric: {arm: summary}} for every metric whose kind reads its sufficient statistics
    (counts, sums, sums of squares and cross-products) from the units table, in one scan."""
    scanned = {
        name: sums
        for name, metric in config.metrics.items()
        if (sums := kind_of(metric).scan_sums(name)) is not None
    }
    if not scanned:
        return {}
    select = ", ".join(
        f"{expression} AS {key}_{i}"
        for i, sums in enumerate(scanned.values())
        for key, expression in sums.items()
    )
    rows = warehouse.query(
        f"SELECT arm, {select} FROM {quote_ident(units_table)} GROUP BY arm ORDER BY arm"
    )
    per_arm: dict[str, dict[str, Any]] = {name: {} for name in scanned}
    for row in rows:
        for i, (name, sums) in enumerate(scanned.items()):
            kind = kind_of(config.metrics[name])
            values = {key: row[f"{key}_{i}"] for key in sums}
            per_arm[name][str(row["arm"])] = kind.summary_from_sums(values)
    return per_arm


def cuped_sums(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, name: str
) -> dict[str, CupedSummary]:
    """Per arm: outcome sums and covariate sums/cross-products over units with an outcome."""
    y, x = quote_ident(metric_column(name)), quote_ident(covariate_column(name))
    rows = warehouse.query(
        f"""SELECT arm, COUNT({y}) AS n, SUM({y}) AS sy, SUM({y} * {y}) AS syy,
                   SUM(CASE WHEN {y} IS NOT NULL THEN {x} END) AS sx,
                   SUM(CASE WHEN {y} IS NOT NULL THEN {x} * {x} END) AS sxx,
                   SUM({x} * {y}) AS sxy
            FROM {quote_ident(units_table)} GROUP BY arm ORDER BY arm"""
    )
    return {
        str(r["arm"]): CupedSummary(
            y=MeanSummary(int(r["n"] or 0), float(r["sy"] or 0), float(r["syy"] or 0)),
            x_total=float(r["sx"] or 0),
            x_sq=float(r["sxx"] or 0),
            xy=float(r["sxy"] or 0),
        )
        for r in rows
    }


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
            comparison = kind_of(metric).compare(control, treated, config.decision.alpha)
            comparisons[arm] = comparison.as_dict()
        except ValueError as error:
            raise PipelineError(str(error), experiment=config.key, metric=name) from error
    return {
        "role": metric_role(config, name),
        "type": metric.type,
        "unit_label": config.unit,
        "description": getattr(metric, "description", None),
        "arms": {
            arm: kind_of(metric).arm_entry(s) for arm, s in per_arm.items() if arm in config.arms
        },
        "comparisons": comparisons,
    }


def analyse(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, run_date: date
) -> dict[str, dict[str, Any]]:
    """Every metric's per-arm values and treatment-vs-control comparisons (results.json shape)."""
    scanned = unit_sums(warehouse, config, units_table)
    results = {}
    for name, metric in config.metrics.items():
        kind = kind_of(metric)
        per_arm = scanned.get(name)
        if per_arm is None:
            per_arm = kind.read_per_arm(warehouse, config, name, metric, units_table, run_date)
        results[name] = _metric_result(config, name, metric, per_arm)
        if kind.cuped_of(metric) is not None:
            _apply_cuped(
                config, name, results[name], cuped_sums(warehouse, config, units_table, name)
            )
    _apply_correction(config, results.get(config.primary))
    _apply_sequential(config, results.get(config.primary), run_date)
    return results


def _apply_cuped(
    config: ExperimentConfig, name: str, result: dict[str, Any], arms: dict[str, CupedSummary]
) -> None:
    """Replace each comparison by its CUPED-adjusted one; keep the unadjusted SE for the brief."""
    metric = config.metrics[name]
    cuped = kind_of(metric).cuped_of(metric)
    assert cuped is not None
    fit = cuped_adjust({arm: s for arm, s in arms.items() if arm in config.arms})
    control = fit.adjusted.get(config.control)
    for arm, unadjusted in list(result["comparisons"].items()):
        treated = fit.adjusted.get(arm)
        if control is None or treated is None:
            continue
        adjusted: dict[str, Any] = compare_means(control, treated, config.decision.alpha).as_dict()
        se0 = float(unadjusted["se"])
        adjusted["method"] = "CUPED-adjusted (pooled theta) " + adjusted["method"]
        adjusted["cuped"] = {
            "covariate": name if cuped.covariate == "same" else cuped.covariate,
            "lookback": cuped.model_dump(mode="json")["lookback"],
            "until": cuped.model_dump(mode="json")["until"],
            "theta": fit.theta,
            "variance_reduction": 1 - (adjusted["se"] / se0) ** 2 if se0 > 0 else 0.0,
            "se_unadjusted": se0,
            "absolute_unadjusted": unadjusted["absolute"],
            "ci_unadjusted": unadjusted["ci"],
        }
        result["comparisons"][arm] = adjusted


def _apply_correction(config: ExperimentConfig, primary: dict[str, Any] | None) -> None:
    """Holm (default) or BH across the primary's treatment-vs-control comparisons."""
    if not primary or not primary["comparisons"]:
        return
    arms = list(primary["comparisons"])
    method = config.analysis.correction
    adjusted = adjust_p_values([primary["comparisons"][a]["p_value"] for a in arms], method)
    for arm, p in zip(arms, adjusted, strict=True):
        primary["comparisons"][arm]["p_value_adjusted"] = p
        primary["comparisons"][arm]["correction"] = {
            "method": method,
            "family": len(arms),
            "alpha": config.decision.alpha,
        }


def current_look(config: ExperimentConfig, run_date: date) -> int:
    """Which of the planned, equally spaced looks this readout is (the last on `end`)."""

    total = max((config.end - config.start).days, 1)
    elapsed = min(max((run_date - config.start).days, 0), total)
    return max(1, math.ceil(config.planned_looks * elapsed / total - 1e-9))


def _apply_sequential(
    config: ExperimentConfig, primary: dict[str, Any] | None, run_date: date
) -> None:
    if config.analysis.sequential == "none" or not primary:
        return
    look = current_look(config, run_date)
    family = max(len(primary["comparisons"]), 1)
    for comparison in primary["comparisons"].values():
        se = comparison["se"]
        z = comparison["absolute"] / se if se else 0.0  # None: discrete, no z to compare
        # Several arms: Bonferroni-split the alpha the boundaries spend (conservative, simple).
        result = sequential_look(z, look, config.planned_looks, config.decision.alpha / family)
        comparison["sequential"] = {
            "method": result.method,
            "look": result.look,
            "planned_looks": result.planned_looks,
            "information_fraction": result.information_fraction,
            "alpha_spent": result.alpha_spent,
            "boundary": result.boundary if result.boundary != float("inf") else None,
            "z": result.z,
            "crossed": result.crossed,
        }
