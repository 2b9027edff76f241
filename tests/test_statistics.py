"""Statistics against independent scipy/statsmodels calls and the reference refund numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from ab_pipeline.statistics import (
    MeanSummary,
    QuantileSummary,
    compare_means,
    compare_proportions,
    compare_quantiles,
    quantile_bracket,
    sample_size_two_proportions,
    srm_test,
)


def test_srm_reference_pass_at_textbook_threshold() -> None:
    result = srm_test({"control": 3328, "treatment": 3460}, {"control": 0.5, "treatment": 0.5})
    assert result.p_value == pytest.approx(0.109, abs=5e-4)
    assert result.statistic == pytest.approx(2.57, abs=5e-3)
    assert result.p_value > 0.001


def test_srm_reference_alerts() -> None:
    half = {"control": 0.5, "treatment": 0.5}
    assert srm_test({"control": 1650, "treatment": 2350}, half).statistic == pytest.approx(122.5)
    assert srm_test({"control": 3050, "treatment": 3738}, half).p_value < 0.001


def test_srm_handles_three_unequal_arms_like_scipy() -> None:
    allocation = {"a": 0.2, "b": 0.3, "c": 0.5}
    counts = {"a": 410, "b": 560, "c": 1030}
    result = srm_test(counts, allocation)
    expected = stats.chisquare([410, 560, 1030], [400, 600, 1000])
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.dof == 2


def test_srm_counts_a_missing_arm_as_zero() -> None:
    result = srm_test({"control": 500}, {"control": 0.5, "treatment": 0.5})
    assert result.counts == {"control": 500, "treatment": 0}
    assert result.p_value < 1e-10


def test_proportions_reference_case() -> None:
    c = compare_proportions(760, 2000, 840, 2000)
    assert c.absolute == pytest.approx(0.04)
    assert c.se == pytest.approx(0.0155, abs=1e-4)
    assert c.ci[0] == pytest.approx(0.0097, abs=1e-4)
    assert c.ci[1] == pytest.approx(0.0703, abs=1e-4)
    assert c.relative == pytest.approx(0.105, abs=5e-4)
    assert c.p_value == pytest.approx(0.0098, abs=1e-4)


@pytest.mark.parametrize("counts", [(760, 2000, 840, 2000), (12, 150, 30, 170), (5, 9000, 4, 8000)])
def test_proportions_match_statsmodels(counts: tuple[int, int, int, int]) -> None:
    xc, nc, xt, nt = counts
    ours = compare_proportions(xc, nc, xt, nt)
    _, p_value = proportions_ztest([xt, xc], [nt, nc])
    low, high = confint_proportions_2indep(xt, nt, xc, nc, method="wald", compare="diff")
    assert ours.p_value == pytest.approx(p_value)
    assert ours.ci == pytest.approx((low, high))


def test_means_match_scipy_welch() -> None:
    rng = np.random.default_rng(1)
    control, treated = rng.exponential(3.0, 500), rng.exponential(3.4, 650)

    def summary(x: np.ndarray) -> MeanSummary:
        return MeanSummary(n=len(x), total=float(x.sum()), total_sq=float((x * x).sum()))

    ours = compare_means(summary(control), summary(treated))
    reference = stats.ttest_ind(treated, control, equal_var=False)
    ci = reference.confidence_interval(0.95)
    assert ours.p_value == pytest.approx(reference.pvalue)
    assert ours.ci == pytest.approx((ci.low, ci.high))
    assert ours.absolute == pytest.approx(treated.mean() - control.mean())


def test_mean_summary_variance_matches_numpy() -> None:
    x = np.array([1.0, 2.0, 4.0, 8.0])
    s = MeanSummary(4, float(x.sum()), float((x * x).sum()))
    assert s.variance == pytest.approx(x.var(ddof=1))


def test_quantile_difference_covers_the_truth_on_large_normal_samples() -> None:
    rng = np.random.default_rng(2)

    def summary(x: np.ndarray) -> QuantileSummary:
        low, high, z = quantile_bracket(0.95, len(x))
        ordered = np.sort(x)
        pick = lambda p: float(ordered[max(int(np.ceil(p * len(x))) - 1, 0)])  # noqa: E731
        return QuantileSummary(len(x), float(np.quantile(x, 0.95)), pick(low), pick(high), z)

    control = rng.normal(1000, 100, 20000)
    treated = rng.normal(1080, 100, 20000)
    result = compare_quantiles(summary(control), summary(treated))
    assert result.ci[0] < 80 < result.ci[1]
    # Asymptotic SE of a sample quantile: sqrt(q(1-q)/n) / f(x_q); two independent arms.
    density = stats.norm.pdf(stats.norm.ppf(0.95)) / 100
    asymptotic = np.sqrt(2) * np.sqrt(0.95 * 0.05 / 20000) / density
    assert result.se == pytest.approx(asymptotic, rel=0.15)


def test_sample_size_reproduces_design_numbers() -> None:
    assert sample_size_two_proportions(0.38, 0.02).per_arm == 9246
    assert sample_size_two_proportions(0.25, 0.03, formula="unpooled").per_arm == 3394


def test_sample_size_rejects_impossible_plans() -> None:
    with pytest.raises(ValueError):
        sample_size_two_proportions(0.99, 0.05)


# --- ratio, clustered quantile, CUPED, corrections, sequential, planning ---------------------


def test_ratio_delta_method_matches_a_direct_per_unit_computation() -> None:
    from ab_pipeline.statistics import RatioSummary, compare_ratios

    rng = np.random.default_rng(3)

    def arm(scale: float, n: int) -> tuple[RatioSummary, np.ndarray, np.ndarray]:
        y = 1.0 + rng.poisson(2.0, n)
        x = rng.binomial(y.astype(int), rng.beta(2, 8, n) * scale).astype(float)
        s = RatioSummary(n, x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())
        return s, x, y

    (c, xc, yc), (t, xt, yt) = arm(1.0, 800), arm(1.1, 900)
    result = compare_ratios(c, t)

    def var_ratio(x: np.ndarray, y: np.ndarray) -> float:
        # Delta method via the linearised per-unit influence (x - R y) / mean(y).
        r = x.sum() / y.sum()
        return float(np.var((x - r * y) / y.mean(), ddof=1) / len(x))

    assert result.absolute == pytest.approx(xt.sum() / yt.sum() - xc.sum() / yc.sum())
    assert result.se == pytest.approx(np.sqrt(var_ratio(xc, yc) + var_ratio(xt, yt)))
    z = result.absolute / result.se
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)))


def test_clustered_quantile_bracket_reduces_to_binomial_with_one_event_per_unit() -> None:
    from ab_pipeline.statistics import QuantileClusterSums, clustered_quantile_bracket

    n, below = 10000, 9500.0  # one event per unit: I_i in {0, 1}
    sums = QuantileClusterSums(n, float(n), below, float(n), below, below)
    low, high, _ = clustered_quantile_bracket(0.95, sums)
    ref_low, ref_high, _ = quantile_bracket(0.95, n)
    # Sample variance (n - 1) vs the binomial's n: equal to within 1e-4 relative.
    assert low == pytest.approx(ref_low, rel=1e-4) and high == pytest.approx(ref_high, rel=1e-4)


def test_cuped_matches_ancova_regression_in_statsmodels() -> None:
    import statsmodels.api as sm

    from ab_pipeline.statistics import CupedSummary, cuped_adjust

    rng = np.random.default_rng(4)
    n = 3000
    x = rng.poisson(3.0, 2 * n).astype(float)
    treated = np.r_[np.zeros(n), np.ones(n)]
    y = 1.0 + 0.7 * x + 0.4 * treated + rng.normal(0, 1.5, 2 * n)
    arms = {
        arm: CupedSummary(
            MeanSummary(n, float(y[m].sum()), float((y[m] ** 2).sum())),
            float(x[m].sum()),
            float((x[m] ** 2).sum()),
            float((x[m] * y[m]).sum()),
        )
        for arm, m in (("control", treated == 0), ("treatment", treated == 1))
    }
    fit = cuped_adjust(arms)
    result = compare_means(fit.adjusted["control"], fit.adjusted["treatment"])
    # OLS of y on [1, treated, x - mean]: the treated coefficient is the CUPED estimate with
    # the within-arm pooled slope; its SE agrees to O(1/n).
    design = sm.add_constant(np.c_[treated, x - x.mean()])
    ols = sm.OLS(y, design).fit()
    assert fit.theta == pytest.approx(ols.params[2], rel=1e-9)
    assert result.absolute == pytest.approx(ols.params[1], rel=1e-9)
    assert result.se == pytest.approx(ols.bse[1], rel=0.01)
    plain = compare_means(arms["control"].y, arms["treatment"].y)
    assert result.se < plain.se


@pytest.mark.parametrize("method,reference", [("holm", "holm"), ("bh", "fdr_bh")])
def test_p_value_corrections_match_statsmodels(method: str, reference: str) -> None:
    from statsmodels.stats.multitest import multipletests

    from ab_pipeline.statistics import adjust_p_values

    p = [0.012, 0.04, 0.031, 0.2, 0.0004]
    assert adjust_p_values(p, method) == pytest.approx(list(multipletests(p, method=reference)[1]))


def test_obrien_fleming_boundaries_spend_exactly_alpha() -> None:
    from ab_pipeline.statistics import group_sequential_boundaries, obrien_fleming_spending

    fractions = tuple(k / 5 for k in range(1, 6))
    bounds = group_sequential_boundaries(fractions)
    # Look 1 spends 2 - 2 Phi(1.96 / sqrt 0.2): the boundary is 1.96 / sqrt(0.2) in closed form.
    assert bounds[0] == pytest.approx(1.959964 / np.sqrt(0.2), rel=1e-5)
    assert bounds == sorted(bounds, reverse=True) and 1.96 < bounds[-1] < 2.1
    rng = np.random.default_rng(5)
    z = np.cumsum(rng.normal(size=(200000, 5)), axis=1) / np.sqrt(np.arange(1, 6))
    crossed = (np.abs(z) >= bounds).any(axis=1).mean()
    assert crossed == pytest.approx(0.05, abs=0.003)
    assert obrien_fleming_spending(1.0, 0.05) == pytest.approx(0.05)
    assert group_sequential_boundaries((1.0,)) == pytest.approx([1.959964], rel=1e-6)


def test_mde_now_inverts_the_planning_formula() -> None:
    from ab_pipeline.statistics import mde_two_proportions

    assert mde_two_proportions(0.38, 9246) == pytest.approx(0.02, rel=1e-3)
