"""The decision rule on the reference refund numbers: SHIP, STOP, ITERATE, RERUN, CONTINUE."""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.core.config import ExperimentConfig, load_config, parse_config
from ab_pipeline.gates.srm import evaluate_srm
from ab_pipeline.readout.decision import decide, first_comparison_date
from ab_pipeline.stats.statistics import (
    QuantileSummary,
    compare_proportions,
    compare_quantiles,
    quantile_bracket,
)

REFUND = Path(__file__).resolve().parents[2] / "dags" / "experiments" / "refund-query-rewrite.yaml"
FINAL = date(2026, 5, 31)


def refund_config(**changes: Any) -> ExperimentConfig:
    """The refund config with the textbook point-evidence guardrails (interval is the default)."""
    data = load_config(REFUND).model_dump()
    for guardrail in data["guardrails"].values():
        guardrail["evidence"] = "point"
    for dotted, value in changes.items():
        target = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            target = target[part]
        target[leaf] = value
    return parse_config(data)


def proportion_metric(role: str, xc: int, nc: int, xt: int, nt: int) -> dict[str, Any]:
    return {
        "role": role,
        "type": "proportion",
        "arms": {
            "control": {"units": nc, "value": xc / nc},
            "treatment": {"units": nt, "value": xt / nt},
        },
        "comparisons": {"treatment": compare_proportions(xc, nc, xt, nt).as_dict()},
    }


def latency_metric(shift_ms: float) -> dict[str, Any]:
    def summary(p95: float, n: int = 8000) -> QuantileSummary:
        low, high, z = quantile_bracket(0.95, n)
        return QuantileSummary(n, p95, p95 - 20, p95 + 20, z)

    comparison = compare_quantiles(summary(1500), summary(1500 + shift_ms))
    return {
        "role": "guardrail",
        "type": "quantile",
        "arms": {},
        "comparisons": {"treatment": comparison.as_dict()},
    }


def refund_metrics(latency_shift: float = 80) -> dict[str, dict[str, Any]]:
    return {
        "resolution_rate": proportion_metric("primary", 760, 2000, 840, 2000),
        "escalation_rate": proportion_metric("guardrail", 120, 2000, 124, 2000),
        "grounding_failure_rate": proportion_metric("guardrail", 60, 2000, 62, 2000),
        "p95_latency_ms": latency_metric(latency_shift),
    }


def passing_gates(config: ExperimentConfig, counts: dict[str, int] | None = None) -> dict[str, Any]:
    srm = evaluate_srm(counts or {"control": 3328, "treatment": 3460}, config)
    return {"data_quality": {"passed": True, "checks": []}, "srm": srm, "receipt": None}


def checks_by_name(decision: Any) -> dict[str, Any]:
    return {c.name: c for c in decision.checks}


def test_reference_numbers_ship() -> None:
    config = refund_config()
    decision = decide(config, FINAL, passing_gates(config), refund_metrics())
    assert decision.decision == "SHIP"
    assert decision.status == "final"
    checks = checks_by_name(decision)
    assert checks["positive_lift_interval"].passed
    assert checks["observed_lift_threshold"].passed
    assert checks["guardrail:p95_latency_ms"].passed
    assert checks["guardrail:p95_latency_ms"].observed == pytest.approx(80)
    assert "+4.0 pp" in decision.reason


def test_latency_over_budget_stops() -> None:
    config = refund_config()
    decision = decide(config, FINAL, passing_gates(config), refund_metrics(latency_shift=310))
    assert decision.decision == "STOP"
    check = checks_by_name(decision)["guardrail:p95_latency_ms"]
    assert not check.passed and check.observed == pytest.approx(310) and check.budget == 150
    assert "p95_latency_ms" in decision.reason


def test_higher_min_lift_iterates() -> None:
    config = refund_config(**{"decision.min_lift": 0.05})
    decision = decide(config, FINAL, passing_gates(config), refund_metrics())
    assert decision.decision == "ITERATE"
    assert not checks_by_name(decision)["observed_lift_threshold"].passed
    assert decision.reason == (
        "Valid and nothing harmed, but no launch: treatment: resolution_rate moved +4.0 pp, "
        "less than the required +5.0 pp (min_lift)."
    )


def test_an_unproven_small_effect_iterates_and_says_both_in_one_clause() -> None:
    config = refund_config()
    metrics = refund_metrics()
    metrics["resolution_rate"] = proportion_metric("primary", 760, 2000, 780, 2000)
    decision = decide(config, FINAL, passing_gates(config), metrics)
    assert decision.decision == "ITERATE"
    assert decision.reason == (
        "Valid and nothing harmed, but no launch: treatment: resolution_rate moved +1.0 pp "
        "(95% CI -2.0 pp to +4.0 pp), not proven, and below the required +2.0 pp (min_lift)."
    )


