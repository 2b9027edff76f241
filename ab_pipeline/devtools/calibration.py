"""Calibration by simulation: do the statistics do what their names promise?

Each scenario draws many seeded experiments at the sufficient-statistic level in numpy (counts,
sums, sums of squares, per-unit pieces: what the warehouse SQL would return), runs them through
the real functions in `ab_pipeline.stats.statistics` and reports a rate with its Monte-Carlo
standard
error. This tests the statistics, not the SQL (tests/readout/test_extract.py covers that).

`tests/devtools/test_calibration.py` runs a reduced version; `benchmarks/calibration.py` the full
one, writing its table into docs/statistics.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ab_pipeline.stats.statistics import (
    CupedSummary,
    MeanSummary,
    QuantileClusterSums,
    QuantileSummary,
    RatioSummary,
    clustered_quantile_bracket,
    compare_means,
    compare_proportions,
    compare_quantiles,
    compare_ratios,
    cuped_adjust,
    group_sequential_boundaries,
    harm_bound,
    quantile_bracket,
    sample_size_two_proportions,
)

ALPHA = 0.05


@dataclass(frozen=True)
class Row:
    name: str
    target: float
    measured: float
    mc_se: float
    reps: int
    note: str = ""

    @property
    def z(self) -> float:
        """Distance from target in Monte-Carlo standard errors."""
        return (self.measured - self.target) / self.mc_se if self.mc_se > 0 else 0.0


def _rate(hits: int, reps: int) -> tuple[float, float]:
    p = hits / reps
    return p, math.sqrt(max(p * (1 - p), 1e-12) / reps)


def _rng(seed: int) -> Any:
    import numpy as np

    return np.random.default_rng(seed)


def _mean_summary(values: Any) -> MeanSummary:
    return MeanSummary(len(values), float(values.sum()), float((values * values).sum()))


def aa_false_positives(reps: int, seed: int = 1) -> Row:
    """A/A proportions (38%, 2,000 per arm): share of final looks with p < alpha."""
    rng = _rng(seed)
    xc, xt = rng.binomial(2000, 0.38, reps), rng.binomial(2000, 0.38, reps)
    hits = sum(
        (compare_proportions(int(c), 2000, int(t), 2000).p_value or 1.0) < ALPHA
        for c, t in zip(xc, xt, strict=True)
    )
    return Row("A/A false-positive rate, final look (proportion)", ALPHA, *_rate(hits, reps), reps)


def coverage_proportion(reps: int, seed: int = 2) -> tuple[Row, Row]:
    """38% -> 42%, 2,000 per arm: coverage of the difference and of the relative lift."""
    rng = _rng(seed)
    xc, xt = rng.binomial(2000, 0.38, reps), rng.binomial(2000, 0.42, reps)
    diff, rel = 0.04, 0.42 / 0.38 - 1
    abs_hits = rel_hits = 0
    for c, t in zip(xc, xt, strict=True):
        result = compare_proportions(int(c), 2000, int(t), 2000)
        abs_hits += result.ci[0] <= diff <= result.ci[1]
        assert result.relative_ci is not None
        rel_hits += result.relative_ci[0] <= rel <= result.relative_ci[1]
    return (
        Row("95% CI coverage: proportion difference", 0.95, *_rate(abs_hits, reps), reps),
        Row(
            "95% CI coverage: relative lift (proportion, log scale)",
            0.95,
            *_rate(rel_hits, reps),
            reps,
        ),
    )


def coverage_mean(reps: int, seed: int = 3, n: int = 1000) -> tuple[Row, Row]:
    """Skewed per-unit values (lognormal, sigma 1), +5%: Welch difference and relative lift."""
    rng = _rng(seed)
    mu = math.exp(0.5)
    diff, rel = 0.05 * mu, 0.05
    abs_hits = rel_hits = 0
    for _ in range(reps):
        c = rng.lognormal(0.0, 1.0, n)
        t = rng.lognormal(0.0, 1.0, n) * 1.05
        result = compare_means(_mean_summary(c), _mean_summary(t))
        abs_hits += result.ci[0] <= diff <= result.ci[1]
        assert result.relative_ci is not None
        rel_hits += result.relative_ci[0] <= rel <= result.relative_ci[1]
    return (
        Row(
            "95% CI coverage: mean difference (Welch, lognormal)",
            0.95,
            *_rate(abs_hits, reps),
            reps,
        ),
        Row("95% CI coverage: relative lift (mean, log scale)", 0.95, *_rate(rel_hits, reps), reps),
    )


def _ratio_arm(rng: Any, n: int, scale: float) -> RatioSummary:
    sessions = 1 + rng.poisson(2.0, n)
    propensity = rng.beta(2.0, 8.0, n) * scale  # units differ: clicks cluster within users
    clicks = rng.binomial(sessions, propensity)
    x, y = clicks.astype(float), sessions.astype(float)
    return RatioSummary(n, x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())


def coverage_ratio(reps: int, seed: int = 4, n: int = 1000) -> Row:
    """Clicks per session, heterogeneous users: 0.20 -> 0.22; delta-method interval."""
    rng = _rng(seed)
    hits = 0
    for _ in range(reps):
        result = compare_ratios(_ratio_arm(rng, n, 1.0), _ratio_arm(rng, n, 1.1))
        hits += result.ci[0] <= 0.02 <= result.ci[1]
    return Row("95% CI coverage: ratio difference (delta method)", 0.95, *_rate(hits, reps), reps)


def _quantile_arm(rng: Any, units: int, q: float, scale: float, clustered: bool) -> QuantileSummary:
    """Events clustered in units: log value = unit effect + event noise; what SQL returns."""
    import numpy as np

    counts = 1 + rng.poisson(4.0, units)
    unit = np.repeat(np.arange(units), counts)
    values = np.exp(rng.normal(0, 0.6, units)[unit] + rng.normal(0, 0.4, unit.size)) * scale
    ordered = np.sort(values)
    n = ordered.size
    estimate = float(np.quantile(values, q))  # percentile_cont
    if clustered:
        below = np.bincount(unit, weights=values <= estimate, minlength=units)
        pieces = QuantileClusterSums(
            units,
            float(n),
            float(below.sum()),
            float((counts * counts).sum()),
            float((below * below).sum()),
            float((below * counts).sum()),
        )
        low, high, z = clustered_quantile_bracket(q, pieces)
    else:
        low, high, z = quantile_bracket(q, n)

    def disc(p: float) -> float:  # percentile_disc
        return float(ordered[min(max(math.ceil(p * n) - 1, 0), n - 1)])

    return QuantileSummary(n, estimate, disc(low), disc(high), z)


def coverage_quantile(
    reps: int, seed: int = 5, units: int = 1500, q: float = 0.95, include_iid: bool = True
) -> tuple[Row, ...]:
    """p95 of clustered events, +5%: Deng-Knoblich-Lu interval (and the i.i.d. one, shown)."""
    from scipy.stats import norm

    truth = 0.05 * math.exp(norm.ppf(q) * math.sqrt(0.6**2 + 0.4**2))
    rows = []
    for clustered in (True, False) if include_iid else (True,):
        rng = _rng(seed)
        hits = 0
        for _ in range(reps):
            c = _quantile_arm(rng, units, q, 1.0, clustered)
            t = _quantile_arm(rng, units, q, 1.05, clustered)
            result = compare_quantiles(c, t)
            hits += result.ci[0] <= truth <= result.ci[1]
        label = "clustered (Deng et al.)" if clustered else "i.i.d. events (not used; shown)"
        rows.append(
            Row(f"95% CI coverage: p95 difference, {label}", 0.95, *_rate(hits, reps), reps)
        )
    return tuple(rows)


def power_at_mde(reps: int, seed: int = 6) -> Row:
    """38% -> 40% with the default plan's units per arm: share of significant, right-signed
    results (the plan promises 80%)."""
    rng = _rng(seed)
    n = sample_size_two_proportions(0.38, 0.02).per_arm
    xc, xt = rng.binomial(n, 0.38, reps), rng.binomial(n, 0.40, reps)
    hits = 0
    for c, t in zip(xc, xt, strict=True):
        result = compare_proportions(int(c), n, int(t), n)
        hits += result.p_value is not None and result.p_value < ALPHA and result.absolute > 0
    return Row(f"power at the MDE (2 pp, {n:,} per arm, Fleiss)", 0.80, *_rate(hits, reps), reps)


GUARDRAIL_RATE = 0.006  # a rare conversion (Hillstrom-like): where the ratio is most skewed
GUARDRAIL_SIZES = (2000, 44000)


def guardrail_pass_at_budget(
    reps: int, seed: int = 9, relative: bool = True, per_arm: int = 2000
) -> Row:
    """A guardrail whose true harm equals its budget must pass at most alpha of the time.

    Control converts at 0.6%; treatment at 0.6% x 1.2 (relative budget: max_relative_increase
    20%) or 0.6% + 0.12 pp (absolute budget max_increase 0.12 pp: the same truth). Pass: the
    one-sided 95% bound on harm (`statistics.harm_bound`, what the decision uses) <= budget.
    """
    rng = _rng(seed)
    treated = GUARDRAIL_RATE * 1.2
    budget = 0.2 if relative else treated - GUARDRAIL_RATE
    xc = rng.binomial(per_arm, GUARDRAIL_RATE, reps)
    xt = rng.binomial(per_arm, treated, reps)
    passes = 0
    for c, t in zip(xc, xt, strict=True):
        if relative and c == 0:
            continue  # relative change undefined: the check fails
        result = compare_proportions(int(c), per_arm, int(t), per_arm, ALPHA).as_dict()
        bound = harm_bound(result, relative, True, ALPHA)
        passes += bound is not None and bound <= budget
    kind = "relative (log scale)" if relative else "absolute"
    return Row(
        f"guardrail pass rate at the budget, {kind}, {per_arm:,} per arm",
        ALPHA,
        *_rate(passes, reps),
        reps,
        "at most alpha",
    )


def guardrails_at_budget(reps: int, seed: int = 9) -> tuple[Row, ...]:
    """Relative and absolute budgets, small and large samples."""
    return tuple(
        guardrail_pass_at_budget(reps, seed + i, relative, n)
        for i, (relative, n) in enumerate(
            (relative, n) for relative in (True, False) for n in GUARDRAIL_SIZES
        )
    )


def cuped(reps: int, seed: int = 7, n: int = 2000) -> tuple[Row, Row, Row]:
    """Pre-period resolutions predict resolution: bias, SE and coverage.

    Each account has a propensity pi ~ Beta(0.5, 1.2); in the 14 days before exposure it
    resolved Binomial(10, pi) questions (the covariate); after exposure it resolves with
    min(pi + 3 pp, 1) in treatment.
    """
    import numpy as np
    from scipy.stats import beta

    truth = 0.03 - float(beta(0.5, 1.2).expect(lambda p: max(p + 0.03 - 1.0, 0.0)))

    rng = _rng(seed)
    estimates, ses, ses_plain, hits = [], [], [], 0
    for _ in range(reps):
        arms = {}
        for arm, lift in (("control", 0.0), ("treatment", 0.03)):
            pi = rng.beta(0.5, 1.2, n)
            x = rng.binomial(10, pi).astype(float)
            y = (rng.random(n) < np.minimum(pi + lift, 1.0)).astype(float)
            arms[arm] = CupedSummary(_mean_summary(y), x.sum(), (x * x).sum(), (x * y).sum())
        fit = cuped_adjust(arms)
        adjusted = compare_means(fit.adjusted["control"], fit.adjusted["treatment"])
        plain = compare_means(arms["control"].y, arms["treatment"].y)
        assert adjusted.se is not None and plain.se is not None
        estimates.append(adjusted.absolute)
        ses.append(adjusted.se)
        ses_plain.append(plain.se)
        hits += adjusted.ci[0] <= truth <= adjusted.ci[1]
    est = np.array(estimates)
    bias_se = float(est.std(ddof=1) / math.sqrt(reps))
    ratio = float(np.mean(ses) / np.mean(ses_plain))
    return (
        Row("CUPED bias (estimate - truth)", 0.0, float(est.mean() - truth), bias_se, reps),
        Row(
            "CUPED SE / unadjusted SE",
            1.0,
            ratio,
            0.0,
            reps,
            f"variance reduction {1 - ratio**2:.0%}",
        ),
        Row("95% CI coverage: CUPED-adjusted difference", 0.95, *_rate(hits, reps), reps),
    )


def peeking(reps: int, seed: int = 8, looks: int = 20, per_look: int = 500) -> tuple[Row, Row]:
    """A/A, 20 nightly looks: naive stopping at the first p < 0.05 vs O'Brien-Fleming spending."""
    import numpy as np

    rng = _rng(seed)
    xc = np.cumsum(rng.binomial(per_look, 0.38, (reps, looks)), axis=1)
    xt = np.cumsum(rng.binomial(per_look, 0.38, (reps, looks)), axis=1)
    bounds = group_sequential_boundaries(tuple(k / looks for k in range(1, looks + 1)), ALPHA)
    naive = sequential = 0
    for r in range(reps):
        naive_hit = seq_hit = False
        for k in range(looks):
            n = per_look * (k + 1)
            result = compare_proportions(int(xc[r, k]), n, int(xt[r, k]), n)
            assert result.p_value is not None and result.se is not None
            naive_hit = naive_hit or result.p_value < ALPHA
            z = result.absolute / result.se if result.se > 0 else 0.0
            seq_hit = seq_hit or abs(z) >= bounds[k]
        naive += naive_hit
        sequential += seq_hit
    return (
        Row(
            f"A/A false wins, naive stopping over {looks} looks",
            0.25,
            *_rate(naive, reps),
            reps,
            "about 25% expected",
        ),
        Row(
            f"A/A false wins, O'Brien-Fleming spending over {looks} looks",
            ALPHA,
            *_rate(sequential, reps),
            reps,
            "at most alpha",
        ),
    )


