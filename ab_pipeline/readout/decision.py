"""The decision rule, written down before the data arrives (docs/statistics.md, "How the
decision is made").

RERUN when a validity gate failed; CONTINUE before the planned end; STOP when harm is shown (the
primary significantly moved the wrong way, or a guardrail is harmed); SHIP when every launch
check passes; ITERATE otherwise (valid, nothing harmed, no launch). Missing data is never harm:
a comparison that cannot be computed is "not evaluable", which blocks a launch only. Every check
behind the decision is returned with its numbers and its `outcome`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from ab_pipeline.core.config import ExperimentConfig, Guardrail, format_duration
from ab_pipeline.core.formatting import fmt_pct
from ab_pipeline.gates import registry as gate_registry
from ab_pipeline.metrics import text_kind


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
    # pass, harmed, not_shown_within_budget, not_evaluable, not_proven, below_min_lift
    outcome: str | None = None
    units_needed_per_arm: int | None = None


@dataclass(frozen=True)
class Decision:
    decision: str
    reason: str
    status: str
    checks: tuple[Check, ...]

    def checks_as_dicts(self) -> list[dict[str, Any]]:
        return [asdict(check) for check in self.checks]


def fmt(value: float, kind: str) -> str:
    """Numbers the way the brief says them: pp for proportion differences; `relative`: a
    change as a share of control."""
    if kind == "relative":
        return fmt_pct(value, signed=True)
    return text_kind(kind).format_check(value)


def failed_gates(gates: dict[str, dict[str, Any] | None]) -> list[str]:
    """The registered gates that failed, in the registry's order."""
    return [
        name for name in gate_registry.names() if (gate := gates.get(name)) and not gate["passed"]
    ]