def test_failed_srm_reruns_without_analysis() -> None:
    config = refund_config()
    gates = passing_gates(config, {"control": 3050, "treatment": 3738})
    decision = decide(config, FINAL, gates, {})
    assert decision.decision == "RERUN"
    assert [c.name for c in decision.checks] == ["traffic_integrity"]
    assert "srm" in decision.reason


def test_before_end_continues() -> None:
    config = refund_config()
    decision = decide(config, date(2026, 5, 20), passing_gates(config), refund_metrics())
    assert decision.decision == "CONTINUE"
    assert decision.status == "interim"


def test_primary_moving_the_wrong_way_stops() -> None:
    config = refund_config()
    metrics = refund_metrics()
    metrics["resolution_rate"] = proportion_metric("primary", 840, 2000, 760, 2000)
    decision = decide(config, FINAL, passing_gates(config), metrics)
    assert decision.decision == "STOP"
    assert not checks_by_name(decision)["primary_not_harmed"].passed


def test_guardrail_bound_beyond_budget_is_not_shown_safe_and_iterates() -> None:
    config = refund_config(
        **{"guardrails.escalation_rate": {"max_increase": 0.005, "evidence": "interval"}}
    )
    decision = decide(config, FINAL, passing_gates(config), refund_metrics())
    check = checks_by_name(decision)["guardrail:escalation_rate"]
    assert check.observed == pytest.approx(0.002)
    assert check.bound > 0.005 and not check.passed
    assert check.outcome == "not_shown_within_budget"
    assert decision.decision == "ITERATE"


def test_relative_budget_compares_the_relative_change() -> None:
    config = refund_config(**{"guardrails.escalation_rate": {"max_relative_increase": 0.05}})
    metrics = refund_metrics()
    metrics["escalation_rate"] = proportion_metric("guardrail", 100, 2000, 110, 2000)  # +10%
    check = checks_by_name(decide(config, FINAL, passing_gates(config), metrics))[
        "guardrail:escalation_rate"
    ]
    assert check.observed == pytest.approx(0.10) and not check.passed


def test_decrease_hypothesis_needs_a_negative_interval() -> None:
    config = refund_config(**{"hypothesis.direction": "decrease"})
    metrics = refund_metrics()
    metrics["resolution_rate"] = proportion_metric("primary", 840, 2000, 760, 2000)
    decision = decide(config, FINAL, passing_gates(config), metrics)
    assert decision.decision == "SHIP"


def test_three_arm_experiment_checks_each_treatment() -> None:
    data = refund_config().model_dump()
    data.update(arms={"control": 0.34, "a": 0.33, "b": 0.33})
    config = parse_config(data)
    metrics = refund_metrics()
    for metric in metrics.values():
        metric["comparisons"] = {
            "a": metric["comparisons"]["treatment"],
            "b": metric["comparisons"]["treatment"],
        }
    decision = decide(
        config, FINAL, passing_gates(config, {"control": 340, "a": 330, "b": 330}), metrics
    )
    assert {c.arm for c in decision.checks if c.arm} == {"a", "b"}
    assert decision.decision == "SHIP"


def test_guardrails_default_to_interval_evidence_and_show_point_bound_and_budget() -> None:
    config = load_config(REFUND)
    assert all(g.evidence == "interval" for g in config.guardrails.values())
    decision = decide(config, FINAL, passing_gates(config), refund_metrics())
    check = checks_by_name(decision)["guardrail:escalation_rate"]
    # +0.2 pp observed, but 2,000 per arm cannot prove the +0.5 pp budget: bound ~ +1.43 pp.
    assert check.observed == pytest.approx(0.002)
    assert check.bound == pytest.approx(0.002 + 1.6449 * check_se(120, 124), abs=1e-4)
    assert check.budget == 0.005 and not check.passed
    assert "+0.2 pp" in check.detail and "+1.4 pp" in check.detail and "+0.5 pp" in check.detail
    assert check.outcome == "not_shown_within_budget"
    assert decision.decision == "ITERATE"


def check_se(xc: int, xt: int, n: int = 2000) -> float:
    return float(compare_proportions(xc, n, xt, n).se)


# ---- the outcomes behind STOP / ITERATE (docs/statistics.md, "How the decision is made") ----


def one_sided_bound(xc: int, nc: int, xt: int, nt: int, alpha: float = 0.05) -> float:
    from scipy.stats import norm

    comparison = compare_proportions(xc, nc, xt, nt)
    return comparison.absolute + float(norm.ppf(1 - alpha)) * comparison.se


