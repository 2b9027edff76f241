"""Sample-ratio-mismatch gate: a hard gate, not a warning.

Counts enrolled units per arm in the units table (after exclusions) and tests them against the
planned allocation with a chi-square goodness-of-fit test; fails below `decision.srm_alpha`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ab_pipeline.core.config import ExperimentConfig
from ab_pipeline.stats.statistics import srm_test
from ab_pipeline.warehouse import Warehouse, quote_ident

if TYPE_CHECKING:
    from ab_pipeline.gates.base import GateContext, GateResult

# The brief's one plain-language line on the gate (the email has no tooltips).
EXPLAINED = (
    "Sample ratio mismatch (SRM): arms much larger or smaller than planned mean assignment or "
    "logging is broken. The chi-square test says how surprising the counts are if the split "
    "were as planned."
)


def arm_counts(warehouse: Warehouse, units_table: str) -> dict[str, int]:
    rows = warehouse.query(
        f"SELECT arm, COUNT(*) AS units FROM {quote_ident(units_table)} GROUP BY arm ORDER BY arm"
    )
    return {str(row["arm"]): int(row["units"]) for row in rows}


def evaluate_srm(counts: dict[str, int], config: ExperimentConfig) -> dict[str, Any]:
    """The SRM gate outcome as it appears in results.json."""
    alpha = config.decision.srm_alpha
    planned = {arm: counts.get(arm, 0) for arm in config.arms}
    if sum(planned.values()) == 0:
        return {
            "passed": False,
            "p_value": None,
            "statistic": None,
            "alpha": alpha,
            "counts": planned,
            "expected": dict(config.arms),
            "detail": _no_units_detail(counts, config),
        }
    result = srm_test(planned, config.arms)
    passed = result.p_value >= alpha
    verdict = "consistent with" if passed else "does not match"
    return {
        "passed": passed,
        "p_value": result.p_value,
        "statistic": result.statistic,
        "alpha": alpha,
        "counts": result.counts,
        "expected": result.expected,
        "detail": (
            f"arm counts {', '.join(f'{a} {n:,}' for a, n in result.counts.items())} "
            f"{verdict} the planned split (chi-square {result.statistic:.2f}, "
            f"p = {result.p_value:.3g}, threshold {alpha:g})"
        ),
    }


def _no_units_detail(counts: dict[str, int], config: ExperimentConfig) -> str:
    """Nothing to test; if units were enrolled in arms the config does not name (an integer
    arm, a renamed arm), say which, since that is what to fix."""
    others = {arm: n for arm, n in counts.items() if arm not in config.arms and n}
    if not others:
        return "no enrolled units: nothing to test"
    found = ", ".join(f"{arm!r} ({n:,})" for arm, n in list(others.items())[:10])
    more = f" and {len(others) - 10:,} more" if len(others) > 10 else ""
    return (
        f"no enrolled unit is in a configured arm ({', '.join(config.arms)}); the units "
        f"table has arms {found}{more}"
    )


def run_srm_gate(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str
) -> dict[str, Any]:
    from ab_pipeline.gates.srm_diagnosis import srm_diagnosis

    outcome = evaluate_srm(arm_counts(warehouse, units_table), config)
    # Always the multiple-exposure rate; the by-day/by-property breakdown when the gate failed.
    outcome["diagnosis"] = srm_diagnosis(warehouse, config, units_table, not outcome["passed"])
    return outcome


def run(context: GateContext, units_table: str) -> GateResult:
    """The gate as the registry runs it (ab_pipeline.gates.registry)."""
    return run_srm_gate(context.warehouse, context.config, units_table)


# ---- the brief ---------------------------------------------------------------------------------


def brief_view(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """Arm counts against the plan and the breakdown (templates/gates/srm.*.j2)."""
    return {
        "arms": _arm_rows(outcome),
        "diagnosis": _diagnosis_view(outcome),
        "explain": EXPLAINED,
    }


def _arm_rows(outcome: Mapping[str, Any]) -> list[dict[str, str]]:
    from ab_pipeline.core.formatting import MISSING, fmt_count, fmt_pct

    counts, expected = outcome["counts"], outcome["expected"]
    total = sum(counts.values())
    return [
        {
            "arm": arm,
            "count": fmt_count(n),
            "observed": fmt_pct(n / total) if total else MISSING,
            "expected": fmt_pct(expected.get(arm)),
        }
        for arm, n in counts.items()
    ]


def _diagnosis_view(outcome: Mapping[str, Any]) -> dict[str, Any] | None:
    """The breakdown (`gates.srm.diagnosis`) as rows; suspicious slices first by p-value."""
    from ab_pipeline.core.formatting import fmt_count, fmt_p, fmt_pct

    diagnosis = outcome.get("diagnosis")
    if not diagnosis:
        return None
    alpha = outcome.get("alpha") or 0.001

    def row(label: Any, entry: Mapping[str, Any]) -> dict[str, Any]:
        p = entry.get("p_value")
        counts = entry.get("counts") or {}
        return {
            "label": str(label),
            "counts": ", ".join(f"{arm} {fmt_count(n)}" for arm, n in counts.items()),
            "p_value": fmt_p(p),
            "suspicious": p is not None and p < alpha,
        }

    def rate(name: str, digits: int) -> str | None:
        value = diagnosis.get(name)
        return None if value is None else fmt_pct(value, digits)

    by_property = {
        str(name): sorted(
            (row(s.get("value"), s) for s in slices),
            key=lambda r: (not r["suspicious"], r["label"]),
        )[:8]
        for name, slices in (diagnosis.get("by_property") or {}).items()
    }
    return {
        "by_day": [row(d.get("day"), d) for d in diagnosis.get("by_day") or []],
        "by_property": by_property,
        "multiple_exposure_rate": rate("multiple_exposure_rate", 2),
        "repeat_exposure_rate": rate("repeat_exposure_rate", 1),
    }