SCENARIOS: dict[str, Callable[[int], Any]] = {
    "aa": aa_false_positives,
    "proportion": coverage_proportion,
    "mean": coverage_mean,
    "ratio": coverage_ratio,
    "quantile": coverage_quantile,
    "power": power_at_mde,
    "cuped": cuped,
    "peeking": peeking,
    "guardrails": guardrails_at_budget,
}


def run_all(scale: float = 1.0) -> list[Row]:
    """Every scenario; `scale` multiplies the default replication counts (1.0 = full)."""
    full = {
        "aa": 20000,
        "proportion": 10000,
        "mean": 4000,
        "ratio": 4000,
        "quantile": 1500,
        "power": 10000,
        "cuped": 2000,
        "peeking": 10000,
        "guardrails": 40000,
    }
    rows: list[Row] = []
    for name, scenario in SCENARIOS.items():
        out = scenario(max(int(full[name] * scale), 50))
        rows.extend(out if isinstance(out, tuple) else (out,))
    return rows


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| check | target | measured | MC s.e. | reps | note |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.target:.3f} | {row.measured:.4f} | {row.mc_se:.4f} | "
            f"{row.reps:,} | {row.note} |"
        )
    return "\n".join(lines)


# --- planning beside statsmodels -------------------------------------------------------------