def test_seed_numbers_with_interval_evidence_iterate_and_say_how_many_units() -> None:
    """Issue case 1: escalation -0.2 pp, grounding +0.05 pp, both inside +0.5 pp budgets."""
    config = load_config(REFUND)  # interval evidence, the default
    metrics = refund_metrics()
    metrics["escalation_rate"] = proportion_metric("guardrail", 124, 2000, 120, 2000)
    metrics["grounding_failure_rate"] = proportion_metric("guardrail", 60, 2000, 61, 2000)
    decision = decide(config, FINAL, passing_gates(config), metrics)

    assert decision.decision == "ITERATE"
    assert "breach" not in decision.reason and "roll back" not in decision.reason.lower()
    checks = checks_by_name(decision)
    for name, (xc, xt) in {
        "escalation_rate": (124, 120),
        "grounding_failure_rate": (60, 61),
    }.items():
        check = checks[f"guardrail:{name}"]
        assert check.outcome == "not_shown_within_budget" and not check.passed
        # n_needed = n (z se / (budget - estimate))^2, z and se from scipy/the comparison here.
        from scipy.stats import norm

        comparison = compare_proportions(xc, 2000, xt, 2000)
        z = float(norm.ppf(0.95))
        expected = 2000 * (z * comparison.se / (0.005 - comparison.absolute)) ** 2
        assert check.units_needed_per_arm == pytest.approx(expected, abs=1)
        more = check.units_needed_per_arm - 2000
        assert (
            f"(about {check.units_needed_per_arm:,} units per arm, {more:,} more, would"
            in decision.reason
        )
    # At that sample, with the same rates, the one-sided bound lands on the budget.
    needed = checks["guardrail:escalation_rate"].units_needed_per_arm
    scale = needed / 2000
    bound = one_sided_bound(round(124 * scale), needed, round(120 * scale), needed)
    assert bound == pytest.approx(0.005, abs=2e-4)


def cookie_cats_config() -> ExperimentConfig:
    """Cookie Cats (gate at level 30 vs 40): 7-day retention is the primary, 1-day a guardrail
    that may fall at most 1 pp (interval evidence)."""
    data = load_config(REFUND).model_dump()
    data.update(
        arms={"gate_30": 0.5, "gate_40": 0.5},
        control="gate_30",
        metrics={
            "retention_1": {"type": "proportion", "event": "played", "window": "1d"},
            "retention_7": {"type": "proportion", "event": "played", "window": "7d"},
        },
        primary="retention_7",
        guardrails={"retention_1": {"max_decrease": 0.01}},
    )
    data["hypothesis"]["metric"] = "retention_7"
    return parse_config(data)


def cookie_cats_metrics() -> dict[str, dict[str, Any]]:
    """The published summary: 44,700 and 45,489 players; 1-day 44.82% / 44.23%, 7-day
    19.02% / 18.20%."""

    def metric(role: str, xc: int, xt: int) -> dict[str, Any]:
        comparison = compare_proportions(xc, 44700, xt, 45489).as_dict()
        return {
            "role": role,
            "type": "proportion",
            "arms": {
                "gate_30": {"units": 44700, "value": xc / 44700},
                "gate_40": {"units": 45489, "value": xt / 45489},
            },
            "comparisons": {"gate_40": comparison},
        }

    return {
        "retention_7": metric("primary", 8502, 8279),
        "retention_1": metric("guardrail", 20034, 20119),
    }


def test_cookie_cats_stops_on_the_primary_not_on_the_unproven_guardrail() -> None:
    config = cookie_cats_config()
    metrics = cookie_cats_metrics()
    gates = passing_gates(config, {"gate_30": 44700, "gate_40": 45489})
    decision = decide(config, FINAL, gates, metrics)

    assert decision.decision == "STOP"
    assert "retention_7 fell 0.8 pp (95% CI -1.3 pp to -0.3 pp)" in decision.reason
    assert "significantly the wrong way" in decision.reason and "Roll back." in decision.reason
    assert "breach" not in decision.reason
    checks = checks_by_name(decision)
    assert checks["primary_not_harmed"].outcome == "harmed"
    guardrail = checks["guardrail:retention_1"]
    assert guardrail.observed == pytest.approx(20119 / 45489 - 20034 / 44700)
    assert guardrail.bound == pytest.approx(-0.0113, abs=5e-5)  # the published -1.13 pp
    assert guardrail.outcome == "not_shown_within_budget"  # -0.59 pp is inside -1 pp
    assert "retention_1 is not shown to be within its budget" in decision.reason


def test_a_guardrail_without_a_comparison_is_not_evaluable_never_breached() -> None:
    config = load_config(REFUND)
    metrics = refund_metrics()
    del metrics["grounding_failure_rate"]
    metrics["escalation_rate"]["comparisons"] = {}
    decision = decide(config, FINAL, passing_gates(config), metrics)

    assert decision.decision == "ITERATE"
    checks = checks_by_name(decision)
    for name in ("escalation_rate", "grounding_failure_rate"):
        assert checks[f"guardrail:{name}"].outcome == "not_evaluable"
    assert "grounding_failure_rate could not be evaluated" in decision.reason
    assert "Harm shown" not in decision.reason and "breach" not in decision.reason


