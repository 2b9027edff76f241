"""Analysis: sufficient statistics from the warehouse -> per-metric comparisons.

One aggregate query over the units table gives counts, sums and sums of squares per arm for
every unit-level metric; quantile metrics get their order statistics from the events table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date
from typing import Any

from ab_pipeline.config import ExperimentConfig, QuantileMetric
from ab_pipeline.errors import PipelineError
from ab_pipeline.extract import (
    covariate_column,
    metric_column,
    quantile_count_column,
    quantile_events_sql,
    quantile_histogram_table_name,
)
from ab_pipeline.metrics import kind_of
from ab_pipeline.quantiles import (
    cont_ranks,
    disc_rank,
    histograms,
    order_statistics,
    stored_histograms,
)
from ab_pipeline.statistics import (
    CupedSummary,
    MeanSummary,
    QuantileClusterSums,
    QuantileSummary,
    adjust_p_values,
    clustered_quantile_bracket,
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


def bracket_margin(n: int) -> int:
    """Ranks read on either side of the estimate's: a 95% bracket spans about
    2 sqrt(n q (1 - q) deff) ranks; 4 sqrt(n) covers design effects up to ~16 at q = 0.5."""
    return 4 * math.isqrt(n) + 16


def quantile_summaries(
    warehouse: Warehouse,
    config: ExperimentConfig,
    name: str,
    metric: QuantileMetric,
    units_table: str,
    run_date: date,
) -> dict[str, QuantileSummary]:
    """Per arm: event count, the sample quantile and the order statistics bracketing it.

    Exact `percentile_cont` / `percentile_disc` values, read through a bucket histogram (one
    pass over the events, then narrow passes; `ab_pipeline.quantiles`) so memory stays bounded.
    """
    body, params = quantile_events_sql(config, metric, units_table, run_date)

    def narrowed(values: str) -> str:
        return quantile_events_sql(config, metric, units_table, run_date, values)[0]

    q = metric.quantile
    stored = quantile_histogram_table_name(config, run_date)
    if warehouse.table_exists(stored):
        found = stored_histograms(warehouse, stored, name)
    else:  # a units table built before the extract stored histograms: one pass instead
        found = histograms(warehouse, body, params)
    hists = {arm: h for arm, h in found.items() if h.n >= 2}
    cont = {arm: cont_ranks(q, h.n) for arm, h in hists.items()}
    # The bracket's ranks lie within a few sqrt(n) of the estimate's: read that span with the
    # estimate, and make a second pass only for a bracket outside it.
    margins = {arm: bracket_margin(h.n) for arm, h in hists.items()}
    values = order_statistics(
        warehouse, narrowed, params, hists, {a: {r[0], r[1]} for a, r in cont.items()}, margins
    )
    estimates = {}
    for arm, (below, above, fraction) in cont.items():
        low, high = values[arm][below], values[arm][above]
        estimates[arm] = low + fraction * (high - low)
    clusters = quantile_cluster_sums(
        warehouse, narrowed, params, estimates, units_table, quantile_count_column(name), q
    )
    brackets = {
        arm: clustered_quantile_bracket(q, clusters[arm], config.decision.alpha) for arm in hists
    }
    ranks = {
        arm: (disc_rank(brackets[arm][0], h.n), disc_rank(brackets[arm][1], h.n))
        for arm, h in hists.items()
    }
    outside = {a: set(r) - set(values[a]) for a, r in ranks.items() if set(r) - set(values[a])}
    if outside:
        for arm, more in order_statistics(warehouse, narrowed, params, hists, outside).items():
            values[arm].update(more)
    return {
        arm: QuantileSummary(
            n=h.n,
            estimate=estimates[arm],
            lower=values[arm][ranks[arm][0]],
            upper=values[arm][ranks[arm][1]],
            z=brackets[arm][2],
        )
        for arm, h in hists.items()
    }


def quantile_cluster_sums(
    warehouse: Warehouse,
    narrowed: Callable[[str], str],
    params: dict[str, Any],
    estimates: dict[str, float],
    units_table: str,
    count_column: str,
    q: float,
) -> dict[str, QuantileClusterSums]:
    """Per arm, over units: sums of N_i (events), I_i (events <= the arm's quantile), their
    squares and cross-product: the pieces of the Deng-Knoblich-Lu variance.

    N_i is a column of the units table (counted by the extract). Only the smaller side of the
    quantile is read from the events: J_i = events above x_q when q >= 0.5 (then I_i = N_i - J_i),
    else J_i = I_i itself; the value predicate is applied while scanning, so a p95 reads 5% of
    the events past the scan.
    """
    if not estimates:
        return {}
    column = quote_ident(count_column)
    units = warehouse.query(
        f"""SELECT arm, COUNT(*) AS units, SUM({column}) AS sn, SUM({column} * {column}) AS snn
            FROM {quote_ident(units_table)} WHERE {column} > 0 GROUP BY arm"""
    )
    above = q >= 0.5
    arms = list(estimates)
    bound: dict[str, Any] = {f"qa{i}": arm for i, arm in enumerate(arms)}
    bound |= {f"qx{i}": estimates[arm] for i, arm in enumerate(arms)}
    side = ">" if above else "<="
    cases = " ".join(f"WHEN :qa{i} THEN e.value {side} :qx{i}" for i in range(len(arms)))
    bound["qedge"] = min(estimates.values()) if above else max(estimates.values())
    rows = warehouse.query(
        f"""WITH per_unit AS (
              SELECT u.arm AS arm, u.unit_id AS unit_id, MAX(u.{column}) AS n_i, COUNT(*) AS j_i
              {narrowed("{v} " + side + " :qedge")} AND (CASE u.arm {cases} ELSE FALSE END)
              GROUP BY u.arm, u.unit_id)
            SELECT arm, SUM(j_i) AS sj, SUM(j_i * j_i) AS sjj, SUM(j_i * n_i) AS sjn
            FROM per_unit GROUP BY arm""",
        {**params, **bound},
    )
    side_sums = {str(r["arm"]): (int(r["sj"]), int(r["sjj"]), int(r["sjn"])) for r in rows}
    sums = {}
    for row in units:
        arm = str(row["arm"])
        if arm not in estimates:
            continue
        n, sn, snn = int(row["units"]), int(row["sn"]), int(row["snn"])
        sj, sjj, sjn = side_sums.get(arm, (0, 0, 0))
        si, sii, sin = (sn - sj, snn - 2 * sjn + sjj, snn - sjn) if above else (sj, sjj, sjn)
        sums[arm] = QuantileClusterSums(
            units=n,
            events=float(sn),
            below=float(si),
            events_sq=float(snn),
            below_sq=float(sii),
            cross=float(sin),
        )
    return sums


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
    import math

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
