"""Statistical tests on sufficient statistics (counts, sums, sums of squares, order statistics).

The warehouse reduces raw data to these numbers; nothing here sees a row per event. Each test is
one function returning a frozen `Comparison`; formulas are named in `docs/statistics.md` and
checked against scipy/statsmodels called directly in tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class Comparison:
    """Treatment minus control, on the metric's own scale.

    `relative_ci` is taken on the log scale (exp(log(t/c) +/- z SE_log) - 1) whenever t/c > 0,
    so its tails hold their level; `relative_se_log` is that SE (None: delta-method fallback).
    `p_value` and `se` are None when they cannot be computed honestly (`discrete`).
    """

    absolute: float
    ci: tuple[float, float]
    relative: float | None
    relative_ci: tuple[float, float] | None
    p_value: float | None
    se: float | None
    method: str
    relative_se_log: float | None = None
    alpha: float = 0.05
    discrete: bool = False
    note: str | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "absolute": self.absolute,
            "ci": list(self.ci),
            "relative": self.relative,
            "relative_ci": list(self.relative_ci) if self.relative_ci else None,
            "relative_se_log": self.relative_se_log,
            "relative_method": _relative_method(self),
            "p_value": self.p_value,
            "se": self.se,
            "method": self.method,
            "discrete": self.discrete,
        }
        if self.note:
            out["note"] = self.note
        out["one_sided"] = {
            "level": 1 - self.alpha,
            "absolute": [harm_bound(out, False, up, self.alpha) for up in (False, True)],
            "relative": [harm_bound(out, True, up, self.alpha) for up in (False, True)]
            if self.relative is not None
            else None,
        }
        return out


def _relative_method(comparison: Comparison) -> str | None:
    if comparison.relative_ci is None:
        return None
    if comparison.discrete:
        return "ratio of the arms' order-statistic interval ends (discrete values)"
    if comparison.relative_se_log is not None:
        return "log ratio of means, delta-method SE on the log scale"
    return "delta method on the ratio (log scale undefined: a non-positive ratio)"


def harm_bound(
    comparison: Mapping[str, Any], relative: bool, upper: bool, alpha: float = 0.05
) -> float | None:
    """One-sided (1 - alpha) bound of a comparison (`Comparison.as_dict()` / results.json).

    Absolute: estimate +/- z_{1-alpha} SE. Relative: exp(log(1 + lift) +/- z_{1-alpha} SE_log)
    - 1, the log-scale bound whose tail holds its level. Without an SE (a discrete quantile,
    or a delta-method fallback) the end of the two-sided interval (one-sided 1 - alpha/2:
    conservative) stands in. None when the relative lift is undefined.
    """
    z = _z(2 * alpha)
    sign = 1.0 if upper else -1.0
    if relative:
        lift, se_log, ci = (
            comparison.get("relative"),
            comparison.get("relative_se_log"),
            comparison.get("relative_ci"),
        )
        if lift is None:
            return None
        if se_log is not None and lift > -1:
            return math.exp(math.log1p(lift) + sign * z * se_log) - 1
    else:
        lift, se, ci = comparison["absolute"], comparison.get("se"), comparison.get("ci")
        if se is not None:
            return float(lift + sign * z * se)
    if not ci:
        return None
    return float(ci[1] if upper else ci[0])


@dataclass(frozen=True)
class SrmResult:
    statistic: float
    p_value: float
    dof: int
    counts: dict[str, int]
    expected: dict[str, float]


@lru_cache(maxsize=64)
def _z(alpha: float) -> float:
    # Cached: the calibration suite calls the comparisons tens of thousands of times.
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def _normal_p(z: float) -> float:
    # 2 * (1 - Phi(|z|)) == erfc(|z| / sqrt 2); math.erfc keeps full precision in the tail.
    return math.erfc(abs(z) / math.sqrt(2))


def srm_test(counts: Mapping[str, int], allocation: Mapping[str, float]) -> SrmResult:
    """Pearson chi-square goodness of fit of the arm counts to the planned allocation."""
    from scipy.stats import chisquare

    arms = list(allocation)
    observed = [int(counts.get(arm, 0)) for arm in arms]
    total = sum(observed)
    if total == 0:
        raise ValueError("no units enrolled: the sample-ratio test needs at least one unit")
    expected = [total * allocation[arm] for arm in arms]
    statistic, p_value = chisquare(observed, expected)
    return SrmResult(
        statistic=float(statistic),
        p_value=float(p_value),
        dof=len(arms) - 1,
        counts=dict(zip(arms, observed, strict=True)),
        expected={arm: float(allocation[arm]) for arm in arms},
    )


@dataclass(frozen=True)
class RelativeLift:
    estimate: float
    ci: tuple[float, float]
    se_log: float | None


def relative_lift(
    mean_t: float, var_mean_t: float, mean_c: float, var_mean_c: float, alpha: float
) -> RelativeLift | None:
    """Relative lift t/c - 1 of two independent estimates, with its (1 - alpha) interval.

    On the log scale when t/c > 0: log(t/c) +/- z SE, SE^2 = Var(t)/t^2 + Var(c)/c^2 (delta
    method for the log ratio), then exponentiated. The ratio's sampling distribution is skewed,
    so a symmetric interval on t/c misses unevenly (too often above); the log scale does not.
    Otherwise (ratio <= 0) the delta-method interval on t/c itself. None when c = 0.
    """
    if mean_c == 0:
        return None
    ratio = mean_t / mean_c
    z = _z(alpha)
    if ratio > 0:
        se_log = math.sqrt(var_mean_t / mean_t**2 + var_mean_c / mean_c**2)
        low, high = math.log(ratio) - z * se_log, math.log(ratio) + z * se_log
        return RelativeLift(ratio - 1, (math.exp(low) - 1, math.exp(high) - 1), se_log)
    var_ratio = var_mean_t / mean_c**2 + (mean_t**2) * var_mean_c / mean_c**4
    half = z * math.sqrt(var_ratio)
    return RelativeLift(ratio - 1, (ratio - 1 - half, ratio - 1 + half), None)


def _z_comparison(
    control: tuple[float, float], treatment: tuple[float, float], alpha: float, method: str
) -> Comparison:
    """Normal (z) test and interval of treatment - control from each arm's (estimate, variance
    of the estimate); independent arms, so the variances add."""
    se = math.sqrt(control[1] + treatment[1])
    diff = treatment[0] - control[0]
    p_value = _normal_p(diff / se) if se > 0 else (1.0 if diff == 0 else 0.0)
    return _comparison(control, treatment, p_value, _z(alpha) * se, alpha, method)


def _comparison(
    control: tuple[float, float],
    treatment: tuple[float, float],
    p_value: float,
    half: float,
    alpha: float,
    method: str,
) -> Comparison:
    """Assemble a Comparison from each arm's (estimate, variance of the estimate), the test's
    p-value and the interval's half-width; the relative lift gets its own log-scale interval."""
    (mean_c, var_c), (mean_t, var_t) = control, treatment
    diff = mean_t - mean_c
    lift = relative_lift(mean_t, var_t, mean_c, var_c, alpha)
    return Comparison(
        absolute=diff,
        ci=(diff - half, diff + half),
        relative=lift.estimate if lift else None,
        relative_ci=lift.ci if lift else None,
        p_value=p_value,
        se=math.sqrt(var_c + var_t),
        method=method,
        relative_se_log=lift.se_log if lift else None,
        alpha=alpha,
    )


