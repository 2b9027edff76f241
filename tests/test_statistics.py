"""Statistics against independent scipy/statsmodels calls and the DESIGN.md reference numbers."""

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
