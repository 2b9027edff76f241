"""Statistics against independent scipy/statsmodels calls and the reference refund numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from ab_pipeline.stats.statistics import (
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


def test_sample_size_reproduces_the_textbook_numbers_under_their_named_formulas() -> None:
    pooled = sample_size_two_proportions(0.38, 0.02, formula="pooled")
    assert pooled.per_arm == 9246 and "2p(1-p)" in pooled.formula
    unpooled = sample_size_two_proportions(0.25, 0.03, formula="unpooled")
    assert unpooled.per_arm == 3394 and "p1q1 + p2q2" in unpooled.formula


@pytest.mark.parametrize("bad", [(0.99, 0.05), (0.5, 0.0), (1.2, 0.02), (0.3, -0.4)])
def test_sample_size_rejects_impossible_plans(bad: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        sample_size_two_proportions(*bad)


def exact_power(p1: float, p2: float, n: int, alpha: float) -> float:
    """P(the two-sided pooled z-test rejects) summed over both arms' binomial counts."""
    support = []
    for p in (p1, p2):
        sd = np.sqrt(n * p * (1 - p))
        k = np.arange(max(int(n * p - 10 * sd) - 5, 0), min(int(n * p + 10 * sd) + 5, n) + 1)
        support.append((k, stats.binom.pmf(k, n, p)))
    (kc, wc), (kt, wt) = support
    c, t = np.meshgrid(kc, kt, indexing="ij")
    pooled = (c + t) / (2 * n)
    se = np.sqrt(pooled * (1 - pooled) * 2 / n)
    z = np.divide((t - c) / n, se, out=np.zeros_like(se), where=se > 0)
    return float((np.outer(wc, wt) * (np.abs(z) >= stats.norm.ppf(1 - alpha / 2))).sum())


PLAN_CASES = [(0.006, 0.003), (0.05, 0.01), (0.25, 0.03), (0.38, 0.02), (0.6, 0.02)]


@pytest.mark.parametrize("baseline,mde", PLAN_CASES)
def test_default_plan_reaches_the_stated_power_exactly(baseline: float, mde: float) -> None:
    from statsmodels.stats.proportion import samplesize_proportions_2indep_onetail

    n = sample_size_two_proportions(baseline, mde).per_arm
    assert exact_power(baseline, baseline + mde, n, 0.05) >= 0.795
    # statsmodels' two-sided sample size with null and alternative variances: the same formula.
    reference = samplesize_proportions_2indep_onetail(mde, baseline, 0.8, alpha=0.05)
    assert n == int(np.ceil(reference))


def test_the_textbook_formula_underpowers_rare_events() -> None:
    """Why the default changed: 10,403 per arm at 0.6% -> 0.9% has about 71% power."""
    n = sample_size_two_proportions(0.006, 0.003, formula="pooled").per_arm
    assert n == 10403
    assert exact_power(0.006, 0.009, n, 0.05) < 0.72
    assert sample_size_two_proportions(0.006, 0.003).per_arm == 12983


def test_several_arms_split_alpha_so_each_comparison_keeps_its_power() -> None:
    one = sample_size_two_proportions(0.006, 0.003)
    two = sample_size_two_proportions(0.006, 0.003, comparisons=2)
    assert two.alpha_per_comparison == 0.025 and two.per_arm > one.per_arm
    assert exact_power(0.006, 0.009, two.per_arm, 0.025) >= 0.795
    # Holm's first step is exactly this Bonferroni test: at one-arm size it falls short.
    assert exact_power(0.006, 0.009, one.per_arm, 0.025) < 0.75
    none = sample_size_two_proportions(0.006, 0.003, comparisons=2, correction="none")
    assert none.per_arm == one.per_arm


