"""Render the decision brief (HTML and plain text) from a run's `results` dict.

The brief is what stakeholders read instead of Airflow, so it leads with the decision, then
shows why the data can be trusted (the gates) before any effect estimate. Numbers are formatted
here, once, so the HTML and the text versions can never disagree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES_ENV = "AB_PIPELINE_TEMPLATES"
DEFAULT_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
HTML_TEMPLATE = "brief.html.j2"
TEXT_TEMPLATE = "brief.txt.j2"
MISSING = "—"

GATE_TITLES = {
    "data_quality": "Data quality",
    "srm": "Sample ratio (SRM)",
    "receipt": "Receipt (same system in every arm)",
}

DECISIONS = {
    "SHIP": ("#1a7f37", "Every launch check passed: roll the change out."),
    "ITERATE": ("#9a6700", "Valid and safe, but the effect is not proven or too small to ship."),
    "STOP": (
        "#cf222e",
        "A guardrail was breached or the primary metric moved the wrong way: roll back.",
    ),
    "RERUN": (
        "#8250df",
        "A validity gate failed, so nothing was analysed: fix the data and re-run.",
    ),
    "CONTINUE": ("#0969da", "Interim look: keep the experiment running; no launch call yet."),
}

BUDGET_LABELS = {
    "max_increase": "max increase",
    "max_decrease": "max decrease",
    "max_relative_increase": "max relative increase",
    "max_relative_decrease": "max relative decrease",
}


@dataclass(frozen=True)
class RenderedBrief:
    subject: str
    html: str
    text: str


def render_brief(results: dict[str, Any], templates_dir: Path | None = None) -> RenderedBrief:
    """Render subject, HTML and text of the brief. A missing contract key raises."""
    env = _environment(templates_dir or Path(os.environ.get(TEMPLATES_ENV, DEFAULT_TEMPLATES_DIR)))
    subject = brief_subject(results)
    context = {"r": results, "view": build_view(results), "subject": subject}
    return RenderedBrief(
        subject=subject,
        html=env.get_template(HTML_TEMPLATE).render(context),
        text=env.get_template(TEXT_TEMPLATE).render(context),
    )


def write_brief(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write brief.html and brief.txt into `out_dir`; return their paths by kind."""
    brief = render_brief(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / "brief.html", "text": out_dir / "brief.txt"}
    paths["html"].write_text(brief.html, encoding="utf-8")
    paths["text"].write_text(brief.text, encoding="utf-8")
    return paths


def brief_subject(results: Mapping[str, Any]) -> str:
    subject = (
        f"[ab-pipeline] {results['experiment']}: {results['decision']} "
        f"({results['status']}, {results['run_date']})"
    )
    # A header must be one line: never let a stray newline in a value reach the mail headers.
    return re.sub(r"\s+", " ", subject).strip()


def _environment(templates_dir: Path) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(templates_dir)),
        # Escape in *.html.j2 only: the text brief must show "<" and "&" as they are.
        autoescape=select_autoescape(enabled_extensions=("html.j2", "html"), default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        thousands=fmt_count,
        pct=fmt_pct,
        pp=fmt_pp,
        num=fmt_num,
        pvalue=fmt_p,
        passfail=fmt_passfail,
    )
    return env


# ---- number formatting ------------------------------------------------------------------------


def fmt_count(n: Any) -> str:
    return MISSING if n is None else f"{int(n):,}"


def fmt_pct(x: float | None, digits: int = 1, signed: bool = False) -> str:
    if x is None:
        return MISSING
    return f"{_clean(x * 100, digits):{'+' if signed else ''}.{digits}f}%"


def fmt_pp(x: float | None, digits: int = 1, signed: bool = True) -> str:
    """A difference of proportions, in percentage points: 0.04 -> '+4.0 pp'."""
    if x is None:
        return MISSING
    return f"{_clean(x * 100, digits):{'+' if signed else ''}.{digits}f} pp"


def fmt_num(x: float | None, signed: bool = False, digits: int | None = None) -> str:
    """A value in the metric's own unit; precision suits its size unless `digits` is given."""
    if x is None:
        return MISSING
    sign = "+" if signed else ""
    if digits is None:
        digits = 0 if float(x).is_integer() else _digits_for(x)
    return f"{_clean(x, digits):{sign},.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return MISSING
    return f"{p:.1e}" if p < 1e-4 else f"{p:.3g}"


def fmt_passfail(passed: bool | None) -> str:
    return "NOT RUN" if passed is None else "PASS" if passed else "FAIL"


def fmt_value(x: float | None, kind: str) -> str:
    return fmt_pct(x) if kind == "proportion" else fmt_num(x)