PLAN_CASES = ((0.006, 0.003), (0.05, 0.01), (0.25, 0.03), (0.38, 0.02), (0.6, 0.02))


def exact_power(p1: float, p2: float, per_arm: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided pooled z-test, summed over both arms' binomial counts."""
    import numpy as np
    from scipy.stats import binom, norm

    support = []
    for p in (p1, p2):
        sd = math.sqrt(per_arm * p * (1 - p))
        k = np.arange(
            max(int(per_arm * p - 10 * sd) - 5, 0), min(int(per_arm * p + 10 * sd) + 5, per_arm) + 1
        )
        support.append((k, binom.pmf(k, per_arm, p)))
    (kc, wc), (kt, wt) = support
    c, t = np.meshgrid(kc, kt, indexing="ij")
    pooled = (c + t) / (2 * per_arm)
    se = np.sqrt(pooled * (1 - pooled) * 2 / per_arm)
    z = np.divide((t - c) / per_arm, se, out=np.zeros_like(se), where=se > 0)
    return float((np.outer(wc, wt) * (np.abs(z) >= norm.ppf(1 - alpha / 2))).sum())


def plan_table() -> str:
    """Units per arm (alpha 0.05, power 0.8) by formula, beside statsmodels, with exact power."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import (
        proportion_effectsize,
        samplesize_proportions_2indep_onetail,
    )

    lines = [
        "| baseline | MDE | `plan` default (fleiss) | exact power | statsmodels "
        "`samplesize_proportions_2indep_onetail` | statsmodels `NormalIndPower` (arcsine h) "
        "| exact power | `pooled` 2p(1-p) | exact power | `unpooled` | two treatment arms "
        "(alpha/2) | exact power at alpha/2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in PLAN_CASES:
        ours = sample_size_two_proportions(p, d).per_arm
        pooled = sample_size_two_proportions(p, d, formula="pooled").per_arm
        unpooled = sample_size_two_proportions(p, d, formula="unpooled").per_arm
        two = sample_size_two_proportions(p, d, comparisons=2).per_arm
        onetail = math.ceil(samplesize_proportions_2indep_onetail(d, p, 0.8, alpha=ALPHA))
        arcsine = math.ceil(
            NormalIndPower().solve_power(proportion_effectsize(p + d, p), alpha=ALPHA, power=0.8)
        )
        lines.append(
            f"| {p:g} | {d:g} | {ours:,} | {exact_power(p, p + d, ours):.3f} | {onetail:,} | "
            f"{arcsine:,} | {exact_power(p, p + d, arcsine):.3f} | {pooled:,} | "
            f"{exact_power(p, p + d, pooled):.3f} | {unpooled:,} | {two:,} | "
            f"{exact_power(p, p + d, two, ALPHA / 2):.3f} |"
        )
    return "\n".join(lines)