def test_mean_plan_matches_statsmodels_normal_power() -> None:
    from statsmodels.stats.power import NormalIndPower

    from ab_pipeline.stats.statistics import mde_means, sample_size_means

    size = sample_size_means(sd=12.0, mde=1.0)
    reference = NormalIndPower().solve_power(effect_size=1 / 12, alpha=0.05, power=0.8)
    assert size.per_arm == int(np.ceil(reference))
    assert mde_means(12.0, size.per_arm) == pytest.approx(1.0, rel=1e-3)
    split = sample_size_means(sd=12.0, mde=1.0, comparisons=3)
    reference = NormalIndPower().solve_power(effect_size=1 / 12, alpha=0.05 / 3, power=0.8)
    assert split.per_arm == int(np.ceil(reference))


@pytest.mark.parametrize("relative,harmful_up", [(False, True), (True, True), (True, False)])
def test_non_inferiority_size_gives_the_stated_power_at_no_effect(
    relative: bool, harmful_up: bool
) -> None:
    from ab_pipeline.stats.statistics import sample_size_non_inferiority

    p, budget = 0.06, (0.1 if relative else 0.005)
    n = sample_size_non_inferiority(p, budget, relative, harmful_up).per_arm
    # At no effect the bound is estimate + z SE with estimate ~ N(0, SE^2): it clears the
    # budget when estimate <= margin - z SE, probability Phi(margin / SE - z_{0.95}).
    if relative:  # log scale: SE of log(t/c) = sqrt(2 (1 - p) / (n p))
        se = np.sqrt(2 * (1 - p) / (n * p))
        margin = abs(np.log1p(budget if harmful_up else -budget))
    else:
        se, margin = np.sqrt(2 * p * (1 - p) / n), budget
    assert stats.norm.cdf(margin / se - stats.norm.ppf(0.95)) == pytest.approx(0.8, abs=2e-3)


def test_detectable_effect_inverts_the_plan_in_both_directions() -> None:
    from ab_pipeline.stats.statistics import mde_two_proportions

    assert mde_two_proportions(0.38, 9246, formula="pooled") == pytest.approx(0.02, rel=1e-3)
    up = sample_size_two_proportions(0.006, 0.003).per_arm
    assert mde_two_proportions(0.006, up) == pytest.approx(0.003, rel=1e-3)
    down = sample_size_two_proportions(0.38, -0.02).per_arm
    assert mde_two_proportions(0.38, down, increase=False) == pytest.approx(0.02, rel=1e-3)


# --- ratio, clustered quantile, CUPED, corrections, sequential, planning ---------------------


def test_ratio_delta_method_matches_a_direct_per_unit_computation() -> None:
    from ab_pipeline.stats.statistics import RatioSummary, compare_ratios

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
    from ab_pipeline.stats.statistics import QuantileClusterSums, clustered_quantile_bracket

    n, below = 10000, 9500.0  # one event per unit: I_i in {0, 1}
    sums = QuantileClusterSums(n, float(n), below, float(n), below, below)
    low, high, _ = clustered_quantile_bracket(0.95, sums)
    ref_low, ref_high, _ = quantile_bracket(0.95, n)
    # Sample variance (n - 1) vs the binomial's n: equal to within 1e-4 relative.
    assert low == pytest.approx(ref_low, rel=1e-4) and high == pytest.approx(ref_high, rel=1e-4)


def test_cuped_matches_ancova_regression_in_statsmodels() -> None:
    import statsmodels.api as sm

    from ab_pipeline.stats.statistics import CupedSummary, cuped_adjust

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

    from ab_pipeline.stats.statistics import adjust_p_values

    p = [0.012, 0.04, 0.031, 0.2, 0.0004]
    assert adjust_p_values(p, method) == pytest.approx(list(multipletests(p, method=reference)[1]))


@pytest.mark.parametrize(
    "looks,published",
    [
        (5, [4.877, 3.357, 2.680, 2.290, 2.031]),
        (4, [4.333, 2.963, 2.359, 2.014]),
        (3, [3.710, 2.511, 1.993]),
    ],
)
def test_obrien_fleming_boundaries_match_gsdesign(looks: int, published: list[float]) -> None:
    """Lan-DeMets OBF-type spending of alpha/2 per side (gsDesign sfLDOF, ldbounds)."""
    from ab_pipeline.stats.statistics import group_sequential_boundaries

    bounds = group_sequential_boundaries(tuple(k / looks for k in range(1, looks + 1)))
    assert bounds == pytest.approx(published, abs=0.005)