def test_significant_harm_whose_bound_crosses_the_budget_stops() -> None:
    """+0.45 pp is inside the +0.5 pp budget, but the interval [+0.24, +0.66] pp excludes 0 on
    the harmful side and the one-sided bound (+0.63 pp) is beyond the budget: harmed."""
    config = refund_config(**{"guardrails.escalation_rate": {"max_increase": 0.005}})
    metrics = refund_metrics()
    metrics["escalation_rate"] = proportion_metric("guardrail", 6000, 100_000, 6450, 100_000)
    decision = decide(config, FINAL, passing_gates(config), metrics)

    check = checks_by_name(decision)["guardrail:escalation_rate"]
    low, _ = compare_proportions(6000, 100_000, 6450, 100_000).ci
    assert low > 0 and check.observed < 0.005 < check.bound
    assert check.outcome == "harmed" and decision.decision == "STOP"
    assert "guardrail escalation_rate rose 0.5 pp" in decision.reason
    assert "the harm is significant" in decision.reason


def test_significant_harm_proven_within_budget_passes() -> None:
    """+0.25 pp, interval [+0.04, +0.46] pp: significant, but the bound +0.43 pp is inside."""
    config = refund_config(**{"guardrails.escalation_rate": {"max_increase": 0.005}})
    metrics = refund_metrics()
    metrics["escalation_rate"] = proportion_metric("guardrail", 6000, 100_000, 6250, 100_000)
    decision = decide(config, FINAL, passing_gates(config), metrics)

    check = checks_by_name(decision)["guardrail:escalation_rate"]
    assert compare_proportions(6000, 100_000, 6250, 100_000).ci[0] > 0
    assert check.bound < 0.005 and check.outcome == "pass"
    assert decision.decision == "SHIP"


def test_estimate_beyond_budget_is_harm_even_when_not_significant() -> None:
    config = refund_config(**{"guardrails.escalation_rate": {"max_increase": 0.005}})
    metrics = refund_metrics()
    metrics["escalation_rate"] = proportion_metric("guardrail", 120, 2000, 135, 2000)  # +0.75 pp
    decision = decide(config, FINAL, passing_gates(config), metrics)

    check = checks_by_name(decision)["guardrail:escalation_rate"]
    assert compare_proportions(120, 2000, 135, 2000).ci[0] < 0  # not significant
    assert check.outcome == "harmed" and decision.decision == "STOP"
    assert "the estimate is beyond the budget" in decision.reason


def test_relative_budget_not_shown_safe_reports_units_on_the_log_scale() -> None:
    config = refund_config(
        **{"guardrails.escalation_rate": {"max_relative_increase": 0.2, "evidence": "interval"}}
    )
    metrics = refund_metrics()
    metrics["escalation_rate"] = proportion_metric("guardrail", 120, 2000, 126, 2000)  # +5%
    decision = decide(config, FINAL, passing_gates(config), metrics)

    check = checks_by_name(decision)["guardrail:escalation_rate"]
    assert check.observed == pytest.approx(0.05)
    assert check.outcome == "not_shown_within_budget" and decision.decision == "ITERATE"
    scale = check.units_needed_per_arm / 2000
    rescaled = compare_proportions(
        round(120 * scale),
        check.units_needed_per_arm,
        round(126 * scale),
        check.units_needed_per_arm,
    )
    from scipy.stats import norm

    # At that sample the one-sided bound on the relative change sits near the +20% budget.
    low, high = rescaled.relative_ci
    se_log = (math.log1p(high) - math.log1p(low)) / (2 * float(norm.ppf(0.975)))
    bound = math.expm1(math.log1p(rescaled.relative) + float(norm.ppf(0.95)) * se_log)
    assert bound == pytest.approx(0.2, abs=0.005)


def test_interim_before_the_first_window_closes_says_when_it_does() -> None:
    config = load_config(REFUND.with_name("delivery-estimate.yaml"))  # 3d primary window
    # Units exposed during the start day complete a 3-day window by the end of start + 3.
    assert first_comparison_date(config) == config.start + timedelta(days=3)
    metrics = {
        name: {"role": "x", "type": "proportion", "arms": {}, "comparisons": {}}
        for name in config.metrics
    }
    gates = passing_gates(config, {"control": 500, "treatment": 500})
    early = decide(config, config.start + timedelta(days=1), gates, metrics)
    assert early.decision == "CONTINUE"
    first = (config.start + timedelta(days=3)).isoformat()
    assert f"have all completed it by the readout of {first}" in early.reason
    assert "3d order_completion window" in checks_by_name(early)["positive_lift_interval"].detail
    later = decide(config, config.start + timedelta(days=3), gates, metrics)
    assert "window" not in later.reason