def compare_proportions(
    successes_c: int, units_c: int, successes_t: int, units_t: int, alpha: float = 0.05
) -> Comparison:
    """Two-proportion z-test (pooled SE for the p-value), Wald interval (unpooled SE).

    These are what statsmodels' `proportions_ztest` and `confint_proportions_2indep(method=
    "wald")` compute; the pooled test is exact under H0 (equal rates), the unpooled SE is right
    for an interval around a non-zero difference.
    """
    if min(units_c, units_t) <= 0:
        raise ValueError("each arm needs at least one unit")
    p_c, p_t = successes_c / units_c, successes_t / units_t
    diff = p_t - p_c
    pooled = (successes_c + successes_t) / (units_c + units_t)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / units_c + 1 / units_t))
    var_c, var_t = p_c * (1 - p_c) / units_c, p_t * (1 - p_t) / units_t
    se = math.sqrt(var_c + var_t)
    p_value = _normal_p(diff / se_pooled) if se_pooled > 0 else 1.0
    return _comparison(
        (p_c, var_c),
        (p_t, var_t),
        p_value,
        _z(alpha) * se,
        alpha,
        "two-proportion z-test (pooled SE), Wald interval of the difference (unpooled SE)",
    )


@dataclass(frozen=True)
class MeanSummary:
    """Sufficient statistics of a per-unit value in one arm."""

    n: int
    total: float
    total_sq: float

    @property
    def mean(self) -> float:
        return self.total / self.n

    @property
    def variance(self) -> float:
        """Sample variance (n-1 denominator), clamped at 0 against rounding."""
        if self.n < 2:
            return 0.0
        return max((self.total_sq - self.total**2 / self.n) / (self.n - 1), 0.0)


