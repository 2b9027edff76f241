"""Novelty view: the primary effect by exposure-day cohort, and a test for a fading lift.

The warehouse groups the units table by (day of first exposure, arm) into count, mean and
variance of the primary metric (for a ratio primary: the cohort's ratio and its delta-method
variance); Python turns each cohort into a treatment-minus-control
difference with its standard error. A cohort's age is `days_since_exposure` = run date minus its
exposure day.

Trend test (named in results.json): inverse-variance weighted least squares of the cohort
differences on the cohort's exposure day (a fixed-effect meta-regression), slope = change in the
effect per later exposure day, z-test on the slope. A novelty effect makes early cohorts (who met
the change when it was new, in the first days of the run) show a larger lift than later ones, so
the flag is a significant *negative* slope: "the lift is fading".

Cohorts with fewer than MIN_UNITS analysed units in an arm are left out (their variance is too
noisy to weight by). A metric whose window has not elapsed is NULL and not counted.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any

from ab_pipeline.core.config import ExperimentConfig
from ab_pipeline.metrics import kind_of
from ab_pipeline.warehouse import Warehouse

MIN_UNITS = 30
METHOD = (
    "inverse-variance weighted least squares of daily cohort differences on exposure day "
    "(fixed-effect meta-regression), z-test on the slope"
)


def cohort_stats(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str
) -> list[dict[str, Any]]:
    """Per (exposure day, arm): units, the primary's value and a per-unit variance such that
    var / n is the variance of that value (sample variance for a mean or proportion; for a
    ratio, its delta-method variance: the primary's kind computes it)."""
    primary = config.metrics[config.primary]
    return kind_of(primary).cohort_stats(warehouse, config.primary, units_table)


def cohort_effects(
    stats: list[dict[str, Any]], control: str, arm: str, run_date: date, z: float = 1.96
) -> list[dict[str, Any]]:
    """Treatment-minus-control difference per exposure day, with a normal interval."""
    by_day: dict[date, dict[str, dict[str, Any]]] = {}
    for row in stats:
        by_day.setdefault(row["day"], {})[row["arm"]] = row
    cohorts = []
    for day in sorted(by_day):
        c, t = by_day[day].get(control), by_day[day].get(arm)
        if not c or not t or min(c["n"], t["n"]) < MIN_UNITS:
            continue
        se = math.sqrt(c["var"] / c["n"] + t["var"] / t["n"])
        if se <= 0:
            continue
        diff = t["mean"] - c["mean"]
        cohorts.append(
            {
                "exposure_day": day.isoformat(),
                "days_since_exposure": (run_date - day).days,
                "absolute": diff,
                "se": se,
                "ci": [diff - z * se, diff + z * se],
                "units": {control: c["n"], arm: t["n"]},
            }
        )
    return cohorts


def weighted_trend(cohorts: list[dict[str, Any]], start: date) -> dict[str, Any] | None:
    """Slope of the effect per exposure day (WLS, weights 1/se^2) and its two-sided p-value."""
    if len(cohorts) < 3:
        return None
    from scipy.stats import norm

    xs = [(date.fromisoformat(c["exposure_day"]) - start).days for c in cohorts]
    ws = [1 / c["se"] ** 2 for c in cohorts]
    ys = [c["absolute"] for c in cohorts]
    total = sum(ws)
    x_bar = sum(w * x for w, x in zip(ws, xs, strict=True)) / total
    y_bar = sum(w * y for w, y in zip(ws, ys, strict=True)) / total
    sxx = sum(w * (x - x_bar) ** 2 for w, x in zip(ws, xs, strict=True))
    if sxx <= 0:
        return None
    sxy = sum(w * (x - x_bar) * (y - y_bar) for w, x, y in zip(ws, xs, ys, strict=True))
    slope = sxy / sxx
    # With known cohort variances the slope's variance is 1 / sum w (x - x_bar)^2.
    se = math.sqrt(1 / sxx)
    p_value = float(2 * norm.sf(abs(slope / se)))
    return {
        "slope": slope,
        "se": se,
        "p_value": p_value,
        "intercept": y_bar - slope * x_bar,
        "cohorts": len(cohorts),
        "method": METHOD,
    }


def novelty_view(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, run_date: date
) -> dict[str, Any] | None:
    """results.json `novelty`: cohorts and trend per treatment arm; None without any cohort."""
    stats = cohort_stats(warehouse, config, units_table)
    alpha = config.decision.alpha
    arms: dict[str, Any] = {}
    for arm in config.treatments:
        cohorts = cohort_effects(stats, config.control, arm, run_date)
        trend = weighted_trend(cohorts, config.start)
        flagged = bool(trend and trend["slope"] < 0 and trend["p_value"] < alpha)
        arms[arm] = {"by_cohort_day": cohorts, "trend": trend, "flagged": flagged}
    if not any(view["by_cohort_day"] for view in arms.values()):
        return None
    first = arms[config.treatments[0]]
    return {
        "metric": config.primary,
        "arm": config.treatments[0],
        "alpha": alpha,
        **first,
        "flagged": any(view["flagged"] for view in arms.values()),
        "by_arm": arms,
    }


def novelty_check(novelty: dict[str, Any] | None) -> dict[str, Any] | None:
    """A non-blocking entry for `checks`: listed in the brief, never changes the decision."""
    if not novelty or novelty.get("trend") is None:
        return None
    trend = novelty["trend"]
    fading = [arm for arm, view in novelty["by_arm"].items() if view["flagged"]]
    detail = (
        f"the {novelty['metric']} lift falls by {abs(trend['slope']):.3g} per later exposure day "
        f"(p = {trend['p_value']:.3g}, {trend['cohorts']} daily cohorts): novelty risk, the "
        "long-run effect may be smaller than the average"
        if fading
        else f"no significant downward trend of the {novelty['metric']} lift across "
        f"{trend['cohorts']} exposure-day cohorts (slope {trend['slope']:+.3g} per day, "
        f"p = {trend['p_value']:.3g})"
    )
    return {
        "name": "novelty_risk",
        "passed": not fading,
        "detail": detail,
        "metric": novelty["metric"],
        "arm": fading[0] if fading else novelty["arm"],
        "observed": trend["slope"],
        "bound": None,
        "budget": None,
        "budget_kind": None,
        "blocking": False,
    }
