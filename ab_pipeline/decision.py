"""The decision rule, written down before the data arrives (docs/results.md vocabulary).

RERUN when a validity gate failed; CONTINUE before the planned end; STOP when a guardrail is
breached or the primary moved the wrong way; SHIP when every launch check passes; ITERATE
otherwise. Every check behind the decision is returned with its numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

from ab_pipeline.config import ExperimentConfig, Guardrail

GATE_NAMES = ("data_quality", "srm", "receipt", "assignment")


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    metric: str | None = None
    arm: str | None = None
    observed: float | None = None
    bound: float | None = None
    budget: float | None = None
    budget_kind: str | None = None


@dataclass(frozen=True)
class Decision:
    decision: str
    reason: str
    status: str
    checks: tuple[Check, ...]

    def checks_as_dicts(self) -> list[dict[str, Any]]:
        return [asdict(check) for check in self.checks]


def fmt(value: float, kind: str) -> str:
    """Numbers the way the brief says them: pp for proportion differences."""
    if kind == "proportion":
        return f"{value * 100:+.1f} pp"
    if kind == "relative":
        return f"{value * 100:+.1f}%"
    return f"{value:+,.4g}"


def failed_gates(gates: dict[str, dict[str, Any] | None]) -> list[str]:
    return [name for name in GATE_NAMES if (gate := gates.get(name)) and not gate["passed"]]


def traffic_integrity(gates: dict[str, dict[str, Any] | None]) -> Check:
    failed = failed_gates(gates)
    srm = gates.get("srm")
    srm_text = (
        f"SRM chi-square p = {srm['p_value']:.3g} (threshold {srm['alpha']:g})"
        if srm and srm.get("p_value") is not None
        else "SRM not computed"
    )
    ran = [name for name in GATE_NAMES if gates.get(name) is not None]
    if failed:
        return Check("traffic_integrity", False, f"gate(s) failed: {', '.join(failed)}; {srm_text}")
    return Check("traffic_integrity", True, f"gates passed: {', '.join(ran)}; {srm_text}")


def _gate_summary(name: str, gate: dict[str, Any]) -> str:
    if gate.get("detail"):
        return f"{name}: {gate['detail']}"
    failed = [
        c["name"]
        for c in gate.get("checks", [])
        if not c["passed"] and c.get("severity", "error") == "error"
    ]
    return f"{name}: failed check(s) {', '.join(failed)}"


def _rerun_reason(gates: dict[str, dict[str, Any] | None]) -> str:
    """Which gate failed and its numbers, so the first sentence already says what to fix."""
    summaries = [_gate_summary(name, gates[name] or {}) for name in failed_gates(gates)]
    return "Not analysed because a validity gate failed. " + "; ".join(summaries) + "."


def _effect(comparison: dict[str, Any], direction: str) -> tuple[float, float, float]:
    """(estimate, worst CI end, best CI end) signed so that 'good' is positive."""
    sign = 1.0 if direction == "increase" else -1.0
    low, high = comparison["ci"]
    ends = sorted((sign * low, sign * high))
    return sign * comparison["absolute"], ends[0], ends[1]


def primary_checks(config: ExperimentConfig, metric: dict[str, Any], arm: str) -> list[Check]:
    comparison = metric["comparisons"][arm]
    kind = metric["type"]
    direction = config.hypothesis.direction
    estimate, worst, best = _effect(comparison, direction)
    low, high = comparison["ci"]
    interval = f"95% CI {fmt(low, kind)} to {fmt(high, kind)}"
    name = config.primary
    min_lift = config.decision.min_lift
    proven, evidence = _significance(config, comparison, worst > 0)
    return [
        Check(
            "positive_lift_interval",
            proven,
            f"{name} {arm}: {fmt(comparison['absolute'], kind)} ({interval}) "
            + ("excludes zero in the intended direction" if worst > 0 else "includes zero or harm")
            + evidence,
            metric=name,
            arm=arm,
            observed=comparison["absolute"],
            bound=low if direction == "increase" else high,
        ),
        Check(
            "observed_lift_threshold",
            estimate >= min_lift,
            f"{name} {arm}: observed {fmt(comparison['absolute'], kind)} vs required "
            f"{fmt(min_lift if direction == 'increase' else -min_lift, kind)} (min_lift)",
            metric=name,
            arm=arm,
            observed=comparison["absolute"],
            budget=min_lift,
            budget_kind="min_lift",
        ),
        Check(
            "primary_not_harmed",
            best >= 0,
            f"{name} {arm}: "
            + ("the interval lies wholly on the harmful side" if best < 0 else "no proven harm"),
            metric=name,
            arm=arm,
            observed=comparison["absolute"],
        ),
    ]


def _significance(
    config: ExperimentConfig, comparison: dict[str, Any], interval_ok: bool
) -> tuple[bool, str]:
    """Is the primary effect proven, given the multiple-testing and sequential settings?

    One treatment arm, fixed horizon: the interval excluding zero is the test. Several arms:
    the Holm/BH-adjusted p-value must also be below alpha. A declared sequential rule: the
    z statistic must also cross this look's boundary in the intended direction.
    """
    proven, notes = interval_ok, []
    correction = comparison.get("correction")
    if correction and correction["family"] > 1 and correction["method"] != "none":
        adjusted = comparison["p_value_adjusted"]
        proven = proven and adjusted < config.decision.alpha
        notes.append(
            f"p = {comparison['p_value']:.3g} raw, {adjusted:.3g} {correction['method']}-adjusted "
            f"across {correction['family']} arms"
        )
    sequential = comparison.get("sequential")
    if sequential:
        sign = 1.0 if config.hypothesis.direction == "increase" else -1.0
        boundary = sequential["boundary"]
        crossed = boundary is not None and sign * sequential["z"] >= boundary
        proven = proven and crossed
        shown = "none yet" if boundary is None else f"{boundary:.3f}"
        notes.append(
            f"look {sequential['look']}/{sequential['planned_looks']}: z = {sequential['z']:.2f} "
            f"vs O'Brien-Fleming boundary {shown}"
        )
    return proven, "".join(f"; {n}" for n in notes)


def _one_sided_bound(
    comparison: dict[str, Any], relative: bool, harmful_up: bool, alpha: float
) -> float:
    """The (1 - alpha) one-sided bound on harm: estimate +/- z_{1-alpha} * SE."""
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha))
    if relative:
        low, high = comparison["relative_ci"]
        se = (high - low) / (2 * float(norm.ppf(1 - alpha / 2)))
        estimate = comparison["relative"]
    else:
        se, estimate = comparison["se"], comparison["absolute"]
    return estimate + z * se if harmful_up else estimate - z * se


def guardrail_check(
    config: ExperimentConfig, name: str, guardrail: Guardrail, metric: dict[str, Any], arm: str
) -> Check:
    comparison = metric["comparisons"][arm]
    relative = guardrail.relative
    kind = "relative" if relative else metric["type"]
    observed = comparison["relative"] if relative else comparison["absolute"]
    if observed is None:
        return Check(
            f"guardrail:{name}",
            False,
            f"{name} {arm}: relative change undefined (control is 0)",
            metric=name,
            arm=arm,
        )
    harmful_up = guardrail.harmful_direction == "increase"
    if guardrail.evidence == "interval":
        bound = _one_sided_bound(comparison, relative, harmful_up, config.decision.alpha)
        evidence = f"one-sided {1 - config.decision.alpha:.0%} bound"
    else:
        bound = observed
        evidence = "point estimate"
    harm = bound if harmful_up else -bound
    passed = harm <= guardrail.budget
    limit = guardrail.budget if harmful_up else -guardrail.budget
    return Check(
        f"guardrail:{name}",
        passed,
        f"{name} {arm}: observed {fmt(observed, kind)}, {evidence} {fmt(bound, kind)}, budget "
        f"{fmt(limit, kind)} ({guardrail.budget_kind})",
        metric=name,
        arm=arm,
        observed=observed,
        bound=bound,
        budget=guardrail.budget,
        budget_kind=guardrail.budget_kind,
    )


def _missing(name: str, arm: str) -> Check:
    return Check(
        f"guardrail:{name}",
        False,
        f"{name} {arm}: no comparison (no data in an arm)",
        metric=name,
        arm=arm,
    )


def decide(
    config: ExperimentConfig,
    run_date: date,
    gates: dict[str, dict[str, Any] | None],
    metrics: dict[str, dict[str, Any]],
) -> Decision:
    status = "interim" if run_date < config.end else "final"
    integrity = traffic_integrity(gates)
    if not integrity.passed:
        return Decision("RERUN", _rerun_reason(gates), status, (integrity,))
    per_arm = {arm: _arm_checks(config, metrics, arm) for arm in config.treatments}
    checks = (integrity,) + tuple(c for arm_checks in per_arm.values() for c in arm_checks)
    early = _sequential_early_decision(config, per_arm, metrics, status, checks)
    if early is not None:
        return early
    if status == "interim":
        return Decision(
            "CONTINUE",
            f"Interim readout on {run_date} before the planned end {config.end}: no launch call "
            "yet; the estimates below are provisional.",
            status,
            checks,
        )
    harmed = {
        arm: [
            c
            for c in cs
            if not c.passed and c.name.startswith(("guardrail:", "primary_not_harmed"))
        ]
        for arm, cs in per_arm.items()
    }
    if any(harmed.values()):
        arm, failures = next((a, f) for a, f in harmed.items() if f)
        names = ", ".join(c.metric or c.name for c in failures)
        return Decision("STOP", f"{arm}: {names} breached its limit; roll back.", status, checks)
    winners = [arm for arm, cs in per_arm.items() if all(c.passed for c in cs)]
    if winners:
        arm = max(winners, key=lambda a: _primary_estimate(metrics, config, a))
        return Decision("SHIP", _ship_reason(config, metrics, arm), status, checks)
    return Decision(
        "ITERATE",
        "Valid and safe, but the primary effect is not proven or is below min_lift.",
        status,
        checks,
    )


def _sequential_early_decision(
    config: ExperimentConfig,
    per_arm: dict[str, list[Check]],
    metrics: dict[str, dict[str, Any]],
    status: str,
    checks: tuple[Check, ...],
) -> Decision | None:
    """An interim SHIP/STOP, only under a pre-declared sequential rule whose boundary is crossed.

    SHIP: some arm passes every launch check (its primary crossed the boundary in the intended
    direction, guardrails proven within budget). STOP: some arm's primary crossed the boundary
    on the harmful side. Anything else stays CONTINUE.
    """
    if status != "interim" or config.analysis.sequential == "none":
        return None
    sign = 1.0 if config.hypothesis.direction == "increase" else -1.0
    comparisons = metrics.get(config.primary, {}).get("comparisons", {})
    for arm, comparison in comparisons.items():
        sequential = comparison.get("sequential") or {}
        boundary = sequential.get("boundary")
        if boundary is not None and -sign * sequential["z"] >= boundary:
            return Decision(
                "STOP",
                f"{arm}: {config.primary} crossed the sequential boundary on the harmful side at "
                f"look {sequential['look']} of {sequential['planned_looks']} (z = "
                f"{sequential['z']:.2f}, boundary {boundary:.2f}); roll back.",
                status,
                checks,
            )
    winners = [arm for arm, cs in per_arm.items() if all(c.passed for c in cs)]
    if not winners:
        return None
    arm = max(winners, key=lambda a: _primary_estimate(metrics, config, a))
    look = comparisons[arm]["sequential"]
    return Decision(
        "SHIP",
        f"Early stop at interim look {look['look']} of {look['planned_looks']} under the "
        f"pre-declared O'Brien-Fleming-type rule: " + _ship_reason(config, metrics, arm),
        status,
        checks,
    )


def _arm_checks(
    config: ExperimentConfig, metrics: dict[str, dict[str, Any]], arm: str
) -> list[Check]:
    primary = metrics.get(config.primary, {})
    if arm not in primary.get("comparisons", {}):
        checks = [
            Check(
                "positive_lift_interval",
                False,
                f"{config.primary} {arm}: no comparison (no data)",
                metric=config.primary,
                arm=arm,
            )
        ]
    else:
        checks = primary_checks(config, primary, arm)
    for name, guardrail in config.guardrails.items():
        metric = metrics.get(name, {})
        if arm not in metric.get("comparisons", {}):
            checks.append(_missing(name, arm))
        else:
            checks.append(guardrail_check(config, name, guardrail, metric, arm))
    return checks


def _primary_estimate(
    metrics: dict[str, dict[str, Any]], config: ExperimentConfig, arm: str
) -> float:
    sign = 1 if config.hypothesis.direction == "increase" else -1
    return sign * metrics[config.primary]["comparisons"][arm]["absolute"]


def _ship_reason(config: ExperimentConfig, metrics: dict[str, dict[str, Any]], arm: str) -> str:
    metric = metrics[config.primary]
    comparison = metric["comparisons"][arm]
    kind = metric["type"]
    low, high = comparison["ci"]
    guardrails = " and every guardrail is within budget" if config.guardrails else ""
    return (
        f"{arm}: {config.primary} moved {fmt(comparison['absolute'], kind)} (95% CI "
        f"{fmt(low, kind)} to {fmt(high, kind)}), at least the required "
        f"{fmt(config.decision.min_lift, kind).lstrip('+')}{guardrails}."
    )
