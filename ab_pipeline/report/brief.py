"""Render the decision brief (HTML and plain text) from a run's `results` dict.

The brief is what stakeholders read instead of Airflow, so it leads with the decision, then
shows why the data can be trusted (the gates) before any effect estimate. Numbers are formatted
here, once, so the HTML and the text versions can never disagree.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from ab_pipeline.core.formatting import MISSING as MISSING
from ab_pipeline.core.formatting import digits_for as _digits_for
from ab_pipeline.core.formatting import fmt_count as fmt_count
from ab_pipeline.core.formatting import fmt_num as fmt_num
from ab_pipeline.core.formatting import fmt_p as fmt_p
from ab_pipeline.core.formatting import fmt_pct as fmt_pct
from ab_pipeline.core.formatting import fmt_pp as fmt_pp
from ab_pipeline.core.paths import data_dir
from ab_pipeline.gates import registry as gate_registry
from ab_pipeline.metrics import text_kind

if TYPE_CHECKING:
    from ab_pipeline.report.charts import Chart, Panel

log = logging.getLogger(__name__)

TEMPLATES_ENV = "AB_PIPELINE_TEMPLATES"
DEFAULT_TEMPLATES_DIR = data_dir("templates")
HTML_TEMPLATE = "brief.html.j2"
TEXT_TEMPLATE = "brief.txt.j2"

DECISIONS = {
    "SHIP": ("#1a7f37", "Every launch check passed: roll the change out."),
    "ITERATE": (
        "#9a6700",
        "Valid and nothing harmed, but no launch: the effect is not proven or too small, or a "
        "guardrail is not yet shown to be within its budget.",
    ),
    "STOP": (
        "#cf222e",
        "Harm was shown (the primary metric moved significantly the wrong way, or a guardrail "
        "is harmed): roll back.",
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

# One plain-language line where a term first appears (the email has no tooltips).
GLOSSARY = {
    "pp": "pp = percentage points, the difference between two percentages: 38% to 42% is +4 pp.",
    "bound": "One-sided bound: the worst difference still plausible at 95% confidence. A "
    "guardrail passes only when even this stays within its budget.",
    "holm": "Holm correction: p-values are raised when several treatment arms are compared, so "
    "the chance of any false win stays at alpha.",
    "novelty": "Novelty: whether the effect fades for units that joined later, as a change that "
    "is merely new wears off.",
}

GUARDRAIL_STATES = {
    "pass": "PASS",
    "harmed": "HARMED",
    "not_shown_within_budget": "NOT SHOWN SAFE",
    "not_evaluable": "NOT EVALUABLE",
}


@dataclass(frozen=True)
class RenderedBrief:
    """`html` is self-contained (charts as data: URIs) for the archive and browsers;
    `email_html` is the same document with charts referenced as `cid:` parts in `images`,
    because mail clients block data: URIs."""

    subject: str
    html: str
    text: str
    email_html: str = ""
    images: tuple[Chart, ...] = field(default_factory=tuple)


def render_brief(
    results: dict[str, Any],
    templates_dir: Path | None = None,
    archive_root: Path | None = None,
    charts: bool = True,
) -> RenderedBrief:
    """Render subject, HTML (archive and email) and text of the brief.

    `archive_root` (`<briefs root>`) lets the brief read earlier readouts of the experiment
    when results.json carries no `history`/`changes`. A missing contract key raises.
    """
    env = _environment(templates_dir or Path(os.environ.get(TEMPLATES_ENV, DEFAULT_TEMPLATES_DIR)))
    subject = brief_subject(results)
    view = build_view(results, archive_root)
    images = _cached_charts(results, view) if charts else ()
    context: dict[str, Any] = {"r": results, "view": view, "subject": subject}
    context["chart"] = {c.name: c for c in images}
    html = env.get_template(HTML_TEMPLATE)
    return RenderedBrief(
        subject=subject,
        html=html.render(context, img={c.name: _data_uri(c) for c in images}),
        text=env.get_template(TEXT_TEMPLATE).render(context),
        email_html=html.render(context, img={c.name: f"cid:{c.cid}" for c in images}),
        images=images,
    )


def write_brief(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write brief.html (self-contained) and brief.txt into `out_dir` (`<root>/<exp>/<date>`)."""
    brief = render_brief(results, archive_root=out_dir.parent.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / "brief.html", "text": out_dir / "brief.txt"}
    paths["html"].write_text(brief.html, encoding="utf-8")
    paths["text"].write_text(brief.text, encoding="utf-8")
    return paths