def test_obrien_fleming_boundaries_spend_exactly_alpha() -> None:
    from ab_pipeline.stats.statistics import group_sequential_boundaries, obrien_fleming_spending

    fractions = tuple(k / 5 for k in range(1, 6))
    bounds = group_sequential_boundaries(fractions)
    # Look 1 spends alpha/2 per side by 2 - 2 Phi(z_{1-alpha/4} / sqrt 0.2) (closed form).
    per_side = 2 * stats.norm.sf(stats.norm.ppf(1 - 0.05 / 4) / np.sqrt(0.2))
    assert bounds[0] == pytest.approx(stats.norm.isf(per_side), rel=1e-5)
    rng = np.random.default_rng(5)
    z = np.cumsum(rng.normal(size=(400000, 5)), axis=1) / np.sqrt(np.arange(1, 6))
    crossed = (np.abs(z) >= bounds).any(axis=1).mean()
    assert crossed == pytest.approx(0.05, abs=0.0015)  # MC s.e. 0.00034
    assert obrien_fleming_spending(1.0, 0.05) == pytest.approx(0.05)
    assert group_sequential_boundaries((1.0,)) == pytest.approx([1.959964], rel=1e-6)


# --- relative lifts on the log scale, one-sided bounds, discrete quantiles -------------------


@pytest.mark.parametrize(
    "counts", [(760, 2000, 840, 2000), (12, 2000, 17, 2000), (30, 5000, 9, 4000)]
)
def test_relative_interval_is_the_log_ratio_interval_statsmodels_computes(
    counts: tuple[int, int, int, int],
) -> None:
    xc, nc, xt, nt = counts
    ours = compare_proportions(xc, nc, xt, nt)
    low, high = confint_proportions_2indep(xt, nt, xc, nc, method="log", compare="ratio")
    assert ours.relative == pytest.approx((xt / nt) / (xc / nc) - 1)
    assert ours.relative_ci == pytest.approx((low - 1, high - 1))
    assert ours.as_dict()["relative_method"].startswith("log ratio")


def test_relative_mean_interval_uses_the_log_ratio_with_delta_se() -> None:
    rng = np.random.default_rng(6)
    c, t = rng.lognormal(0, 1, 800), rng.lognormal(0.1, 1, 900)

    def summary(x: np.ndarray) -> MeanSummary:
        return MeanSummary(len(x), float(x.sum()), float((x * x).sum()))

    ours = compare_means(summary(c), summary(t))
    se_log = np.sqrt(
        t.var(ddof=1) / len(t) / t.mean() ** 2 + c.var(ddof=1) / len(c) / c.mean() ** 2
    )
    log_ratio = np.log(t.mean() / c.mean())
    z = stats.norm.ppf(0.975)
    assert ours.relative_se_log == pytest.approx(se_log)
    assert ours.relative_ci == pytest.approx(
        (np.exp(log_ratio - z * se_log) - 1, np.exp(log_ratio + z * se_log) - 1)
    )


def test_one_sided_bounds_are_the_ends_of_the_two_sided_interval_at_twice_alpha() -> None:
    from ab_pipeline.stats.statistics import harm_bound

    at_05 = compare_proportions(60, 10000, 75, 10000, alpha=0.05).as_dict()
    at_10 = compare_proportions(60, 10000, 75, 10000, alpha=0.10)
    assert at_05["one_sided"]["absolute"] == pytest.approx(list(at_10.ci))
    assert at_05["one_sided"]["relative"] == pytest.approx(list(at_10.relative_ci))
    assert harm_bound(at_05, relative=True, upper=True, alpha=0.05) == pytest.approx(
        at_10.relative_ci[1]
    )
    # The log-scale bound is not symmetric about the estimate: the upper tail is longer.
    low, high = at_05["one_sided"]["relative"]
    assert high - at_05["relative"] > at_05["relative"] - low