def traffic_integrity(gates: dict[str, dict[str, Any] | None]) -> Check:
    failed = failed_gates(gates)
    srm = gates.get("srm")
    srm_text = (
        f"SRM chi-square p = {srm['p_value']:.3g} (threshold {srm['alpha']:g})"
        if srm and srm.get("p_value") is not None
        else "SRM not computed"
    )
    ran = [name for name in gate_registry.names() if gates.get(name) is not None]
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
            outcome="pass" if proven else "not_proven",
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
            outcome="pass" if estimate >= min_lift else "below_min_lift",
        ),
        Check(
            "primary_not_harmed",
            best >= 0,
            f"{name} {arm}: "
            + (
                "harmed: the interval lies wholly on the harmful side"
                if best < 0
                else "no proven harm"
            ),
            metric=name,
            arm=arm,
            observed=comparison["absolute"],
            outcome="harmed" if best < 0 else "pass",
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


Scale = tuple[float, float, tuple[float, float], Callable[[float], float]]


def _on_scale(comparison: dict[str, Any], relative: bool, alpha: float) -> Scale | None:
    """(estimate, SE, two-sided interval, map from a budget to this scale) where intervals are
    symmetric: the metric's own scale, or log(1 + change) for relative budgets (ratio intervals
    are symmetric on the log scale; a linear interval reaching -100% falls back to linear)."""
    from scipy.stats import norm

    z2 = float(norm.ppf(1 - alpha / 2))
    if not relative:
        low, high = comparison["ci"]
        # A discrete quantile reports no SE: its interval's half-width stands in for z * SE.
        se = comparison["se"] if comparison.get("se") is not None else (high - low) / (2 * z2)
        return comparison["absolute"], se, (low, high), lambda x: x
    low, high = comparison["relative_ci"] or (None, None)
    if low is None or high is None:
        return None
    if low <= -1:
        return comparison["relative"], (high - low) / (2 * z2), (low, high), lambda x: x
    ends = (math.log1p(low), math.log1p(high))
    se = (ends[1] - ends[0]) / (2 * z2)
    return math.log1p(comparison["relative"]), se, ends, math.log1p


def _from_scale(value: float, relative: bool, log: bool) -> float:
    return math.expm1(value) if relative and log else value


@dataclass(frozen=True)
class GuardrailVerdict:
    """One guardrail, judged: `outcome` is pass, harmed, not_shown_within_budget."""

    outcome: str
    observed: float
    bound: float
    significant_harm: bool
    units_needed_per_arm: int | None


def judge_guardrail(
    comparison: dict[str, Any],
    guardrail: Guardrail,
    alpha: float,
    units_per_arm: float | None,
) -> GuardrailVerdict | None:
    """The rule of docs/statistics.md "How the decision is made", on one comparison.

    harmed: the estimate is beyond the budget, or (interval evidence) the two-sided interval
    excludes zero on the harmful side AND the one-sided bound is beyond the budget.
    not_shown_within_budget (interval evidence only): not harmed, but the one-sided bound is
    beyond the budget; `units_needed_per_arm` = n (z se / (budget - estimate))^2 on the same
    scale, the sample at which today's SE would put the bound on the budget.
    None when the comparison cannot be judged (relative change with a zero control).
    """
    from scipy.stats import norm

    relative = guardrail.relative
    if relative and comparison.get("relative") is None:
        return None
    scale = _on_scale(comparison, relative, alpha)
    if scale is None:
        return None
    estimate, se, (low, high), to_scale = scale
    log = to_scale is math.log1p
    sign = 1.0 if guardrail.harmful_direction == "increase" else -1.0
    limit = to_scale(sign * guardrail.budget)  # the budget as a signed value on the scale
    z = float(norm.ppf(1 - alpha))
    bound = estimate + sign * z * se
    harm, harm_bound, budget = sign * estimate, sign * bound, sign * limit
    significant = (low > 0) if sign > 0 else (high < 0)
    interval = guardrail.evidence == "interval"
    if not interval:
        bound, harm_bound = estimate, harm
    harmed = harm > budget or (interval and significant and harm_bound > budget)
    not_shown = not harmed and harm_bound > budget
    needed = None
    if not_shown and units_per_arm and budget > harm:
        needed = math.ceil(units_per_arm * (z * se / (budget - harm)) ** 2)
    outcome = "harmed" if harmed else "not_shown_within_budget" if not_shown else "pass"
    return GuardrailVerdict(
        outcome,
        _from_scale(estimate, relative, log),
        _from_scale(bound, relative, log),
        significant,
        needed,
    )


def _units_per_arm(metric: dict[str, Any], control: str, arm: str) -> float | None:
    """The mean of the two arms' units: the n the SE was computed at (None when not reported)."""
    arms = metric.get("arms") or {}
    units = [arms.get(a, {}).get("units") for a in (control, arm)]
    return None if None in units else sum(units) / 2


def guardrail_check(
    config: ExperimentConfig, name: str, guardrail: Guardrail, metric: dict[str, Any], arm: str
) -> Check:
    comparison = metric["comparisons"][arm]
    kind = "relative" if guardrail.relative else metric["type"]
    alpha = config.decision.alpha
    units = _units_per_arm(metric, config.control, arm)
    verdict = judge_guardrail(comparison, guardrail, alpha, units)
    if verdict is None:
        return Check(
            f"guardrail:{name}",
            False,
            f"{name} {arm}: not evaluable: relative change undefined (control is 0)",
            metric=name,
            arm=arm,
            outcome="not_evaluable",
        )
    harmful_up = guardrail.harmful_direction == "increase"
    limit = guardrail.budget if harmful_up else -guardrail.budget
    evidence = (
        f"one-sided {1 - alpha:.0%} bound" if guardrail.evidence == "interval" else "point estimate"
    )
    detail = (
        f"{name} {arm}: observed {fmt(verdict.observed, kind)}, {evidence} "
        f"{fmt(verdict.bound, kind)}, budget {fmt(limit, kind)} ({guardrail.budget_kind}): "
        + _verdict_words(verdict, kind, limit)
    )
    return Check(
        f"guardrail:{name}",
        verdict.outcome == "pass",
        detail,
        metric=name,
        arm=arm,
        observed=verdict.observed,
        bound=verdict.bound,
        budget=guardrail.budget,
        budget_kind=guardrail.budget_kind,
        outcome=verdict.outcome,
        units_needed_per_arm=verdict.units_needed_per_arm,
    )


def _verdict_words(verdict: GuardrailVerdict, kind: str, limit: float) -> str:
    if verdict.outcome == "pass":
        return "within budget"
    if verdict.outcome == "harmed":
        beyond = abs(verdict.observed) > abs(limit) and verdict.observed * limit > 0
        return "harmed: " + (
            "the estimate is beyond the budget"
            if beyond
            else "the harm is significant and may exceed the budget"
        )
    return "not shown to be within budget (" + _more_units_text(verdict) + ")"


def _more_units_text(verdict: GuardrailVerdict) -> str:
    if verdict.units_needed_per_arm is None:
        return "more data needed"
    return f"about {verdict.units_needed_per_arm:,} units per arm would settle it"


def _missing(name: str, guardrail: Guardrail, arm: str) -> Check:
    return Check(
        f"guardrail:{name}",
        False,
        f"{name} {arm}: not evaluable: no comparison (no data in an arm)",
        metric=name,
        arm=arm,
        budget=guardrail.budget,
        budget_kind=guardrail.budget_kind,
        outcome="not_evaluable",
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
    per_arm = {arm: _arm_checks(config, metrics, arm, run_date) for arm in config.treatments}
    checks = (integrity,) + tuple(c for arm_checks in per_arm.values() for c in arm_checks)
    early = _sequential_early_decision(config, per_arm, metrics, status, checks)
    if early is not None:
        return early
    if status == "interim":
        return Decision("CONTINUE", _continue_reason(config, run_date, metrics), status, checks)
    harmed = [c for c in checks if c.outcome == "harmed"]
    if harmed:
        return Decision("STOP", _stop_reason(config, metrics, harmed, checks), status, checks)
    winners = [arm for arm, cs in per_arm.items() if all(c.passed for c in cs)]
    if winners:
        arm = max(winners, key=lambda a: _primary_estimate(metrics, config, a))
        return Decision("SHIP", _ship_reason(config, metrics, arm), status, checks)
    return Decision("ITERATE", _iterate_reason(config, metrics, per_arm), status, checks)


def _continue_reason(
    config: ExperimentConfig, run_date: date, metrics: dict[str, dict[str, Any]]
) -> str:
    reason = (
        f"Interim readout on {run_date} before the planned end {config.end}: no launch call "
        "yet; the estimates below are provisional."
    )
    no_comparison = not metrics.get(config.primary, {}).get("comparisons")
    if no_comparison and (note := _window_note(config, run_date)):
        reason = (
            f"Interim readout on {run_date} before the planned end {config.end}: no launch call "
            f"yet, and no comparison: {note}."
        )
    return reason


def _stop_reason(
    config: ExperimentConfig,
    metrics: dict[str, dict[str, Any]],
    harmed: list[Check],
    checks: tuple[Check, ...],
) -> str:
    """Each harm in plain words, then what else blocks a launch; ends with 'roll back'."""
    parts = [_harm_words(config, metrics, c) for c in harmed]
    unsure = [
        _blocker_words(c, metrics, config.control)
        for c in checks
        if c.outcome == "not_shown_within_budget"
    ]
    tail = f" Also, {'; '.join(unsure)}." if unsure else ""
    return "Harm shown: " + "; ".join(parts) + ". Roll back." + tail


def _harm_words(config: ExperimentConfig, metrics: dict[str, dict[str, Any]], check: Check) -> str:
    metric = metrics[check.metric or ""]
    comparison = metric["comparisons"][check.arm]
    if check.name == "primary_not_harmed":
        kind = metric["type"]
        low, high = comparison["ci"]
        return (
            f"{check.arm}: the primary {check.metric} {moved(comparison['absolute'], kind)} "
            f"(95% CI {fmt(low, kind)} to {fmt(high, kind)}), significantly the wrong way"
        )
    guardrail = config.guardrails[check.metric or ""]
    kind = "relative" if guardrail.relative else metric["type"]
    limit = guardrail.budget if guardrail.harmful_direction == "increase" else -guardrail.budget
    return (
        f"{check.arm}: guardrail {check.metric} {moved(check.observed or 0.0, kind)} against a "
        f"budget of {fmt(limit, kind)} ({_harm_basis(check, limit, kind)})"
    )


def _harm_basis(check: Check, limit: float, kind: str) -> str:
    observed = check.observed or 0.0
    if observed * limit > 0 and abs(observed) > abs(limit):
        return "the estimate is beyond the budget"
    bound = "" if check.bound is None else f", its bound reaches {fmt(check.bound, kind)}"
    return "the harm is significant" + bound


def moved(value: float, kind: str) -> str:
    """'fell 0.8 pp', 'rose 12%', 'did not move': a difference said in words."""
    text = fmt(abs(value), kind).lstrip("+")
    if text.strip("0.,% p") == "":
        return "did not move"
    return f"{'rose' if value > 0 else 'fell'} {text}"


def _blocker_words(check: Check, metrics: dict[str, dict[str, Any]], control: str) -> str:
    """Why one check blocks a launch, short (the check's detail has the numbers)."""
    who = f"{check.arm}: {check.metric}"
    if check.outcome == "not_shown_within_budget":
        return f"{who} is not shown to be within its budget{_settle_text(check, metrics, control)}"
    if check.outcome == "not_evaluable":
        return f"{who} could not be evaluated (no comparison)"
    metric = metrics.get(check.metric or "", {})
    comparison = metric.get("comparisons", {}).get(check.arm)
    kind = metric.get("type", "mean")
    if check.outcome == "below_min_lift" and comparison:
        required = (check.budget or 0.0) * (1 if comparison["absolute"] >= 0 else -1)
        return (
            f"{who} moved {fmt(comparison['absolute'], kind)}, less than the required "
            f"{fmt(required, kind)} (min_lift)"
        )
    if comparison:
        low, high = comparison["ci"]
        return (
            f"{who} moved {fmt(comparison['absolute'], kind)} (95% CI {fmt(low, kind)} to "
            f"{fmt(high, kind)}), not proven"
        )
    return f"{who} effect is not proven"


def _settle_text(check: Check, metrics: dict[str, dict[str, Any]], control: str) -> str:
    needed = check.units_needed_per_arm
    if needed is None:
        return ""
    now = _units_per_arm(metrics.get(check.metric or "", {}), control, check.arm or "")
    more = f", {max(needed - round(now), 0):,} more," if now else ""
    return f" (about {needed:,} units per arm{more} would settle it)"


def _iterate_reason(
    config: ExperimentConfig, metrics: dict[str, dict[str, Any]], per_arm: dict[str, list[Check]]
) -> str:
    blockers = []
    for checks in per_arm.values():
        failed = [c for c in checks if not c.passed]
        unproven = any(c.outcome == "not_proven" for c in failed)
        for check in failed:
            if unproven and check.outcome == "below_min_lift":
                continue  # said with the unproven effect, below
            text = _blocker_words(check, metrics, config.control)
            if check.outcome == "not_proven" and any(c.outcome == "below_min_lift" for c in failed):
                kind = metrics.get(check.metric or "", {}).get("type", "mean")
                text += f", and below the required {fmt(config.decision.min_lift, kind)} (min_lift)"
            blockers.append(text)
    return "Valid and nothing harmed, but no launch: " + "; ".join(blockers) + "."


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


def first_comparison_date(config: ExperimentConfig) -> date | None:
    """The readout by which every unit enrolled on the first day has completed the primary's
    window: a unit exposed during day D completes it by D + 1 day + window at the latest, and a
    readout counts data up to the end of its day. None when the primary has no window."""
    window = getattr(config.metrics.get(config.primary), "window", None)
    if window is None:
        return None
    closes = datetime.combine(config.start, time()) + timedelta(days=1) + window
    last_day = closes.date() if closes.time() == time() else closes.date() + timedelta(days=1)
    return last_day - timedelta(days=1)


def _window_note(config: ExperimentConfig, run_date: date) -> str:
    """Why there is no comparison yet, when the primary's window has not closed for anyone."""
    first = first_comparison_date(config)
    window = getattr(config.metrics.get(config.primary), "window", None)
    if first is None or window is None or run_date >= first:
        return ""
    return (
        f"no unit has completed its {format_duration(window)} {config.primary} window yet; the "
        "units enrolled "
        f"on the first day have all completed it by the readout of {first}"
    )


def _arm_checks(
    config: ExperimentConfig, metrics: dict[str, dict[str, Any]], arm: str, run_date: date
) -> list[Check]:
    primary = metrics.get(config.primary, {})
    if arm not in primary.get("comparisons", {}):
        checks = [
            Check(
                "positive_lift_interval",
                False,
                f"{config.primary} {arm}: not evaluable: no comparison (no data)"
                + (f"; {note}" if (note := _window_note(config, run_date)) else ""),
                metric=config.primary,
                arm=arm,
                outcome="not_evaluable",
            )
        ]
    else:
        checks = primary_checks(config, primary, arm)
    for name, guardrail in config.guardrails.items():
        metric = metrics.get(name, {})
        if arm not in metric.get("comparisons", {}):
            checks.append(_missing(name, guardrail, arm))
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