def compare_means(control: MeanSummary, treatment: MeanSummary, alpha: float = 0.05) -> Comparison:
    """Welch's t-test and interval (unequal variances, Welch-Satterthwaite degrees of freedom)."""
    from scipy.stats import t as student_t

    if min(control.n, treatment.n) < 2:
        raise ValueError("each arm needs at least two units for a variance")
    var_c, var_t = control.variance / control.n, treatment.variance / treatment.n
    se = math.sqrt(var_c + var_t)
    diff = treatment.mean - control.mean
    if se == 0:
        p_value, half = (1.0 if diff == 0 else 0.0), 0.0
    else:
        dof = (var_c + var_t) ** 2 / (var_c**2 / (control.n - 1) + var_t**2 / (treatment.n - 1))
        p_value = float(2 * student_t.sf(abs(diff / se), dof))
        half = float(student_t.ppf(1 - alpha / 2, dof)) * se
    return _comparison(
        (control.mean, var_c),
        (treatment.mean, var_t),
        p_value,
        half,
        alpha,
        "Welch t-test, Welch-Satterthwaite interval of the difference in means",
    )


@dataclass(frozen=True)
class QuantileSummary:
    """A sample quantile with the order statistics that bracket it.

    `lower`/`upper` are the values at ranks q*n -/+ z*sqrt(n*q*(1-q)): the distribution-free
    binomial interval for a quantile (`percentile_disc` semantics; `ab_pipeline.stats.quantiles`).
    """

    n: int
    estimate: float
    lower: float
    upper: float
    z: float


def quantile_bracket(q: float, n: int, alpha: float = 0.05) -> tuple[float, float, float]:
    """The probabilities whose order statistics bracket the q-quantile, and z."""
    z = _z(alpha)
    half = z * math.sqrt(q * (1 - q) / n)
    return max(q - half, 0.0), min(q + half, 1.0), z


DISCRETE_NOTE = (
    "discrete values: the quantile sits on a value shared by many events (ties), so it moves "
    "in steps and has no normal-theory SE or p-value; the interval is the difference of the "
    "arms' order-statistic intervals (conservative)"
)


def compare_quantiles(
    control: QuantileSummary, treatment: QuantileSummary, alpha: float = 0.05
) -> Comparison:
    """Difference of quantiles; each arm's SE from its order-statistic interval.

    SE_arm = (upper - lower) / (2 z): the order-statistic interval read back as a normal one.
    With `clustered_quantile_bracket` choosing the ranks (Deng, Knoblich & Lu 2018) the interval
    accounts for events clustered within units; with `quantile_bracket` (one event per unit) it
    is the classical binomial interval. Arms are independent, so the variances add.

    Ties: when an arm's interval has zero width (one value fills every rank in it), that SE
    would be 0 and the p-value 0 or 1 by accident. Then the comparison is marked `discrete`,
    `se` and `p_value` are None, and the interval is [lower_t - upper_c, upper_t - lower_c].
    """
    if control.upper == control.lower or treatment.upper == treatment.lower:
        return _discrete_quantile_comparison(control, treatment, alpha)
    se_c = (control.upper - control.lower) / (2 * control.z)
    se_t = (treatment.upper - treatment.lower) / (2 * treatment.z)
    return _z_comparison(
        (control.estimate, se_c**2),
        (treatment.estimate, se_t**2),
        alpha,
        "difference of sample quantiles, SE from order-statistic intervals with "
        "unit-clustered ranks (Deng, Knoblich & Lu 2018 delta method)",
    )


