"""The decision brief: every decision kind renders, shows its numbers, and escapes hostile text."""

from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jinja2
import pytest

from ab_pipeline.report.brief import (
    TEMPLATES_ENV,
    RenderedBrief,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_pp,
    render_brief,
    write_brief,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
KINDS = ["ship", "iterate", "stop", "rerun", "continue"]
SIGNED_EFFECT = re.compile(r"[+-]\d+(\.\d+)? ?(pp|%)")  # "+4.0 pp", "-0.20 pp", "+10.5%"


class TagCollector(HTMLParser):
    """Every start tag of an HTML document, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    @classmethod
    def of(cls, html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
        parser = cls()
        parser.feed(html)
        return parser.tags


def load(kind: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"results_{kind}.json").read_text())


def render(kind: str) -> RenderedBrief:
    return render_brief(load(kind))


def both(brief: RenderedBrief) -> list[str]:
    return [brief.html, brief.text]


def readable(brief: RenderedBrief) -> list[str]:
    """The HTML as a reader sees its text (tags dropped, entities decoded), and the text part."""
    import html

    seen = html.unescape(re.sub(r"<[^>]+>", "", brief.html))
    return [" ".join(seen.split()), " ".join(brief.text.split())]


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("results_*.json")), ids=lambda p: p.stem)
def test_every_fixture_renders_self_contained(path: Path) -> None:
    results = json.loads(path.read_text())
    brief = render_brief(results)
    assert brief.subject == (
        f"[ab-pipeline] {results['experiment']}: {results['decision']} "
        f"({results['status']}, {results['run_date']})"
    )
    for body in both(brief):
        assert results["decision"] in body
        assert results["config_sha256"] in body
        assert results["code_version"] in body
    # The archive copy embeds its charts; the email copy references its CID parts.
    assert_self_contained(brief.html, "data:image/png;base64,")
    assert_self_contained(brief.email_html, "cid:")
    assert {c.cid for c in brief.images} == {
        src.removeprefix("cid:") for src in image_sources(brief.email_html)
    }


def image_sources(html: str) -> list[str]:
    return [dict(attrs)["src"] or "" for name, attrs in TagCollector.of(html) if name == "img"]


def assert_self_contained(html: str, image_prefix: str) -> None:
    """Inline CSS only: no scripts, no stylesheets, images only from `image_prefix`."""
    tags = TagCollector.of(html)
    assert not {name for name, _ in tags} & {"script", "link", "iframe", "object"}
    assert all(src.startswith(image_prefix) for src in image_sources(html))
    attributes = [(key, value or "") for _, attrs in tags for key, value in attrs]
    assert not [key for key, _ in attributes if key == "href" or key.startswith("on")]
    assert all("url(" not in value for _, value in attributes)


def test_every_decision_kind_has_a_fixture() -> None:
    assert {load(kind)["decision"] for kind in KINDS} == {
        "SHIP",
        "ITERATE",
        "STOP",
        "RERUN",
        "CONTINUE",
    }


def test_ship_states_the_primary_metric_in_plain_language() -> None:
    brief = render("ship")
    assert brief.subject == "[ab-pipeline] refund-query-rewrite: SHIP (final, 2026-05-31)"
    for body in both(brief):
        assert "840 of 2,000 customer_accounts (42.0%) vs 760 of 2,000 (38.0%)" in body
        assert "Absolute lift" in body and "+4.0 pp" in body
        assert "[+1.0 pp, +7.0 pp]" in body  # the 95% interval of the difference
        assert "Relative lift" in body and "+10.5%" in body
        assert "95% interval" in body
        assert "standard error 1.55 pp" in body
        assert "INTERIM LOOK" not in body


def test_ship_shows_gates_with_their_numbers() -> None:
    for body in both(render("ship")):
        assert "Sample ratio (SRM)" in body
        assert "2,000" in body and "50.0%" in body  # counts and expected split
        assert "p = 1" in body
        assert "events.experiment_key tagged" in body and "231" in body and "evt-88121" in body
        assert "index, generator, decoder" in body  # receipt fields compared


def test_ship_shows_checks_guardrails_plan_and_receipt() -> None:
    results = load("ship")
    for body in both(render("ship")):
        for check in results["checks"]:
            assert check["name"] in body
            assert check["detail"] in body.replace("&#39;", "'")
        assert "-0.20 pp" in body and "+0.86 pp" in body and "max increase 1.00 pp" in body
        assert "+49.0" in body and "+85.7" in body and "max increase 150.0" in body
        assert "1,827 per arm" in body and "2p(1-p)" in body
        assert "novelty effect" in body and "support-ml@example.com" in body
        assert "dags/experiments/refund-query-rewrite.yaml" in body
        assert "2026-05-04 to 2026-05-31" in body


def test_iterate_shows_an_interval_that_crosses_zero() -> None:
    for body in both(render("iterate")):
        assert "3,890 of 10,000 customer_accounts (38.9%) vs 3,800 of 10,000 (38.0%)" in body
        assert "+0.9 pp" in body and "[-0.4 pp, +2.2 pp]" in body
        assert "ITERATE" in body


def test_stop_names_the_harmed_guardrail() -> None:
    brief = render("stop")
    assert re.search(r"\[FAIL\] guardrail:p95_latency_ms", brief.text)
    assert "[HARMED] p95_latency_ms (treatment): observed +212.0, bound +259.4" in brief.text
    assert "max increase 150.0" in brief.html
    assert "FAIL" in brief.html


def test_rerun_leads_with_what_failed_and_shows_no_effects() -> None:
    brief = render("rerun")
    assert "RERUN" in brief.subject
    for body in both(brief):
        assert body.lower().index("what failed") < body.index("Can we trust the data?")
        assert "3,050" in body and "3,738" in body  # SRM counts
        assert "69.7" in body and "6.8e-17" in body  # chi-square and its p-value
        assert "v3" in body and "v4" in body and "index" in body  # receipt mismatch
        assert "treatmnet" in body and "12" in body  # data-quality examples and count
        assert "Absolute lift" not in body and "Relative lift" not in body
        assert not SIGNED_EFFECT.search(body), SIGNED_EFFECT.search(body)
        assert "Not analysed" in body


def test_rerun_hides_effects_even_if_metrics_are_present() -> None:
    results = load("rerun")
    results["metrics"] = load("ship")["metrics"]
    for body in both(render_brief(results)):
        assert "840 of 2,000" not in body and not SIGNED_EFFECT.search(body)


def test_continue_is_clearly_an_interim_look() -> None:
    brief = render("continue")
    assert brief.subject == "[ab-pipeline] refund-query-rewrite: CONTINUE (interim, 2026-05-12)"
    for body in both(brief):
        assert "INTERIM LOOK" in body and "not a launch call" in body
        assert "interim" in body
        assert "Analysed so far: control 2,000, treatment 2,000" in body  # each arm
        assert body.index("INTERIM LOOK") < body.index("Can we trust the data?")


def test_hostile_text_is_escaped_in_html_and_verbatim_in_text() -> None:
    brief = render("hostile")
    html = brief.html.lower()
    assert "<script" not in html and "<img src=x" not in html and "<b>ctl" not in html
    assert all(src.startswith("data:image/png;base64,") for src in image_sources(brief.html))
    # The payload "</td></tr></table>" arrives escaped: every table the page opens, it closes.
    assert "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;" in html
    assert html.count("<table") == html.count("</table>")
    assert "&lt;script&gt;alert(" in brief.html
    assert "&lt;img src=x onerror=alert(1)&gt;" in brief.html
    assert "<script>alert('x')</script>" in brief.text
    assert "&lt;" not in brief.text and "&amp;" not in brief.text


def test_subject_never_spans_lines() -> None:
    results = load("ship")
    results["experiment"] = "evil\r\nBcc: victim@example.com"
    assert "\n" not in render_brief(results).subject


def test_missing_key_fails_loudly() -> None:
    results = load("ship")
    del results["owner"]
    with pytest.raises(jinja2.UndefinedError):
        render_brief(results)


def test_two_treatment_arms_each_get_a_comparison() -> None:
    results = load("ship")
    primary = results["metrics"]["resolution_rate"]
    primary["arms"]["bold"] = {"units": 2000, "value": 0.36, "successes": 720}
    primary["comparisons"]["bold"] = {**primary["comparisons"]["treatment"], "absolute": -0.02}
    text = render_brief(results).text
    assert "treatment vs control: 840 of 2,000" in text
    assert "bold vs control: 720 of 2,000 customer_accounts (36.0%)" in text
    assert "-2.0 pp" in text


def test_write_brief_writes_html_and_text(tmp_path: Path) -> None:
    results = load("ship")
    paths = write_brief(results, tmp_path / "out")
    brief = render_brief(results)
    assert paths["html"].read_text(encoding="utf-8") == brief.html
    assert paths["text"].read_text(encoding="utf-8") == brief.text
    assert {p.name for p in paths.values()} == {"brief.html", "brief.txt"}


def test_templates_dir_can_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "brief.html.j2").write_text("<p>{{ r.title }}</p>")
    (tmp_path / "brief.txt.j2").write_text("{{ r.title }}")
    results = copy.deepcopy(load("ship"))
    results["title"] = "A & B"
    assert render_brief(results, templates_dir=tmp_path).html == "<p>A &amp; B</p>"
    monkeypatch.setenv(TEMPLATES_ENV, str(tmp_path))
    brief = render_brief(results)
    assert (brief.html, brief.text) == ("<p>A &amp; B</p>", "A & B")


def test_number_formats() -> None:
    assert fmt_pp(0.04) == "+4.0 pp"
    assert fmt_pp(-0.00001) == "+0.0 pp"  # never "-0.0"
    assert fmt_pp(0.0155, 2, signed=False) == "1.55 pp"
    assert fmt_pct(0.42) == "42.0%"
    assert fmt_pct(0.105263, signed=True) == "+10.5%"
    assert fmt_num(1024.0) == "1,024"
    assert fmt_num(48.71, signed=True) == "+48.7"
    assert fmt_num(7.184) == "7.18"
    assert fmt_num(None) == "—"
    assert fmt_p(0.109122) == "0.109"
    assert fmt_p(6.79e-17) == "6.8e-17"


def readout(kind: str, run_date: str, absolute: float, ci: list[float]) -> dict[str, Any]:
    """A fixture moved to another run date with another primary estimate, without `history`."""
    results = load(kind)
    results.pop("history", None)
    results.pop("changes", None)
    results["run_date"] = run_date
    comparison = results["metrics"]["resolution_rate"]["comparisons"]["treatment"]
    comparison.update(absolute=absolute, ci=ci)
    return results


def test_trajectory_and_changes_come_from_the_archive_without_history(tmp_path: Path) -> None:
    root = tmp_path / "briefs"
    first = readout("continue", "2026-05-12", -0.01, [-0.05, 0.03])
    second = readout("continue", "2026-05-19", 0.03, [0.005, 0.055])
    for results in (first, second):
        run_dir = root / results["experiment"] / results["run_date"]
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps(results))
        write_brief(results, run_dir)
    text = (root / first["experiment"] / "2026-05-19" / "brief.txt").read_text()
    assert "2026-05-12  -1.0 pp  [-5.0 pp, +3.0 pp]  INTERIM" in text
    assert "2026-05-19  +3.0 pp  [+0.5 pp, +5.5 pp]  INTERIM" in text
    assert "newly significant: treatment" in text and "sign flip: treatment" in text
    assert "(Compared with the readout of 2026-05-12.)" in text
    html = (root / first["experiment"] / "2026-05-19" / "brief.html").read_text()
    assert len(image_sources(html)) == 2  # the effects chart and the trajectory chart


def test_a_gate_that_started_failing_is_named() -> None:
    results = load("rerun")
    results["history"] = [
        {"run_date": "2026-05-30", "decision": "CONTINUE", "status": "interim", "primary": None}
    ]
    text = render_brief(results, charts=False).text
    assert "gate started failing: Sample ratio (SRM)" in text
    assert "decision changed: CONTINUE on 2026-05-30, now RERUN" in text


def test_reported_changes_are_shown_as_given() -> None:
    results = load("stop")
    results["changes"] = [
        {"kind": "check started failing", "detail": "guardrail:p95_latency_ms (treatment)"}
    ]
    text = render_brief(results).text
    assert "check started failing: guardrail:p95_latency_ms (treatment)" in text


def test_absent_extension_keys_degrade_gracefully() -> None:
    results = load("iterate")
    for key in ("progress", "history", "changes", "novelty", "human_decisions", "analysis"):
        results.pop(key, None)
    brief = render_brief(results)
    for body in both(brief):
        # Without `progress`, the plan and the analysed units stand in for it.
        assert "No progress was reported for this run." not in body
        assert "Analysed so far: control 10,000, treatment 10,000 (108% of the plan" in body
        assert "This is the first readout: there is no trajectory yet." in body
        assert "No earlier readout to compare with." in body
    results["plan"] = None
    for body in both(render_brief(results)):
        assert "No progress was reported for this run." in body


def test_rerun_leads_with_the_srm_breakdown_and_assignment_examples() -> None:
    brief = render("rerun")
    for body in both(brief):
        lead = body.lower().index("what to look at")
        assert lead < body.index("Can we trust the data?")
        assert "android" in body and "1.2e-28" in body and "imbalanced" in body
        assert "acct-10293" in body and "41" in body
    assert brief.images == ()  # no effect estimates, so no charts


def test_extension_keys_are_rendered_when_present() -> None:
    results = load("ship")
    comparison = results["metrics"]["resolution_rate"]["comparisons"]["treatment"]
    comparison.update(
        p_value_adjusted=0.0196,
        correction="holm",
        cuped={"covariate": "pre_resolution", "variance_reduction": 0.31},
        sequential={
            "method": "obrien-fleming",
            "look": 4,
            "planned_looks": 4,
            "boundary": 0.045,
            "crossed": True,
        },
    )
    results["novelty"] = {"flagged": True, "trend": {"slope": -0.0021, "p_value": 0.004}}
    results["human_decisions"] = [
        {
            "run_date": "2026-05-31",
            "decision": "ITERATE",
            "by": "pm<x>",
            "note": "wait",
            "follow_up": "2026-06-15",
            "pipeline_decision": "SHIP",
            "disagrees": True,
        }
    ]
    brief = render_brief(results)
    for body in both(brief):
        assert "0.0196" in body and "holm" in body and "31%" in body
        assert "look 4 of 4" in body and "crossed" in body and "fades" in body
        assert "pipeline said SHIP" in body
    assert "pm&lt;x&gt;" in brief.html


def test_charts_are_pngs_referenced_by_cid_in_the_email_copy() -> None:
    brief = render("ship")
    assert {c.name for c in brief.images} == {"effects", "trajectory"}
    assert all(c.png.startswith(b"\x89PNG") for c in brief.images)
    assert "data:" not in brief.email_html and "cid:effects@ab-pipeline" in brief.email_html
    assert "cid:" not in brief.html


# ---- fixtures cannot drift from what a real run writes ----------------------------------------

# Dicts keyed by data (metric, arm, gate property names) rather than by a fixed set of fields.
DATA_KEYED = {"metrics", "arms", "comparisons", "counts", "expected", "by_property", "values"}
DATA_KEYED |= {"enrolled_per_arm"}
# Each fixture against the real run of the same kind (the hostile one is a SHIP).
REAL_KIND = {"ship": "ship", "iterate": "iterate", "stop": "stop", "rerun": "rerun"}
REAL_KIND |= {"continue": "continue", "hostile": "ship"}


def shape(value: Any, key: str | None = None) -> Any:
    """The nested key structure of a results.json value (leaves are None)."""
    if isinstance(value, dict):
        if key in DATA_KEYED:
            return ("each", merge_shapes([shape(v) for v in value.values()]))
        return {k: shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return merge_shapes([shape(v) for v in value])
    return None


def merge_shapes(shapes: list[Any]) -> Any:
    merged: Any = None
    for s in shapes:
        if merged is None:
            merged = s
        elif isinstance(merged, dict) and isinstance(s, dict):
            merged = {k: merge_shapes([merged.get(k), s.get(k)]) for k in merged.keys() | s.keys()}
        elif isinstance(merged, tuple) and isinstance(s, tuple):
            merged = ("each", merge_shapes([merged[1], s[1]]))
    return merged


def shape_differences(fixture: Any, real: Any, path: str) -> list[str]:
    """Where the key sets differ; a null on either side is not compared further."""
    if fixture is None or real is None:
        return []
    if isinstance(fixture, tuple) and isinstance(real, tuple):
        return shape_differences(fixture[1], real[1], path + "[*]")
    if isinstance(fixture, dict) and isinstance(real, dict):
        problems = []
        if only := sorted(fixture.keys() - real.keys()):
            problems.append(f"{path}: only in the fixture: {only}")
        if only := sorted(real.keys() - fixture.keys()):
            problems.append(f"{path}: only in a real run: {only}")
        for k in fixture.keys() & real.keys():
            problems += shape_differences(fixture[k], real[k], f"{path}.{k}")
        return problems
    return [
        f"{path}: a {type(fixture).__name__} in the fixture, {type(real).__name__} in a real run"
    ]


@pytest.fixture(scope="module")
def real_runs(
    real_pipeline_runs: tuple[Path, dict[str, dict[str, Any]]],
) -> dict[str, dict[str, Any]]:
    return real_pipeline_runs[1]


def metric_shapes(runs: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """Each (metric type, role)'s shape over every real run that has it."""
    by_type: dict[tuple[str, str], list[Any]] = {}
    for results in runs:
        for metric in results["metrics"].values():
            by_type.setdefault((metric["type"], metric["role"]), []).append(shape(metric))
    return {kind: merge_shapes(shapes) for kind, shapes in by_type.items()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(REAL_KIND))
def test_fixture_keys_match_a_real_run(kind: str, real_runs: dict[str, dict[str, Any]]) -> None:
    fixture, real = load(kind), real_runs[REAL_KIND[kind]]
    assert real["decision"] == fixture["decision"]
    assert sorted(fixture) == sorted(real), "top-level keys differ"
    problems = []
    for name in fixture["gates"].keys() | real["gates"].keys():
        theirs = real["gates"].get(name) or next(
            (r["gates"][name] for r in real_runs.values() if r["gates"].get(name)), None
        )
        problems += shape_differences(
            shape(fixture["gates"].get(name)), shape(theirs), f"gates.{name}"
        )
    assert sorted(fixture["gates"]) == sorted(real["gates"])
    real_metrics = metric_shapes(list(real_runs.values()))
    for name, metric in fixture["metrics"].items():
        kind_role = (metric["type"], metric["role"])
        assert kind_role in real_metrics, f"no real run has a {kind_role} metric"
        problems += shape_differences(shape(metric), real_metrics[kind_role], f"metrics.{name}")
    assert problems == []


# ---- a brief a product manager reads in ten seconds ------------------------------------------


def test_data_quality_is_one_line_when_all_pass_and_the_full_list_comes_later() -> None:
    results = load("ship")
    for check in results["gates"]["data_quality"]["checks"]:
        check["passed"] = True
    html, text = both(render_brief(results))
    for body in (html, text):
        assert "All 3 data-quality checks passed." in body
        # Check names appear only in the full list, after the result.
        assert body.index("exposures.unit_id not null") > body.index("Checks behind the decision")


def test_data_quality_failures_and_warnings_are_spelled_out_first() -> None:
    results = load("ship")
    checks = results["gates"]["data_quality"]["checks"]
    checks[2]["passed"] = False  # the warning-severity check
    for body in both(render_brief(results)):
        assert "2 of 3 data-quality checks passed; 1 warning." in body
        assert "WARNING" in body and "it does not block the analysis" in body
        assert body.index("0.4% of events untagged") < body.index("Primary metric")
        assert "FAIL warning" not in body and "(error)" not in body


def test_gates_that_do_not_apply_say_so_and_why() -> None:
    results = load("ship")
    results["gates"]["receipt"] = None
    for body in readable(render_brief(results)):
        assert "This gate did not run" not in body and "NOT RUN" not in body
        assert "Assignment integrity: not applicable" in body and "assignment: hash" in body
        assert "Receipt (same system in every arm): not applicable" in body
        assert "no receipt fields" in body


def test_adjusted_p_value_formula_and_enrolment_read_as_sentences() -> None:
    results = load("ship")
    primary = results["metrics"]["resolution_rate"]
    primary["arms"]["treatment"]["units"] = 2105
    comparison = primary["comparisons"]["treatment"]
    comparison["correction"] = {"method": "holm", "family": 2, "alpha": 0.05}
    comparison["p_value_adjusted"] = 0.00155
    results["plan"]["formula"] = (
        "2p(1-p) formula: n = (z_{1-alpha/2} + z_power)^2 * 2p(1-p) / mde^2"
    )
    for body in readable(render_brief(results)):
        assert "{'" not in body and "'method'" not in body
        assert "0.00155 (Holm correction over 2 treatment arms at alpha 0.05; unadjusted" in body
        assert "Sample size from the 2p(1-p) formula: n = " in body
        assert "formula: 2p(1-p) formula" not in body.lower()
        assert "Analysed so far: control 2,000, treatment 2,105" in body


GLOSSARY_WORDS = [
    "pp = percentage points",
    "Sample ratio mismatch (SRM):",
    "The chi-square test says",
    "One-sided bound: the worst difference",
    "Holm correction: p-values are raised",
    "Receipt: the system versions",
    "Novelty: whether the effect fades",
]


@pytest.mark.parametrize("phrase", GLOSSARY_WORDS)
def test_jargon_is_explained_once_where_it_first_appears(phrase: str) -> None:
    for body in both(render("ship")):
        assert body.count(phrase) == 1, phrase


def test_explanations_sit_before_the_first_use_in_the_body() -> None:
    for body in both(render("ship")):
        assert body.index("pp = percentage points") < body.index("Can we trust the data?")
        assert body.index("Sample ratio mismatch (SRM):") < body.index("Primary metric")


def test_guardrail_not_shown_safe_says_how_many_units_would_settle_it() -> None:
    results = load("iterate")
    check = next(c for c in results["checks"] if c["name"] == "guardrail:escalation_rate")
    check.update(passed=False, outcome="not_shown_within_budget", units_needed_per_arm=14_200)
    for body in both(render_brief(results)):
        assert "NOT SHOWN SAFE" in body
        assert "About 14,200 units per arm (4,200 more) would settle it." in body


def test_interim_without_a_comparison_says_when_the_window_closes() -> None:
    results = load("continue")
    results["metrics"]["resolution_rate"]["comparisons"] = {}
    detail = (
        "resolution_rate treatment: not evaluable: no comparison (no data); no unit has completed "
        "its 1d resolution_rate window yet; the units enrolled on the first day have all "
        "completed it by the readout of 2026-05-05"
    )
    for check in results["checks"]:
        if check["name"] == "positive_lift_interval":
            check.update(passed=False, outcome="not_evaluable", detail=detail)
    for body in both(render_brief(results, charts=False)):
        assert "No comparison could be computed" not in body
        assert "completed it by the readout of 2026-05-05" in body
        assert "none has yet" in body  # beside the enrolment percentage


def test_chart_ticks_show_the_decimals_their_spacing_needs() -> None:
    from ab_pipeline.report.charts import tick_digits

    assert tick_digits([-0.0125, 0.0, 0.0125], 100) == 2  # -1.25 pp, not -1.2
    assert tick_digits([-0.01, 0.0, 0.01, 0.02], 100) == 0
    assert tick_digits([0.0, 2.5, 5.0], 1) == 1


def test_relative_budgets_are_labelled_as_a_share_of_control() -> None:
    from ab_pipeline.report.brief import _budget_line

    metric = {"arms": {"control": {"value": 52.4}}}
    check = {"budget": 0.05, "budget_kind": "max_relative_decrease"}
    value, label = _budget_line(check, metric, "control", "mean")  # type: ignore[misc]
    assert value == pytest.approx(-2.62)
    assert label == "budget -5.0% (-2.62)"


def test_the_mail_html_carries_its_styles_inline() -> None:
    from ab_pipeline.report.delivery import build_message

    for kind in ("ship", "rerun"):
        results = load(kind)
        message = build_message(results, render_brief(results), "readouts@example.com")
        html = message.get_body(preferencelist=("html",)).get_content()
        assert "<style" not in html.lower() and "stylesheet" not in html.lower()
        styled = {"body", "div", "p", "h1", "h2", "table", "th", "td", "ul", "img"}
        bare = [
            t for t, attrs in TagCollector.of(html) if t in styled and not dict(attrs).get("style")
        ]
        assert bare == [], bare


def test_a_discrete_primary_says_why_it_has_no_standard_error_or_p_value() -> None:
    from ab_pipeline.stats.statistics import DISCRETE_NOTE

    results = load("ship")
    primary = next(m for m in results["metrics"].values() if m["role"] == "primary")
    for comparison in primary["comparisons"].values():
        comparison.update(discrete=True, note=DISCRETE_NOTE, se=None, p_value=None)
    brief = render_brief(results)
    for body in readable(brief):
        assert f"Discrete metric: {DISCRETE_NOTE}" in body
    assert "Discrete metric" not in render("ship").text  # only when the comparison is discrete