def _data_uri(chart: Chart) -> str:
    return "data:image/png;base64," + base64.b64encode(chart.png).decode("ascii")


def brief_subject(results: Mapping[str, Any]) -> str:
    subject = (
        f"[ab-pipeline] {results['experiment']}: {results['decision']} "
        f"({results['status']}, {results['run_date']})"
    )
    # A header must be one line: never let a stray newline in a value reach the mail headers.
    return re.sub(r"\s+", " ", subject).strip()


def _cached_charts(results: Mapping[str, Any], view: Mapping[str, Any]) -> tuple[Chart, ...]:
    """Charts depend only on the data: the same readout rendered twice (the archive copy, then
    the email; or many times in tests) draws them once."""
    key = json.dumps([results, view["trajectory"]], sort_keys=True, default=str)
    if key not in _CHART_CACHE:
        if len(_CHART_CACHE) >= 16:
            _CHART_CACHE.pop(next(iter(_CHART_CACHE)))
        _CHART_CACHE[key] = tuple(build_charts(results, view))
    return _CHART_CACHE[key]


_CHART_CACHE: dict[str, tuple[Chart, ...]] = {}


@lru_cache(maxsize=8)
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


def fmt_passfail(passed: bool | None) -> str:
    return "N/A" if passed is None else "PASS" if passed else "FAIL"


def fmt_value(x: float | None, kind: str) -> str:
    return text_kind(kind).format_value(x)


def fmt_diff(x: float | None, kind: str, digits: int | None = None) -> str:
    """Treatment minus control: pp for proportions (1 decimal by default), else metric units."""
    return text_kind(kind).format_difference(x, digits)


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


# ---- view model -------------------------------------------------------------------------------


def build_view(results: Mapping[str, Any], archive_root: Path | None = None) -> dict[str, Any]:
    """Everything the templates show that needs computing or formatting."""
    decision = results["decision"]
    color, meaning = DECISIONS.get(decision, ("#57606a", ""))
    rerun = decision == "RERUN"
    primary = None if rerun else _primary_view(results)
    history, previous = _earlier_readouts(results, archive_root)
    return {
        "decision": {"label": decision, "color": color, "meaning": meaning},
        "interim": results["status"] == "interim",
        "rerun": rerun,
        "failures": _failure_lines(results),
        "gates": _gates_view(results["gates"]),
        "glossary": GLOSSARY,
        "uses_pp": _uses_pp(results),
        "primary_missing": None if rerun else _primary_missing(results),
        "primary": primary,
        "others": [] if rerun else _other_metrics(results),
        "guardrails": [] if rerun else _guardrail_rows(results),
        "plan": _plan_view(results, primary),
        "progress": _progress_view(results.get("progress")),
        "trajectory": _trajectory_view(results, history, rerun),
        "history_decisions": [
            {"run_date": h["run_date"], "decision": h["decision"], "status": h["status"]}
            for h in history
        ],
        "changes": _changes_view(results, history, previous),
        "extras": [] if rerun else _extras_view(results),
        "human_decisions": results.get("human_decisions") or [],
        "ci_label": f"{results.get('ci_level', 0.95):.0%} interval",
    }


def _gate_failures(results: Mapping[str, Any]) -> list[str]:
    if results.get("gate_failures"):
        return list(results["gate_failures"])
    gates = results["gates"]
    return [name for name, gate in gates.items() if gate is not None and not gate["passed"]]


def _failure_lines(results: Mapping[str, Any]) -> list[dict[str, str | None]]:
    """One line per failed gate: its title and what, concretely, failed."""
    lines = []
    for name in _gate_failures(results):
        gate = results["gates"].get(name) or {}
        detail = gate.get("detail") or "; ".join(
            f"{check['name']}: {check['detail']}"
            for check in gate.get("checks", [])
            if not check["passed"]
        )
        declared = gate_registry.find(name)
        lines.append(
            {
                "title": _gate_title(name),
                "detail": detail,
                "hint": declared.hint if declared else None,
            }
        )
    return lines