def _discrete_quantile_comparison(
    control: QuantileSummary, treatment: QuantileSummary, alpha: float
) -> Comparison:
    # Each arm's range holds its interval and its (interpolated) estimate.
    low_c, high_c = min(control.lower, control.estimate), max(control.upper, control.estimate)
    low_t, high_t = (
        min(treatment.lower, treatment.estimate),
        max(treatment.upper, treatment.estimate),
    )
    relative, relative_ci = None, None
    if control.estimate != 0:
        relative = treatment.estimate / control.estimate - 1
        if min(low_c, low_t) > 0:
            relative_ci = (low_t / high_c - 1, high_t / low_c - 1)
    return Comparison(
        absolute=treatment.estimate - control.estimate,
        ci=(low_t - high_c, high_t - low_c),
        relative=relative,
        relative_ci=relative_ci,
        p_value=None,
        se=None,
        method="difference of sample quantiles on discrete (tied) values: interval from the "
        "arms' order-statistic intervals, no SE or p-value",
        alpha=alpha,
        discrete=True,
        note=DISCRETE_NOTE,
    )


@dataclass(frozen=True)
class SampleSize:
    per_arm: int
    formula: str
    alpha_per_comparison: float = 0.05


PROPORTION_FORMULAS = ("fleiss", "pooled", "unpooled")


def planning_alpha(alpha: float, comparisons: int = 1, correction: str = "holm") -> float:
    """The two-sided level each treatment-vs-control comparison is planned at.

    Holm and BH both reject a lone true effect among k comparisons only when its p-value is
    below alpha / k (the others being null), so alpha / k (Bonferroni) is the planning rule
    that reaches the stated power under either; `none` keeps alpha.
    """
    if comparisons < 1:
        raise ValueError(f"comparisons must be >= 1, got {comparisons}")
    return alpha if correction == "none" else alpha / comparisons


