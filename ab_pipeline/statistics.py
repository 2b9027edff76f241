"""Statistical tests on sufficient statistics (counts, sums, sums of squares, order statistics).

The warehouse reduces raw data to these numbers; nothing here sees a row per event. Each test is
one function returning a frozen `Comparison`; formulas are named in `docs/statistics.md` and
checked against scipy/statsmodels called directly in tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    """Treatment minus control, on the metric's own scale."""

    absolute: float
    ci: tuple[float, float]
    relative: float | None
    relative_ci: tuple[float, float] | None
    p_value: float
    se: float
    method: str

    def as_dict(self) -> dict[str, object]:
        return {
            "absolute": self.absolute,
            "ci": list(self.ci),
            "relative": self.relative,
            "relative_ci": list(self.relative_ci) if self.relative_ci else None,
            "p_value": self.p_value,
            "se": self.se,
            "method": self.method,
        }


@dataclass(frozen=True)
class SrmResult:
    statistic: float
    p_value: float
    dof: int
    counts: dict[str, int]
    expected: dict[str, float]


def _z(alpha: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def _normal_p(z: float) -> float:
    from scipy.stats import norm

    return float(2 * norm.sf(abs(z)))


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


def _relative_interval(
    mean_t: float, var_mean_t: float, mean_c: float, var_mean_c: float, alpha: float
) -> tuple[float | None, tuple[float, float] | None]:
    """Relative lift t/c - 1 with a delta-method interval on the ratio (independent arms)."""
    if mean_c == 0:
        return None, None
    ratio = mean_t / mean_c
    var_ratio = var_mean_t / mean_c**2 + (mean_t**2) * var_mean_c / mean_c**4
    half = _z(alpha) * math.sqrt(var_ratio)
    return ratio - 1, (ratio - 1 - half, ratio - 1 + half)


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
    half = _z(alpha) * se
    relative, relative_ci = _relative_interval(p_t, var_t, p_c, var_c, alpha)
    return Comparison(
        absolute=diff,
        ci=(diff - half, diff + half),
        relative=relative,
        relative_ci=relative_ci,
        p_value=p_value,
        se=se,
        method="two-proportion z-test (pooled SE), Wald interval of the difference (unpooled SE)",
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
    relative, relative_ci = _relative_interval(treatment.mean, var_t, control.mean, var_c, alpha)
    return Comparison(
        absolute=diff,
        ci=(diff - half, diff + half),
        relative=relative,
        relative_ci=relative_ci,
        p_value=p_value,
        se=se,
        method="Welch t-test, Welch-Satterthwaite interval of the difference in means",
    )


@dataclass(frozen=True)
class QuantileSummary:
    """A sample quantile with the order statistics that bracket it.

    `lower`/`upper` are the values at ranks q*n -/+ z*sqrt(n*q*(1-q)): the distribution-free
    binomial interval for a quantile, which SQL can compute with `percentile_disc`.
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


def compare_quantiles(
    control: QuantileSummary, treatment: QuantileSummary, alpha: float = 0.05
) -> Comparison:
    """Difference of quantiles; each arm's SE from its order-statistic interval.

    SE_arm = (upper - lower) / (2 z) (the binomial order-statistic interval read back as a
    normal one, as in Price & Bonett 2002); arms are independent, so the variances add. Events
    are treated as independent: per-unit clustering is not yet accounted for.
    """
    se_c = (control.upper - control.lower) / (2 * control.z)
    se_t = (treatment.upper - treatment.lower) / (2 * treatment.z)
    se = math.sqrt(se_c**2 + se_t**2)
    diff = treatment.estimate - control.estimate
    p_value = _normal_p(diff / se) if se > 0 else (1.0 if diff == 0 else 0.0)
    half = _z(alpha) * se
    relative, relative_ci = _relative_interval(
        treatment.estimate, se_t**2, control.estimate, se_c**2, alpha
    )
    return Comparison(
        absolute=diff,
        ci=(diff - half, diff + half),
        relative=relative,
        relative_ci=relative_ci,
        p_value=p_value,
        se=se,
        method="difference of sample quantiles, SE from order-statistic intervals (Price-Bonett)",
    )


@dataclass(frozen=True)
class SampleSize:
    per_arm: int
    formula: str


def sample_size_two_proportions(
    baseline: float,
    mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
    formula: str = "pooled",
) -> SampleSize:
    """Units per arm to detect an absolute lift `mde` over `baseline` (two-sided test).

    `pooled`:   n = (z_{1-a/2} + z_{power})^2 * 2 p (1 - p) / mde^2, p = baseline
    `unpooled`: n = (z_{1-a/2} + z_{power})^2 * (p1 q1 + p2 q2) / mde^2, p2 = baseline + mde
    Rounded up to a whole unit.
    """
    from scipy.stats import norm

    if not 0 < baseline < 1 or not 0 < baseline + mde < 1 or mde <= 0:
        raise ValueError("need 0 < baseline < baseline + mde < 1")
    z_sum = float(norm.ppf(1 - alpha / 2) + norm.ppf(power))
    if formula == "pooled":
        variance = 2 * baseline * (1 - baseline)
        name = "2p(1-p) formula: n = (z_{1-alpha/2} + z_power)^2 * 2p(1-p) / mde^2"
    elif formula == "unpooled":
        treated = baseline + mde
        variance = baseline * (1 - baseline) + treated * (1 - treated)
        name = "unpooled formula: n = (z_{1-alpha/2} + z_power)^2 * (p1q1 + p2q2) / mde^2"
    else:
        raise ValueError(f"unknown formula {formula!r}: use 'pooled' or 'unpooled'")
    return SampleSize(per_arm=math.ceil(z_sum**2 * variance / mde**2 - 1e-9), formula=name)