def fmt_diff(x: float | None, kind: str, digits: int | None = None) -> str:
    """Treatment minus control: pp for proportions (1 decimal by default), else metric units."""
    if kind == "proportion":
        return fmt_pp(x, 1 if digits is None else digits)
    return fmt_num(x, signed=True, digits=digits)


def fmt_interval(ci: Iterable[float] | None, kind: str, digits: int | None = None) -> str:
    if not ci:
        return MISSING
    low, high = ci
    return f"[{fmt_diff(low, kind, digits)}, {fmt_diff(high, kind, digits)}]"


def fmt_rel_interval(ci: Iterable[float] | None) -> str:
    if not ci:
        return MISSING
    low, high = ci
    return f"[{fmt_pct(low, signed=True)}, {fmt_pct(high, signed=True)}]"


def _digits_for(scale: float | None) -> int:
    """Decimals that show a number of this size without false precision."""
    scale = abs(scale or 0.0)
    return 0 if scale >= 100 else 1 if scale >= 10 else 2 if scale >= 1 else 3


def _clean(value: float, digits: int) -> float:
    # Rounds away "-0.0" so a null effect never prints with a minus sign.
    return round(value, digits) + 0.0


# ---- view model -------------------------------------------------------------------------------


def build_view(results: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the templates show that needs computing or formatting."""
    decision = results["decision"]
    color, meaning = DECISIONS.get(decision, ("#57606a", ""))
    rerun = decision == "RERUN"
    primary = None if rerun else _primary_view(results)
    return {
        "decision": {"label": decision, "color": color, "meaning": meaning},
        "interim": results["status"] == "interim",
        "rerun": rerun,
        "failures": _failure_lines(results),
        "gates": _gates_view(results["gates"]),
        "primary": primary,
        "others": [] if rerun else _other_metrics(results),
        "guardrails": [] if rerun else _guardrail_rows(results),
        "plan": _plan_view(results, primary),
        "ci_label": f"{results.get('ci_level', 0.95):.0%} interval",
    }


def _gate_failures(results: Mapping[str, Any]) -> list[str]:
    if results.get("gate_failures"):
        return list(results["gate_failures"])
    gates = results["gates"]
    return [name for name, gate in gates.items() if gate is not None and not gate["passed"]]


def _failure_lines(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """One line per failed gate: its title and what, concretely, failed."""
    lines = []
    for name in _gate_failures(results):
        gate = results["gates"].get(name) or {}
        detail = gate.get("detail") or "; ".join(
            f"{check['name']}: {check['detail']}"
            for check in gate.get("checks", [])
            if not check["passed"]
        )
        lines.append({"title": GATE_TITLES.get(name, name), "detail": detail})
    return lines


def _gates_view(gates: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in [*GATE_TITLES, *(g for g in gates if g not in GATE_TITLES)]:
        gate = gates.get(name)
        rows.append(
            {
                "name": name,
                "title": GATE_TITLES.get(name, name),
                "state": fmt_passfail(None if gate is None else gate["passed"]),
                "gate": gate,
                "srm_arms": _srm_arms(gate) if name == "srm" and gate else [],
            }
        )
    return rows


def _srm_arms(gate: Mapping[str, Any]) -> list[dict[str, str]]:
    counts, expected = gate["counts"], gate["expected"]
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


def _primary_name(results: Mapping[str, Any]) -> str | None:
    metrics = results["metrics"]
    for name, metric in metrics.items():
        if metric["role"] == "primary":
            return name
    metric = results["hypothesis"]["metric"]
    return metric if metric in metrics else None


def _primary_view(results: Mapping[str, Any]) -> dict[str, Any] | None:
    name = _primary_name(results)
    if name is None:
        return None
    metric = results["metrics"][name]
    control = results["control"]
    rows = [
        _comparison_row(metric, control, arm, comparison)
        for arm, comparison in metric["comparisons"].items()
    ]
    return {"name": name, "type": metric["type"], "rows": rows, "units": _min_units(metric)}


def _comparison_row(
    metric: Mapping[str, Any], control: str, arm: str, comparison: Mapping[str, Any]
) -> dict[str, Any]:
    kind = metric["type"]
    # One precision per comparison (set by its SE), so a point and its interval line up.
    digits = None if kind == "proportion" else _digits_for(comparison["se"])
    return {
        "arm": arm,
        "control": control,
        "sentence": _plain_sentence(metric, metric["arms"][arm], metric["arms"][control]),
        "absolute": fmt_diff(comparison["absolute"], kind, digits),
        "absolute_ci": fmt_interval(comparison["ci"], kind, digits),
        "relative": fmt_pct(comparison.get("relative"), signed=True),
        "relative_ci": fmt_rel_interval(comparison.get("relative_ci")),
        "p_value": fmt_p(comparison["p_value"]),
        "se": fmt_pp(comparison["se"], 2, signed=False)
        if kind == "proportion"
        else fmt_num(comparison["se"], digits=digits),
        "method": comparison["method"],
    }


def _plain_sentence(
    metric: Mapping[str, Any], treated: Mapping[str, Any], control: Mapping[str, Any]
) -> str:
    """'840 of 2,000 customer_accounts (42.0%) vs 760 of 2,000 (38.0%)', or the like."""
    kind, units = metric["type"], _plural(metric.get("unit_label") or "unit")
    if kind == "proportion":
        return (
            f"{fmt_count(treated['successes'])} of {fmt_count(treated['units'])} {units} "
            f"({fmt_pct(treated['value'])}) vs {fmt_count(control['successes'])} of "
            f"{fmt_count(control['units'])} ({fmt_pct(control['value'])})"
        )
    if kind == "quantile":
        return (
            f"{fmt_num(treated['value'])} over {fmt_count(treated['events'])} events vs "
            f"{fmt_num(control['value'])} over {fmt_count(control['events'])} events"
        )
    return (
        f"an average of {fmt_num(treated['value'])} over {fmt_count(treated['units'])} {units} "
        f"vs {fmt_num(control['value'])} over {fmt_count(control['units'])}"
    )


def _plural(label: str) -> str:
    return label if label.endswith("s") else f"{label}s"


def _min_units(metric: Mapping[str, Any]) -> int | None:
    units = [arm["units"] for arm in metric["arms"].values() if arm.get("units") is not None]
    return min(units) if units else None


def _other_metrics(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    control = results["control"]
    rows = []
    for name, metric in results["metrics"].items():
        if metric["role"] == "primary":
            continue
        kind = metric["type"]
        for arm, comparison in metric["comparisons"].items():
            digits = 2 if kind == "proportion" else _digits_for(comparison["se"])
            rows.append(
                {
                    "metric": name,
                    "role": metric["role"],
                    "arm": arm,
                    "treated": fmt_value(metric["arms"][arm]["value"], kind),
                    "control": fmt_value(metric["arms"][control]["value"], kind),
                    "difference": fmt_diff(comparison["absolute"], kind, digits),
                    "ci": fmt_interval(comparison["ci"], kind, digits),
                }
            )
    return rows


def _guardrail_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    metrics = results["metrics"]
    rows = []
    for check in results["checks"]:
        if not check["name"].startswith("guardrail:"):
            continue
        metric = check.get("metric") or check["name"].split(":", 1)[1]
        entry = metrics.get(metric, {})
        kind = entry.get("type", "mean")
        budget_kind = check.get("budget_kind") or ""
        # Precision follows the comparison's SE (or the budget's size when there is none).
        se = entry.get("comparisons", {}).get(check.get("arm"), {}).get("se")
        scale = se if se is not None else check.get("budget")
        show = partial(
            _budget_value, kind=kind, relative="relative" in budget_kind, digits=_digits_for(scale)
        )
        rows.append(
            {
                "metric": metric,
                "arm": check.get("arm") or MISSING,
                "observed": show(check.get("observed")),
                "bound": show(check.get("bound")),
                "budget": show(check.get("budget"), signed=False),
                "budget_kind": BUDGET_LABELS.get(budget_kind, budget_kind or MISSING),
                "state": fmt_passfail(check["passed"]),
            }
        )
    return rows


def _budget_value(
    x: float | None, *, kind: str, relative: bool, digits: int, signed: bool = True
) -> str:
    # Relative budgets are fractions of control; absolute ones are in the metric's own unit.
    if relative:
        return fmt_pct(x, signed=signed)
    if kind == "proportion":
        return fmt_pp(x, 2, signed)
    return fmt_num(x, signed, digits)


def _plan_view(
    results: Mapping[str, Any], primary: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    plan = results["plan"]
    if plan is None:
        return None
    proportion = primary is None or primary["type"] == "proportion"
    required = plan["required_per_arm"]
    units = primary["units"] if primary else None
    return {
        "baseline": fmt_pct(plan["baseline"]) if proportion else fmt_num(plan["baseline"]),
        "mde": fmt_pp(plan["mde"], signed=False) if proportion else fmt_num(plan["mde"]),
        "alpha": f"{plan['alpha']:g}",
        "power": fmt_pct(plan["power"], digits=0),
        "required": fmt_count(required),
        "formula": plan["formula"],
        "enrolled": fmt_count(units) if units is not None else None,
        "progress": fmt_pct(units / required, digits=0) if units is not None and required else None,
    }