def check_proportion_plan(baseline: float, mde: float, alpha: float, power: float) -> None:
    """Raise ValueError naming the first impossible planning input."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha:g}")
    if not 0 < power < 1:
        raise ValueError(f"power must be between 0 and 1 (exclusive), got {power:g}")
    if not 0 < baseline < 1:
        raise ValueError(f"baseline must be a rate between 0 and 1 (exclusive), got {baseline:g}")
    if mde == 0:
        raise ValueError("mde must not be 0")
    if not 0 < baseline + mde < 1:
        raise ValueError(
            f"baseline + mde must stay between 0 and 1, got {baseline:g} + {mde:g} = "
            f"{baseline + mde:g}"
        )


def _proportion_variances(baseline: float, mde: float, formula: str) -> tuple[float, float, str]:
    """(variance factor under H0, under H1, name) for n = (z_a sqrt(v0) + z_b sqrt(v1))^2/mde^2."""
    p1, p2 = baseline, baseline + mde
    unpooled = p1 * (1 - p1) + p2 * (1 - p2)
    if formula == "fleiss":
        p_bar = (p1 + p2) / 2
        return (
            2 * p_bar * (1 - p_bar),
            unpooled,
            "Fleiss formula (the z-test with pooled SE): n = (z_{1-a/2} sqrt(2 pbar qbar) + "
            "z_power sqrt(p1q1 + p2q2))^2 / mde^2, pbar = (p1 + p2) / 2",
        )
    if formula == "pooled":
        variance = 2 * p1 * (1 - p1)
        name = "2p(1-p) formula: n = (z_{1-a/2} + z_power)^2 * 2p(1-p) / mde^2, p = baseline"
        return variance, variance, name
    if formula == "unpooled":
        name = "unpooled formula: n = (z_{1-a/2} + z_power)^2 * (p1q1 + p2q2) / mde^2"
        return unpooled, unpooled, name
    raise ValueError(f"unknown formula {formula!r}: use {', '.join(PROPORTION_FORMULAS)}")


def sample_size_two_proportions(
    baseline: float,
    mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
    formula: str = "fleiss",
    comparisons: int = 1,
    correction: str = "holm",
) -> SampleSize:
    """Units per arm to detect an absolute change `mde` from `baseline` (two-sided test).

    `fleiss` (default): the normal power function of the test the analysis runs (pooled SE
    under H0, unpooled variance p1q1 + p2q2 under H1), so the stated power is reached.
    `pooled`: the textbook 2p(1-p) formula (variance at the baseline under both hypotheses;
    under-powered when the rate moves, most for rare events). `unpooled`: p1q1 + p2q2 under
    both. Alpha is split across `comparisons` treatment arms (`planning_alpha`). Rounded up.
    """
    from scipy.stats import norm

    check_proportion_plan(baseline, mde, alpha, power)
    level = planning_alpha(alpha, comparisons, correction)
    v0, v1, name = _proportion_variances(baseline, mde, formula)
    z_a, z_b = float(norm.ppf(1 - level / 2)), float(norm.ppf(power))
    n = (z_a * math.sqrt(v0) + z_b * math.sqrt(v1)) ** 2 / mde**2
    return SampleSize(math.ceil(n - 1e-9), name, level)


def normal_power_two_proportions(
    baseline: float, mde: float, per_arm: float, alpha: float = 0.05
) -> float:
    """Power of the two-sided pooled z-test at `per_arm` units (normal approximation)."""
    from scipy.stats import norm

    v0, v1, _ = _proportion_variances(baseline, mde, "fleiss")
    z_a = float(norm.ppf(1 - alpha / 2))
    shift = abs(mde) * math.sqrt(per_arm)
    return float(
        norm.cdf((shift - z_a * math.sqrt(v0)) / math.sqrt(v1))
        + norm.cdf((-shift - z_a * math.sqrt(v0)) / math.sqrt(v1))
    )


def mde_two_proportions(
    baseline: float,
    per_arm: int,
    alpha: float = 0.05,
    power: float = 0.8,
    formula: str = "fleiss",
    comparisons: int = 1,
    correction: str = "holm",
    increase: bool = True,
) -> float:
    """The smallest absolute change detectable with `per_arm` units: the planning formula
    solved for |mde| (upwards, or downwards when not `increase`; inf when none is)."""
    from scipy.optimize import brentq

    if per_arm <= 0:
        return math.inf
    level = planning_alpha(alpha, comparisons, correction)
    sign = 1.0 if increase else -1.0

    def gap(size: float) -> float:
        return _required(baseline, sign * size, level, power, formula) - per_arm

    top = (1 - baseline if increase else baseline) * (1 - 1e-9)
    if gap(top) > 0:
        return math.inf
    return float(brentq(gap, 1e-12, top, xtol=1e-12))


def _required(baseline: float, mde: float, level: float, power: float, formula: str) -> float:
    from scipy.stats import norm

    v0, v1, _ = _proportion_variances(baseline, mde, formula)
    z_a, z_b = float(norm.ppf(1 - level / 2)), float(norm.ppf(power))
    return (z_a * math.sqrt(v0) + z_b * math.sqrt(v1)) ** 2 / mde**2


def sample_size_means(
    sd: float,
    mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
    comparisons: int = 1,
    correction: str = "holm",
) -> SampleSize:
    """Units per arm for a mean or ratio metric: n = (z_{1-a/2} + z_power)^2 * 2 sd^2 / mde^2.

    `sd` is the per-unit standard deviation (for a ratio sum X / sum Y: of the linearised
    (X - R Y) / mean Y, Deng et al. 2018), assumed equal in both arms; Welch's test is a z-test
    at these sizes.
    """
    from scipy.stats import norm

    if not sd > 0 or not math.isfinite(sd):
        raise ValueError(f"sd must be a positive number, got {sd:g}")
    if mde == 0 or not math.isfinite(mde):
        raise ValueError(f"mde must be a non-zero number, got {mde:g}")
    _check_levels(alpha, power)
    level = planning_alpha(alpha, comparisons, correction)
    z_sum = float(norm.ppf(1 - level / 2) + norm.ppf(power))
    n = z_sum**2 * 2 * sd**2 / mde**2
    return SampleSize(
        math.ceil(n - 1e-9),
        "two-sample z formula: n = (z_{1-a/2} + z_power)^2 * 2 sd^2 / mde^2",
        level,
    )


def mde_means(
    sd: float,
    per_arm: int,
    alpha: float = 0.05,
    power: float = 0.8,
    comparisons: int = 1,
    correction: str = "holm",
) -> float:
    """`sample_size_means` solved for mde."""
    from scipy.stats import norm

    if per_arm <= 0:
        return math.inf
    level = planning_alpha(alpha, comparisons, correction)
    return float((norm.ppf(1 - level / 2) + norm.ppf(power)) * sd * math.sqrt(2 / per_arm))


def _check_levels(alpha: float, power: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha:g}")
    if not 0 < power < 1:
        raise ValueError(f"power must be between 0 and 1 (exclusive), got {power:g}")


def sample_size_non_inferiority(
    baseline: float,
    budget: float,
    relative: bool,
    harmful_up: bool,
    alpha: float = 0.05,
    power: float = 0.8,
    sd: float | None = None,
) -> SampleSize:
    """Units per arm for a guardrail's one-sided (1 - alpha) bound to fall within `budget`
    with probability `power` when the true effect is 0.

    Variance per unit at no effect: 2 p(1 - p) for a proportion (`sd` None), 2 sd^2 for a
    mean. Absolute budget: n = (z_{1-a} + z_power)^2 * var / budget^2. Relative budget, on the
    log scale the bound uses: n = (z_{1-a} + z_power)^2 * var / (baseline^2 log(1 +/- budget)^2).
    """
    from scipy.stats import norm

    _check_levels(alpha, power)
    if not budget > 0:
        raise ValueError(f"budget must be > 0, got {budget:g}")
    if sd is None:
        if not 0 < baseline < 1:
            raise ValueError(f"baseline must be a rate between 0 and 1, got {baseline:g}")
        variance, kind = 2 * baseline * (1 - baseline), "2p(1-p)"
    else:
        if not sd > 0:
            raise ValueError(f"sd must be > 0, got {sd:g}")
        variance, kind = 2 * sd**2, "2 sd^2"
    z_sum = float(norm.ppf(1 - alpha) + norm.ppf(power))
    if relative:
        if baseline == 0 or (not harmful_up and budget >= 1):
            raise ValueError("a relative budget needs a non-zero baseline (and a decrease < 100%)")
        margin = abs(baseline * math.log1p(budget if harmful_up else -budget))
        name = (
            f"non-inferiority, log scale: n = (z_{{1-a}} + z_power)^2 * {kind} / (p log(1 +/- b))^2"
        )
    else:
        margin = budget
        name = f"non-inferiority: n = (z_{{1-a}} + z_power)^2 * {kind} / budget^2"
    return SampleSize(math.ceil(z_sum**2 * variance / margin**2 - 1e-9), name, alpha)


# --- ratio metrics -------------------------------------------------------------------------


@dataclass(frozen=True)
class RatioSummary:
    """Sufficient statistics of a per-unit numerator X and denominator Y in one arm."""

    n: int
    num: float
    den: float
    num_sq: float
    den_sq: float
    cross: float

    @property
    def ratio(self) -> float:
        return self.num / self.den

    @property
    def mean(self) -> float:
        return self.ratio

    @property
    def variance_of_ratio(self) -> float:
        """Var(sum X / sum Y) by the delta method (Deng, Knoblich & Lu 2018, eq. 4).

        Var(R) ~ (s_XX - 2 R s_XY + R^2 s_YY) / (n mu_Y^2), with per-unit sample (co)variances:
        units, not events, are the independent draws.
        """
        return ratio_variance(self.n, self.num, self.den, self.num_sq, self.den_sq, self.cross)


def ratio_variance(n: int, sx: float, sy: float, sxx: float, syy: float, sxy: float) -> float:
    """Delta-method variance of sum(X)/sum(Y) over n independent units, from sums."""
    if n < 2 or sy == 0:
        return math.nan
    r = sx / sy
    var_x = (sxx - sx * sx / n) / (n - 1)
    var_y = (syy - sy * sy / n) / (n - 1)
    cov = (sxy - sx * sy / n) / (n - 1)
    mu_y = sy / n
    return max(var_x - 2 * r * cov + r * r * var_y, 0.0) / (n * mu_y * mu_y)


def compare_ratios(
    control: RatioSummary, treatment: RatioSummary, alpha: float = 0.05
) -> Comparison:
    """Difference of ratio metrics (sum/sum per arm), delta-method SE, normal interval."""
    if min(control.n, treatment.n) < 2 or control.den == 0 or treatment.den == 0:
        raise ValueError("each arm needs at least two units and a non-zero denominator")
    return _z_comparison(
        (control.ratio, control.variance_of_ratio),
        (treatment.ratio, treatment.variance_of_ratio),
        alpha,
        "difference of ratios sum(X)/sum(Y), delta-method SE over units, z interval",
    )


# --- quantiles with events clustered in units -----------------------------------------------


@dataclass(frozen=True)
class QuantileClusterSums:
    """Per-unit pieces SQL computes around an arm's sample quantile x_q.

    For unit i: N_i = its events, I_i = its events with value <= x_q. Sums over units.
    """

    units: int
    events: float
    below: float
    events_sq: float
    below_sq: float
    cross: float


def clustered_quantile_bracket(
    q: float, sums: QuantileClusterSums, alpha: float = 0.05
) -> tuple[float, float, float]:
    """Probabilities whose order statistics bracket the q-quantile when events cluster in units.

    Deng, Knoblich & Lu (2018, sec. 4): the share of events at or below x_q is a ratio metric
    sum(I)/sum(N); its delta-method SE sigma counts units, not events, as independent. The
    interval for the quantile is then [X_(n(q - z sigma)), X_(n(q + z sigma))] (order
    statistics, no density estimate), read in SQL by `ab_pipeline.stats.quantiles`.
    """
    z = _z(alpha)
    var = ratio_variance(
        sums.units, sums.below, sums.events, sums.below_sq, sums.events_sq, sums.cross
    )
    if not math.isfinite(var):  # fewer than two units: fall back to independent events
        var = q * (1 - q) / max(sums.events, 1.0)
    sigma = math.sqrt(var)
    return max(q - z * sigma, 0.0), min(q + z * sigma, 1.0), z


# --- CUPED ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CupedSummary:
    """Sufficient statistics of outcome Y and pre-exposure covariate X in one arm."""

    y: MeanSummary
    x_total: float
    x_sq: float
    xy: float


@dataclass(frozen=True)
class CupedFit:
    theta: float
    adjusted: dict[str, MeanSummary]


def cuped_adjust(arms: Mapping[str, CupedSummary]) -> CupedFit:
    """CUPED (Deng, Xu, Kohavi & Walker 2013): Y' = Y - theta (X - mean X), pooled theta.

    theta = sum_arms S_XY / sum_arms S_XX with within-arm centred sums, so a treatment effect
    on Y cannot leak into theta. Each arm's adjusted summary has mean Ybar - theta (Xbar_arm -
    Xbar) and variance s_YY - 2 theta s_XY + theta^2 s_XX, returned as MeanSummary so the usual
    Welch comparison applies.
    """
    sxy = sum(a.xy - a.x_total * a.y.total / a.y.n for a in arms.values() if a.y.n)
    sxx = sum(a.x_sq - a.x_total**2 / a.y.n for a in arms.values() if a.y.n)
    theta = sxy / sxx if sxx > 0 else 0.0
    n_all = sum(a.y.n for a in arms.values())
    x_bar = sum(a.x_total for a in arms.values()) / n_all if n_all else 0.0
    adjusted = {}
    for arm, a in arms.items():
        n = a.y.n
        if n < 2:
            adjusted[arm] = a.y
            continue
        cov = (a.xy - a.x_total * a.y.total / n) / (n - 1)
        var_x = (a.x_sq - a.x_total**2 / n) / (n - 1)
        var = max(a.y.variance - 2 * theta * cov + theta**2 * var_x, 0.0)
        total = a.y.total - theta * (a.x_total - n * x_bar)
        adjusted[arm] = MeanSummary(n=n, total=total, total_sq=var * (n - 1) + total**2 / n)
    return CupedFit(theta=theta, adjusted=adjusted)


def with_method(comparison: Comparison, method: str) -> Comparison:
    return replace(comparison, method=method)


# --- multiple arms --------------------------------------------------------------------------


def adjust_p_values(p_values: Sequence[float | None], method: str = "holm") -> list[float]:
    """Holm (1979) step-down FWER or Benjamini-Hochberg (1995) step-up FDR adjusted p-values.

    The same numbers as statsmodels' multipletests(method="holm" / "fdr_bh"). "none" returns the
    raw p-values. A p-value that could not be computed (None: discrete values) counts as 1.
    """
    values = [1.0 if p is None else p for p in p_values]
    m = len(values)
    order = sorted(range(m), key=lambda i: values[i])
    adjusted = [0.0] * m
    if method == "none":
        return values
    if method == "holm":
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * values[i]))
            adjusted[i] = running
        return adjusted
    if method == "bh":
        running = 1.0
        for rank in range(m - 1, -1, -1):
            i = order[rank]
            running = min(running, m * values[i] / (rank + 1))
            adjusted[i] = min(running, 1.0)
        return adjusted
    raise ValueError(f"unknown correction {method!r}: use holm, bh or none")


# --- group-sequential boundaries ------------------------------------------------------------


def obrien_fleming_spending(t: float, alpha: float) -> float:
    """Two-sided alpha spent by information fraction t: Lan & DeMets (1983) O'Brien-Fleming-type
    spending of alpha/2 on each side, 2 * (2 - 2 Phi(z_{1-alpha/4} / sqrt t)).

    The convention of gsDesign (`sfLDOF`) and ldbounds for a symmetric two-sided test: the
    per-side function alpha_s(t) = 2 - 2 Phi(z_{1-alpha_s/2} / sqrt t) with alpha_s = alpha/2.
    (Putting the two-sided alpha into the function instead spends more early: K = 5 boundaries
    4.38, 3.10, ... instead of the published 4.88, 3.36, 2.68, 2.29, 2.03.)
    """
    if t <= 0:
        return 0.0
    per_side = 2.0 * _normal_tail(_z(alpha / 2) / math.sqrt(min(t, 1.0)))
    return min(2.0 * per_side, alpha)


def _normal_tail(x: float) -> float:
    return 0.5 * math.erfc(x / math.sqrt(2))


@lru_cache(maxsize=256)
def group_sequential_boundaries(fractions: tuple[float, ...], alpha: float = 0.05) -> list[float]:
    """Two-sided |Z| boundaries at increasing information fractions for the spending function.

    Exact recursive numerical integration of the Brownian-motion score S_k = Z_k sqrt(t_k)
    (Armitage, McPherson & Rowe 1969; Jennison & Turnbull 2000, ch. 19): the sub-density of
    S on the continuation region is carried on a grid from look to look, and each boundary
    solves P(first crossing at look k) = alpha(t_k) - alpha(t_{k-1}).
    """
    from scipy.optimize import brentq

    bounds: list[float] = []
    grid: Any = None
    density: Any = None
    spent, previous_t = 0.0, 0.0
    for t in fractions:
        target = obrien_fleming_spending(t, alpha) - spent
        step = math.sqrt(t - previous_t)
        c = math.inf
        if target > 1e-15:  # OBF spends (almost) nothing at very early looks: no boundary
            c = float(
                brentq(
                    lambda x, t=t, s=step, g=grid, d=density, a=target: (
                        _exit_prob(x, t, s, g, d) - a
                    ),
                    1e-6,
                    40.0,
                    xtol=1e-10,
                )
            )
            spent += _exit_prob(c, t, step, grid, density)
        bounds.append(c)
        grid, density = _carry(grid, density, c, t, step)
        previous_t = t
    return bounds


def _exit_prob(c: float, t: float, step: float, grid: Any, density: Any) -> float:
    """P(continued so far and |Z_k| >= c at this look), from the carried sub-density."""
    import numpy as np
    from scipy.stats import norm

    if grid is None:
        return float(2 * norm.sf(c))
    edge = c * math.sqrt(t)
    tails = norm.sf((edge - grid) / step) + norm.cdf((-edge - grid) / step)
    return float(np.sum(density * tails))


def _carry(grid: Any, density: Any, c: float, t: float, step: float) -> tuple[Any, Any]:
    """Sub-density (times grid weights) of S_k on |S_k| < c sqrt(t_k), on a Simpson grid."""
    import numpy as np
    from scipy.stats import norm

    edge = min(c, 12.0) * math.sqrt(t)
    points = 801
    new_grid = np.linspace(-edge, edge, points)
    h = new_grid[1] - new_grid[0]
    simpson = np.ones(points)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    weights = simpson * h / 3
    if grid is None:
        values = norm.pdf(new_grid / math.sqrt(t)) / math.sqrt(t)
    else:
        kernel = norm.pdf((new_grid[:, None] - grid[None, :]) / step) / step
        values = kernel @ density
    return new_grid, values * weights


@dataclass(frozen=True)
class SequentialLook:
    method: str
    look: int
    planned_looks: int
    information_fraction: float
    alpha_spent: float
    boundary: float
    z: float
    crossed: bool


def sequential_look(z: float, look: int, planned_looks: int, alpha: float = 0.05) -> SequentialLook:
    """Look `look` of `planned_looks` equally spaced ones: does |z| cross the OBF-type boundary?"""
    look = max(1, min(look, planned_looks))
    fractions = tuple(k / planned_looks for k in range(1, planned_looks + 1))
    boundary = group_sequential_boundaries(fractions, alpha)[look - 1]
    t = fractions[look - 1]
    return SequentialLook(
        method="group-sequential, Lan-DeMets O'Brien-Fleming-type spending of alpha/2 per side",
        look=look,
        planned_looks=planned_looks,
        information_fraction=t,
        alpha_spent=obrien_fleming_spending(t, alpha),
        boundary=boundary,
        z=z,
        crossed=abs(z) >= boundary,
    )