def _gate_title(name: str) -> str:
    """The registered gate's title; an older readout's gate no longer registered: its name."""
    declared = gate_registry.find(name)
    return declared.title if declared else name


def _gates_view(gates: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each gate with its outcome (`gate`), its formatted view and the partials that show it:
    the gates every results.json has, then the others present in this one."""
    always = [g.name for g in gate_registry.gates() if g.always_shown]
    rows = []
    for name in [*always, *(g for g in gates if g not in always)]:
        gate = gates.get(name)
        declared = gate_registry.find(name)
        not_run = declared.not_applicable if declared else "did not run"
        rows.append(
            {
                "name": name,
                "title": _gate_title(name),
                "state": fmt_passfail(None if gate is None else gate["passed"]),
                "not_run": not_run if gate is None else None,
                "gate": gate,
                "view": declared.brief_view(gate) if declared and gate is not None else None,
                "partials": declared.partials if declared else {},
            }
        )
    return rows


def _plural_count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _uses_pp(results: Mapping[str, Any]) -> bool:
    """Is any difference in the brief said in percentage points?"""
    return any(text_kind(m.get("type")).in_points for m in (results.get("metrics") or {}).values())


def _primary_missing(results: Mapping[str, Any]) -> str | None:
    """Why the primary has no comparison, from its check (it says when the first is possible)."""
    for check in results.get("checks", []):
        if check["name"] == "positive_lift_interval" and check.get("outcome") == "not_evaluable":
            return str(check["detail"])
    return None


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
    threshold = ship_threshold(results)
    rows = [
        {
            **_comparison_row(metric, control, arm, comparison),
            "reading": interval_reading(comparison.get("ci"), threshold, metric["type"]),
        }
        for arm, comparison in metric["comparisons"].items()
    ]
    return {
        "name": name,
        "type": metric["type"],
        "rows": rows,
        "units": _min_units(metric),
        "arm_units": {
            arm: entry["units"]
            for arm, entry in metric["arms"].items()
            if entry.get("units") is not None
        },
        "threshold": None if threshold is None else fmt_diff(threshold, metric["type"]),
    }


def _comparison_row(
    metric: Mapping[str, Any], control: str, arm: str, comparison: Mapping[str, Any]
) -> dict[str, Any]:
    kind = metric["type"]
    # One precision per comparison (set by its SE), so a point and its interval line up.
    digits = text_kind(kind).headline_digits(_digits_for(comparison["se"]))
    return {
        "arm": arm,
        "control": control,
        "sentence": _plain_sentence(metric, metric["arms"][arm], metric["arms"][control]),
        "absolute": fmt_diff(comparison["absolute"], kind, digits),
        "absolute_ci": fmt_interval(comparison["ci"], kind, digits),
        "relative": fmt_pct(comparison.get("relative"), signed=True),
        "relative_ci": fmt_rel_interval(comparison.get("relative_ci")),
        "p_value": fmt_p(comparison["p_value"]),
        "se": text_kind(kind).format_precise(
            comparison["se"], _digits_for(comparison["se"]), signed=False
        ),
        "method": comparison["method"],
        # A quantile on tied values: no SE or p-value, and the reader must be told why.
        "note": comparison.get("note") if comparison.get("discrete") else None,
    }


def _plain_sentence(
    metric: Mapping[str, Any], treated: Mapping[str, Any], control: Mapping[str, Any]
) -> str:
    """'840 of 2,000 customer_accounts (42.0%) vs 760 of 2,000 (38.0%)', or the like."""
    units = _plural(metric.get("unit_label") or "unit")
    return text_kind(metric["type"]).plain_sentence(treated, control, units)


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
            digits = text_kind(kind).table_digits(_digits_for(comparison["se"]))
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
                "state": _guardrail_state(check),
                "settle": _settle_text(check, entry, results["control"]),
            }
        )
    return rows


def _guardrail_state(check: Mapping[str, Any]) -> str:
    outcome = check.get("outcome")
    if outcome in GUARDRAIL_STATES:
        return GUARDRAIL_STATES[outcome]
    return fmt_passfail(check["passed"])


def _settle_text(check: Mapping[str, Any], metric: Mapping[str, Any], control: str) -> str | None:
    """'About 6,326 units per arm (4,326 more) would settle it.' for an unproven guardrail."""
    needed = check.get("units_needed_per_arm")
    if check.get("outcome") != "not_shown_within_budget" or not needed:
        return None
    arms = metric.get("arms") or {}
    now = [arms.get(a, {}).get("units") for a in (control, check.get("arm"))]
    more = "" if None in now else f" ({fmt_count(max(needed - round(sum(now) / 2), 0))} more)"
    return f"About {fmt_count(needed)} units per arm{more} would settle it."


def _budget_value(
    x: float | None, *, kind: str, relative: bool, digits: int, signed: bool = True
) -> str:
    # Relative budgets are fractions of control; absolute ones are in the metric's own unit.
    if relative:
        return fmt_pct(x, signed=signed)
    return text_kind(kind).format_precise(x, digits, signed)


def _plan_view(
    results: Mapping[str, Any], primary: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    plan = results["plan"]
    if plan is None:
        return None
    kind = text_kind("proportion" if primary is None else primary["type"])
    required = plan["required_per_arm"]
    units = primary["units"] if primary else None
    formula_name, formula = _formula(str(plan["formula"]))
    return {
        "baseline": kind.format_value(plan["baseline"]),
        "mde": kind.format_magnitude(plan["mde"]),
        "alpha": f"{plan['alpha']:g}",
        "power": fmt_pct(plan["power"], digits=0),
        "required": fmt_count(required),
        "formula": formula,
        "formula_name": formula_name,
        "enrolled": _enrolled_text(primary) if units else None,
        "progress": fmt_pct(units / required, digits=0) if units and required else None,
    }


def _formula(text: str) -> tuple[str, str]:
    """('the 2p(1-p) formula', 'n = ...') from '2p(1-p) formula: n = ...'."""
    name, colon, rest = text.partition(": ")
    if colon and "formula" in name.lower():
        return f"the {name}", rest
    return "the formula", text


def _enrolled_text(primary: Mapping[str, Any] | None) -> str:
    """'control 44,700, treatment 45,489': each arm's analysed units."""
    arms = (primary or {}).get("arm_units") or {}
    return ", ".join(f"{arm} {fmt_count(n)}" for arm, n in arms.items())


def _maybe_pct(x: float | None, digits: int) -> str | None:
    return None if x is None else fmt_pct(x, digits)


# ---- progress, trajectory, changes ------------------------------------------------------------


def _progress_view(progress: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`progress` (enrolment against the plan); None when the run did not report it."""
    if not progress:
        return None
    fraction = progress.get("fraction")
    days_left = progress.get("days_left")
    return {
        "planned": fmt_count(progress.get("planned_per_arm")),
        "enrolled": [
            {"arm": arm, "units": fmt_count(n)}
            for arm, n in (progress.get("enrolled_per_arm") or {}).items()
        ],
        "fraction": fmt_pct(fraction, 0),
        # Bar widths in whole percent, capped: an over-enrolled arm must not break the layout.
        "bar": max(0, min(100, round((fraction or 0) * 100))),
        "mde_now": fmt_pp(progress.get("mde_now"), 1, signed=False),
        "mde_planned": fmt_pp(progress.get("mde_planned"), 1, signed=False),
        "per_day": fmt_num(progress.get("enrolment_per_day"), digits=0),
        "days_left": "unknown (no enrolment yet)" if days_left is None else fmt_count(days_left),
        "days_to_end": fmt_count(progress.get("days_to_end")),
        "reached": fraction is not None and fraction >= 1,
    }


def _earlier_readouts(
    results: Mapping[str, Any], archive_root: Path | None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(history, the previous readout's full results.json or None).

    `history` from results.json wins (the results tables); without it, the archive's earlier
    run directories stand in, so the trajectory also works without a SQL warehouse.
    """
    earlier = archived_results(archive_root, results) if archive_root else []
    previous = earlier[-1] if earlier else None
    history = results.get("history")
    if history is None:
        history = [_history_entry(r) for r in earlier]
    return [h for h in history if str(h.get("run_date")) < str(results["run_date"])], previous


def archived_results(archive_root: Path, results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Earlier readouts' results.json of this experiment in the archive, oldest first (one
    the contract refuses is skipped with a warning, as an unreadable one)."""
    from ab_pipeline.readout.results_model import load_results

    experiment = str(results["experiment"])
    if not SAFE_SEGMENT.fullmatch(experiment):  # never let a key walk out of the archive
        return []
    found = []
    for path in sorted((archive_root / experiment).glob("*/results.json")):
        day = path.parent.name
        if not RUN_DATE.fullmatch(day) or day >= str(results["run_date"]):
            continue
        try:
            found.append(load_results(path))
        except (OSError, ValueError) as error:
            log.warning("skipping unreadable earlier readout %s: %s", path, error)
    return found


SAFE_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
RUN_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _history_entry(results: Mapping[str, Any]) -> dict[str, Any]:
    """The `history` item shape (docs/results.md) of one archived results.json."""
    first = _first_comparison(results)
    return {
        "run_date": results["run_date"],
        "decision": results["decision"],
        "status": results.get("status"),
        "primary": None if first is None else {"absolute": first["absolute"], "ci": first["ci"]},
    }


def _first_comparison(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """The primary metric's first treatment comparison by arm name (as the results tables)."""
    from ab_pipeline.readout.results_store import first_treatment

    name = _primary_name(results) if results.get("metrics") else None
    if name is None:
        return None
    return first_treatment(results["metrics"][name].get("comparisons") or {})


def _primary_kind(results: Mapping[str, Any]) -> str:
    name = _primary_name(results) if results.get("metrics") else None
    return results["metrics"][name]["type"] if name else "proportion"


def _trajectory_view(
    results: Mapping[str, Any], history: list[dict[str, Any]], rerun: bool
) -> dict[str, Any] | None:
    """The primary estimate at each readout (earlier ones, then this one); never on RERUN."""
    if rerun:
        return None
    kind = _primary_kind(results)
    points = [
        {"run_date": str(h["run_date"]), "interim": h.get("status") != "final", **h["primary"]}
        for h in history
        if h.get("primary") and h["primary"].get("absolute") is not None
    ]
    current = _first_comparison(results)
    if current is not None:
        points.append(
            {
                "run_date": str(results["run_date"]),
                "interim": results["status"] != "final",
                "absolute": current["absolute"],
                "ci": current.get("ci"),
            }
        )
    arm = min(
        results["metrics"].get(_primary_name(results) or "", {}).get("comparisons") or {"": 0}
    )
    rows = [
        {
            "run_date": p["run_date"],
            "estimate": fmt_diff(p["absolute"], kind),
            "interval": fmt_interval(p.get("ci"), kind),
            "label": "interim" if p["interim"] else "final",
        }
        for p in points
    ]
    return {"points": points, "rows": rows, "kind": kind, "arm": arm, "end": results["end"]}


def _snapshot(results: Mapping[str, Any]) -> dict[str, Any]:
    """What `changes` compares, from a full results.json."""
    # A RERUN shows no effect estimates, whatever its metrics say.
    analysed = results.get("metrics") and results["decision"] != "RERUN"
    name = _primary_name(results) if analysed else None
    comparisons = results["metrics"][name].get("comparisons", {}) if name else {}
    return {
        "run_date": str(results["run_date"]),
        "decision": results["decision"],
        "gates": set(_gate_failures(results)),
        "primary": {arm: c for arm, c in comparisons.items()},
        "checks": {_check_key(c) for c in results.get("checks", []) if c.get("passed") is False},
        "kind": _primary_kind(results),
    }


def _history_snapshot(entry: Mapping[str, Any], arm: str | None) -> dict[str, Any]:
    """A thinner snapshot from a `history` item: one comparison, no gate or check names."""
    primary = entry.get("primary")
    return {
        "run_date": str(entry["run_date"]),
        "decision": entry["decision"],
        "gates": None,
        "primary": {arm: primary} if primary and arm else {},
        "checks": None,
    }


def _check_key(check: Mapping[str, Any]) -> str:
    arm = check.get("arm")
    return f"{check['name']} ({arm})" if arm else str(check["name"])


def _changes_view(
    results: Mapping[str, Any],
    history: list[dict[str, Any]],
    previous: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """`changes` when the run reported it; else computed from the previous readout. Metric
    definitions that changed since the previous readout come first."""
    view = _readout_changes(results, history, previous)
    view["items"] = _definition_changes(results, previous) + view["items"]
    return view


def _definition_changes(
    results: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> list[dict[str, str]]:
    """From results.json's `definition_changes`; without it, against the archived readout."""
    from ab_pipeline.core.catalog import change_sentence, definition_changes

    changes = results.get("definition_changes")
    if changes is None:
        changes = definition_changes(previous, results)
    return [_change("definition changed", change_sentence(c)) for c in changes]


def _readout_changes(
    results: Mapping[str, Any],
    history: list[dict[str, Any]],
    previous: Mapping[str, Any] | None,
) -> dict[str, Any]:
    given = results.get("changes")
    if given is not None:
        against = history[-1]["run_date"] if history else None
        return {
            "items": [_change(c.get("kind"), c.get("detail")) for c in given],
            "against": against,
        }
    current = _snapshot(results)
    if previous is not None and (
        not history or str(previous["run_date"]) >= str(history[-1]["run_date"])
    ):
        before = _snapshot(previous)
    elif history:
        first = min(current["primary"]) if current["primary"] else None
        before = _history_snapshot(history[-1], first)
    else:
        return {"items": [], "against": None}
    return {"items": compare_readouts(before, current), "against": before["run_date"]}


def _change(kind: Any, detail: Any) -> dict[str, str]:
    return {"kind": str(kind or "change"), "detail": str(detail or "")}


def compare_readouts(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[dict[str, str]]:
    """Newly (in)significant effects, sign flips, gates and checks that started failing."""
    changes = []
    if before["decision"] != now["decision"]:
        changes.append(
            _change(
                "decision changed",
                f"{before['decision']} on {before['run_date']}, now {now['decision']}",
            )
        )
    changes += _gate_changes(before, now)
    kind = now.get("kind", "proportion")
    for arm, cur in now["primary"].items():
        old = before["primary"].get(arm)
        if not old or cur.get("ci") is None or old.get("ci") is None:
            continue
        was, is_ = _excludes_zero(old["ci"]), _excludes_zero(cur["ci"])
        moved = f"{arm}: {_effect_text(old, kind)} then, {_effect_text(cur, kind)} now"
        if is_ and not was:
            changes.append(_change("newly significant", moved))
        elif was and not is_:
            changes.append(_change("no longer significant", moved))
        if old["absolute"] * cur["absolute"] < 0:
            changes.append(_change("sign flip", moved))
    if before["checks"] is not None and now["checks"] is not None:
        gate_checks = {"traffic_integrity"}
        for name in sorted(now["checks"] - before["checks"] - gate_checks):
            changes.append(_change("check started failing", name))
    return changes


def _gate_changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[dict[str, str]]:
    if before["gates"] is None:  # only the decision is known: RERUN means some gate failed
        if now["gates"] and before["decision"] != "RERUN":
            return [_change("gate started failing", _gate_title(g)) for g in sorted(now["gates"])]
        if not now["gates"] and before["decision"] == "RERUN":
            return [_change("gates pass again", "every validity gate passed this time")]
        return []
    started = [
        _change("gate started failing", _gate_title(g))
        for g in sorted(now["gates"] - before["gates"])
    ]
    fixed = [
        _change("gate passes again", _gate_title(g)) for g in sorted(before["gates"] - now["gates"])
    ]
    return started + fixed


def _effect_text(comparison: Mapping[str, Any], kind: str) -> str:
    return f"{fmt_diff(comparison['absolute'], kind)} {fmt_interval(comparison['ci'], kind)}"


def _excludes_zero(ci: Iterable[float]) -> bool:
    low, high = ci
    return low > 0 or high < 0


# ---- other engineers' extension keys (shown when present) -------------------------------------


def _extras_view(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """One line each for corrections, CUPED, sequential looks and novelty, when reported."""
    lines: list[dict[str, str]] = []
    name = _primary_name(results)
    comparisons = results["metrics"][name]["comparisons"] if name else {}
    for arm, c in comparisons.items():
        if c.get("p_value_adjusted") is not None:
            text = f"{fmt_p(c['p_value_adjusted'])} ({_correction_text(c.get('correction'))}; "
            text += f"unadjusted {fmt_p(c.get('p_value'))})"
            lines.append({"label": f"Adjusted p-value ({arm})", "text": text, "term": "holm"})
        if cuped := c.get("cuped"):
            reduced = _maybe_pct(cuped.get("variance_reduction"), 0) or MISSING
            text = f"covariate {cuped.get('covariate')}, variance reduced by {reduced}"
            lines.append({"label": f"CUPED ({arm})", "text": text, "term": ""})
        if seq := c.get("sequential"):
            crossed = "crossed" if seq.get("crossed") else "not crossed"
            text = (
                f"{seq.get('method')}: look {seq.get('look')} of {seq.get('planned_looks')}, "
                f"boundary {fmt_p(seq.get('boundary'))}, {crossed}"
            )
            lines.append({"label": f"Sequential ({arm})", "text": text, "term": ""})
    novelty = results.get("novelty") or {}
    if trend := novelty.get("trend") or {}:
        flag = (
            "flagged: the effect fades in later cohorts"
            if novelty.get("flagged")
            else "not flagged"
        )
        slope = fmt_num(trend.get("slope"), signed=True, digits=4)
        p_value = fmt_p(trend.get("p_value"))
        text = f"effect change per later exposure day {slope} (p = {p_value}), {flag}"
        lines.append({"label": "Novelty", "text": text, "term": "novelty"})
    return lines


CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "bonferroni": "Bonferroni"}


def _correction_text(correction: Any) -> str:
    """'Holm correction over 2 treatment arms at alpha 0.05' from the correction record."""
    if not isinstance(correction, Mapping):
        return str(correction or "corrected")
    method = str(correction.get("method") or "")
    name = CORRECTION_NAMES.get(method.lower(), method or "multiple-testing")
    family = correction.get("family")
    over = f" over {_plural_count(int(family), 'treatment arm')}" if family else ""
    alpha = correction.get("alpha")
    at = f" at alpha {alpha:g}" if isinstance(alpha, int | float) else ""
    same = ": one arm, so nothing to adjust" if family == 1 else ""
    return f"{name} correction{over}{at}{same}"


# ---- charts -----------------------------------------------------------------------------------


def ship_threshold(results: Mapping[str, Any]) -> float | None:
    """The shipping threshold as a signed difference (min_lift in the intended direction)."""
    sign = -1.0 if results["hypothesis"].get("direction") == "decrease" else 1.0
    for check in results.get("checks", []):
        if check.get("budget_kind") == "min_lift" and check.get("budget"):
            return sign * float(check["budget"])
        # Older readouts recorded the threshold as the lift check's bound.
        if check["name"] == "observed_lift_threshold" and check.get("bound"):
            return sign * abs(float(check["bound"]))
    return None


def interval_reading(ci: Iterable[float] | None, threshold: float | None, kind: str) -> str:
    """What the chart shows, in words (the text part and screen readers get it too)."""
    if not ci:
        return "no interval was computed"
    low, high = ci
    where = "above zero" if low > 0 else "below zero" if high < 0 else "includes zero"
    text = f"the interval {'lies ' if where != 'includes zero' else ''}{where}"
    if threshold is not None:
        label = fmt_diff(threshold, kind)
        up = threshold > 0
        clears = (low >= threshold) if up else (high <= threshold)
        misses = (high < threshold) if up else (low > threshold)
        state = "clears" if clears else "falls short of" if misses else "straddles"
        text += f" and {state} the shipping threshold {label}"
    return text


def build_charts(results: Mapping[str, Any], view: Mapping[str, Any]) -> list[Chart]:
    """The effects chart (primary and guardrails) and the trajectory chart, when there is data."""
    from ab_pipeline.report.charts import TrajectoryPoint, forest_chart, trajectory_chart

    charts = []
    panels = _effect_panels(results) if view["primary"] else []
    if panels:
        alt = "; ".join(f"{p.title}: {', '.join(_row_text(p, r) for r in p.rows)}" for p in panels)
        charts.append(forest_chart("effects", panels, "Intervals against zero: " + alt))
    trajectory = view["trajectory"]
    if trajectory and len(trajectory["points"]) >= 2:
        kind = trajectory["kind"]
        points = [
            TrajectoryPoint(p["run_date"], p["absolute"], *_ci_pair(p.get("ci")), p["interim"])
            for p in trajectory["points"]
        ]
        alt = "Estimate by readout: " + "; ".join(
            f"{r['run_date']} {r['estimate']} {r['interval']} ({r['label']})"
            for r in trajectory["rows"]
        )
        charts.append(
            trajectory_chart(
                "trajectory",
                points,
                _threshold_lines(results, kind),
                _tick(kind),
                alt,
                _scale(kind),
            )
        )
    return charts


def _ci_pair(ci: Iterable[float] | None) -> tuple[float | None, float | None]:
    low, high = ci if ci else (None, None)
    return low, high


def _row_text(panel: Panel, row: Any) -> str:
    show = panel.formatter
    return f"{row.label} {show(row.estimate)} [{show(row.low)}, {show(row.high)}]"


def _label(kind: str) -> Callable[[float], str]:
    """Interval ends in the chart's alt text: pp with one decimal, else the metric's unit."""
    return partial(fmt_diff, kind=kind)


def _tick(kind: str) -> Callable[[float, int], str]:
    """An axis tick with the decimals its spacing needs (charts.tick_digits picks them)."""

    def tick(value: float, digits: int) -> str:
        return fmt_diff(value, kind, digits)

    return tick


def _scale(kind: str) -> float:
    return text_kind(kind).chart_scale


def _threshold_lines(results: Mapping[str, Any], kind: str) -> list[tuple[float, str]]:
    threshold = ship_threshold(results)
    return [] if threshold is None else [(threshold, f"ship threshold {fmt_diff(threshold, kind)}")]


def _effect_panels(results: Mapping[str, Any]) -> list[Panel]:
    from ab_pipeline.report.charts import Panel

    control = results["control"]
    metrics = results["metrics"]
    name = _primary_name(results)
    panels = []
    if name:
        kind = metrics[name]["type"]
        rows = _interval_rows(metrics[name], control)
        if rows:
            lines = _threshold_lines(results, kind)
            title = f"{name} (primary)"
            panels.append(Panel(title, rows, lines, _label(kind), _tick(kind), _scale(kind)))
    for metric, checks in _guardrail_checks(results).items():
        entry = metrics.get(metric)
        if not entry:
            continue
        kind = entry["type"]
        rows = _interval_rows(entry, control)
        lines = [line for c in checks if (line := _budget_line(c, entry, control, kind))]
        if rows:
            title = f"{metric} (guardrail)"
            panels.append(Panel(title, rows, lines, _label(kind), _tick(kind), _scale(kind)))
    return panels


def _interval_rows(metric: Mapping[str, Any], control: str) -> list[Any]:
    from ab_pipeline.report.charts import IntervalRow

    return [
        IntervalRow(arm, c["absolute"], c["ci"][0], c["ci"][1])
        for arm, c in metric.get("comparisons", {}).items()
        if c.get("ci") and c.get("absolute") is not None
    ]


def _guardrail_checks(results: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for check in results.get("checks", []):
        if check["name"].startswith("guardrail:"):
            metric = check.get("metric") or check["name"].split(":", 1)[1]
            grouped.setdefault(metric, []).append(check)
    return grouped


def _budget_line(
    check: Mapping[str, Any], metric: Mapping[str, Any], control: str, kind: str
) -> tuple[float, str] | None:
    """A guardrail's budget as a difference in the metric's unit (relative ones scaled)."""
    budget, budget_kind = check.get("budget"), check.get("budget_kind") or ""
    if budget is None or not budget_kind:
        return None
    value = float(budget)
    sign = -1.0 if "decrease" in budget_kind else 1.0
    if "relative" in budget_kind:
        base = metric.get("arms", {}).get(control, {}).get("value")
        if base is None:
            return None
        # Said as the budget is written (a share of control), then in the chart's unit.
        shown = fmt_diff(sign * value * float(base), kind)
        return sign * value * float(base), f"budget {fmt_pct(sign * value, signed=True)} ({shown})"
    return sign * value, f"budget {fmt_diff(sign * value, kind)}"