def tied_summary(value: float, n: int = 20000) -> QuantileSummary:
    return QuantileSummary(n, value, value, value, float(stats.norm.ppf(0.975)))


def test_tied_quantiles_report_no_se_or_p_value_and_say_they_are_discrete() -> None:
    moving = QuantileSummary(20000, 95.0, 90.0, 101.0, float(stats.norm.ppf(0.975)))
    for control, treated in (
        (tied_summary(80.0), tied_summary(80.0)),
        (tied_summary(80.0), moving),
    ):
        result = compare_quantiles(control, treated)
        assert result.discrete and result.se is None and result.p_value is None
        assert result.ci == (treated.lower - control.upper, treated.upper - control.lower)
        as_dict = result.as_dict()
        assert as_dict["discrete"] is True and "discrete values" in as_dict["note"]
    # An interpolated estimate off the atom (percentile_cont) stays inside the interval.
    between = QuantileSummary(20000, 80.4, 80.0, 80.0, float(stats.norm.ppf(0.975)))
    result = compare_quantiles(tied_summary(80.0), between)
    assert result.discrete and result.p_value is None and result.se is None
    assert result.absolute == pytest.approx(0.4)
    assert result.ci[0] <= result.absolute <= result.ci[1]
    # Continuous brackets stay the normal comparison.
    assert not compare_quantiles(moving, moving).discrete


def test_a_tied_quantile_guardrail_bound_falls_back_to_the_interval_end() -> None:
    from ab_pipeline.stats.statistics import adjust_p_values, harm_bound

    result = compare_quantiles(tied_summary(80.0), tied_summary(90.0)).as_dict()
    assert harm_bound(result, relative=False, upper=True) == pytest.approx(10.0)
    assert harm_bound(result, relative=True, upper=True) == pytest.approx(90 / 80 - 1)
    # An uncomputable p-value counts as 1 in a Holm family.
    assert adjust_p_values([None, 0.01], "holm") == pytest.approx([1.0, 0.02])


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--baseline", "0.38", "--mde", "0.02", "--alpha", "1.5"],
            "alpha must be between 0 and 1",
        ),
        (["--baseline", "0.38", "--mde", "0.02", "--power", "0"], "power must be between 0 and 1"),
        (["--baseline", "1.2", "--mde", "0.02"], "baseline must be a rate"),
        (["--baseline", "0.38", "--mde", "0"], "mde must not be 0"),
        (["--baseline", "0.99", "--mde", "0.02"], "baseline + mde must stay between 0 and 1"),
        (["--sd", "-3", "--mde", "1"], "sd must be a positive number"),
    ],
)
def test_cli_plan_rejects_bad_arguments_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ab_pipeline.orchestration.cli import main

    assert main(["plan", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err


def test_cli_plan_prints_the_powered_size_and_names_its_formula(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ab_pipeline.orchestration.cli import main

    assert main(["plan", "--baseline", "0.006", "--mde", "0.003"]) == 0
    out = capsys.readouterr().out
    assert "12,983 units per arm" in out and "\nby the Fleiss formula (" in out
    assert main(["plan", "--baseline", "0.006", "--mde", "0.003", "--arms", "2"]) == 0
    assert "15,722 units per arm" in capsys.readouterr().out
    assert main(["plan", "--baseline", "0.38", "--mde", "0.02", "--formula", "pooled"]) == 0
    assert "9,246 units per arm" in capsys.readouterr().out
    assert main(["plan", "--sd", "12", "--mde", "1"]) == 0
    assert "2,261 units per arm" in capsys.readouterr().out
    assert main(["plan", "--baseline", "0.06", "--non-inferiority", "0.1", "--relative"]) == 0
    assert "non-inferiority" in capsys.readouterr().out
