"""Every decision kind's archived brief, opened in a real headless Chromium.

Asserts what a reader would see: the page loads without console errors or exceptions, no
script from a hostile payload runs (no dialog, no injected element), every chart image decodes,
and the key numbers are in the rendered text. Screenshots are written to the test's tmp dir;
with AB_PIPELINE_UPDATE_SCREENSHOTS=1 the real pipeline outputs' ones also replace
docs/screenshots/<kind>.png (1,400 px wide) and <kind>-phone.png (400 px).
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.report.brief import render_brief, write_brief
from ab_pipeline.report.charts import PIXEL_RATIO
from tests.browser.real_runs import run_dir

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
SCREENSHOTS = REPO / "docs" / "screenshots"
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow

# The numbers a reader must find in each brief's rendered text.
KEY_TEXT: dict[str, list[str]] = {
    "ship": [
        "SHIP",
        "840 of 2,000 customer_accounts (42.0%) vs 760 of 2,000 (38.0%)",
        "+4.0 pp",
        "[+1.0 pp, +7.0 pp]",
        "+10.5%",
        "lies above zero and straddles the shipping threshold +2.0 pp",
        "The planned sample is reached",
        "INTERIM",  # earlier readouts in the trajectory
        "newly significant",
    ],
    "iterate": ["ITERATE", "+0.9 pp", "[-0.4 pp, +2.2 pp]", "includes zero", "first readout"],
    "stop": ["STOP", "+212.0", "+259.4", "max increase 150.0", "FAIL", "HARMED"],
    "rerun": [
        "RERUN",
        "What failed, and what to look at",
        "3,050",
        "3,738",
        "6.8e-17",
        "treatmnet",
        "android",
        "1.2e-28",
        "acct-10293",
        "gate started failing",
    ],
    "continue": [
        "CONTINUE",
        "INTERIM LOOK",
        "22% of the planned 9,246 units per arm",
        "About 33 more days",
        "Days until the planned end: 19",
    ],
    "hostile": ["<script>alert('x')</script>", "<img src=x onerror=alert(1)>"],
}
# Elements only a payload could have added to the DOM.
INJECTED = (
    "[...document.querySelectorAll('script, iframe, object, embed, i, b')].length"
    " + [...document.images].filter(i => !i.src.startsWith('data:image/png')).length"
)


def archived_brief(kind: str, root: Path) -> Path:
    results: dict[str, Any] = json.loads((FIXTURES / f"results_{kind}.json").read_text())
    run_dir = root / results["experiment"] / results["run_date"]
    return write_brief(results, run_dir)["html"]


@pytest.mark.parametrize("kind", list(KEY_TEXT))
def test_brief_renders_in_chromium(kind: str, chromium: Any, tmp_path: Path) -> None:
    page = archived_brief(kind, tmp_path / "briefs")
    run = chromium.open(page.as_uri(), probe=INJECTED)

    assert run.screenshot.startswith(PNG) and len(run.screenshot) > 10_000
    (tmp_path / f"{kind}.png").write_bytes(run.screenshot)

    assert run.console_errors == [] and run.exceptions == []
    assert run.dialogs == [], "a payload's script ran"
    assert run.probe == 0, "a payload added elements to the page"
    assert all(image["complete"] and image["width"] > 0 for image in run.images), run.images
    if kind != "rerun":
        assert run.images, "the effects chart is missing"
    else:
        assert run.images == []  # a RERUN shows no effect estimates, charted or not
    text = " ".join(run.text.split())
    for expected in KEY_TEXT[kind]:
        assert " ".join(expected.split()) in text, expected


# ---- real pipeline outputs, on a phone and on a desktop -------------------------------------

WIDTHS = (400, 1400)
REAL_KINDS = ("ship", "iterate", "stop", "rerun", "continue", "continue-early")
LAYOUT = (
    "({scroll: document.documentElement.scrollWidth, inner: window.innerWidth,"
    " images: [...document.images].map(i => ({alt: i.alt, shown: i.getBoundingClientRect().width,"
    " natural: i.naturalWidth}))})"
)
# What a reader must find in each real brief, and what must never show.
REAL_TEXT: dict[str, list[str]] = {
    "ship": ["SHIP", "data-quality checks passed", "Holm correction over 1 treatment arm"],
    "iterate": ["ITERATE", "moved +3.7 pp, less than the required +5.0 pp (min_lift)"],
    "stop": ["STOP", "p95_latency_ms rose 77.93", "beyond the budget", "HARMED"],
    "rerun": ["RERUN", "What failed, and what to look at", "not applicable"],
    "continue": ["CONTINUE", "INTERIM LOOK"],
    "continue-early": ["CONTINUE", "have all completed it by the readout of 2026-04-09"],
}
NEVER = ["{'", "NOT RUN", "This gate did not run", "breached"]


@pytest.fixture(scope="module")
def real(
    real_pipeline_runs: tuple[Path, dict[str, dict[str, Any]]],
) -> tuple[Path, dict[str, dict[str, Any]]]:
    return real_pipeline_runs


def check_layout(run: Any, charts: dict[str, Any], width: int) -> None:
    """No sideways scrolling of the page; every chart scaled to fit with readable text."""
    layout = run.probe
    assert layout["scroll"] <= layout["inner"] == width, layout
    for image in layout["images"]:
        chart = charts[image["alt"]]
        assert image["natural"] == chart.width * PIXEL_RATIO
        font_px = image["shown"] / chart.width * chart.min_font_px
        assert font_px >= 11, (image, font_px)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kind", REAL_KINDS)
def test_real_brief_reads_on_a_phone_and_a_desktop(
    kind: str, width: int, real: Any, chromium: Any, tmp_path: Path
) -> None:
    root, results = real
    page = run_dir(root, kind, results[kind]) / "brief.html"
    run = chromium.open(page.as_uri(), width=width, probe=LAYOUT)

    assert run.console_errors == [] and run.exceptions == []
    assert all(image["complete"] and image["width"] > 0 for image in run.images), run.images
    charts = {c.alt: c for c in render_brief(results[kind]).images}
    assert len(run.images) == len(charts)
    assert (kind in ("rerun", "continue-early")) == (not charts)  # no estimate, no chart
    check_layout(run, charts, width)
    text = " ".join(run.text.split())
    for expected in REAL_TEXT[kind]:
        assert expected in text, expected
    for wrong in NEVER:
        assert wrong not in text, wrong
    (tmp_path / f"{kind}-{width}.png").write_bytes(run.screenshot)
    if os.environ.get("AB_PIPELINE_UPDATE_SCREENSHOTS") and kind in KEY_TEXT:
        name = f"{kind}.png" if width > 1000 else f"{kind}-phone.png"
        (SCREENSHOTS / name).write_bytes(run.screenshot)


def email_as_page(eml: Path, out: Path) -> Path:
    """The mail's HTML part with its cid: images swapped for data: URIs, as a file to open."""
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    html_part = message.get_body(preferencelist=("html",))
    assert html_part is not None
    html = html_part.get_content()
    for part in message.walk():
        if part.get_content_type() == "image/png":
            cid = str(part["Content-ID"]).strip("<>")
            data = base64.b64encode(part.get_payload(decode=True)).decode("ascii")
            html = html.replace(f"cid:{cid}", f"data:image/png;base64,{data}")
    # A client that strips <style> blocks sees the same page: there must be none to strip.
    assert "<style" not in html.lower()
    out.write_text(html, encoding="utf-8")
    return out


@pytest.mark.parametrize("kind", ["ship", "stop", "rerun"])
def test_real_email_reads_on_a_phone(kind: str, real: Any, chromium: Any, tmp_path: Path) -> None:
    root, results = real
    page = email_as_page(run_dir(root, kind, results[kind]) / "brief.eml", tmp_path / "mail.html")
    run = chromium.open(page.as_uri(), width=400, probe=LAYOUT)
    assert run.console_errors == [] and run.exceptions == []
    assert all(image["complete"] and image["width"] > 0 for image in run.images), run.images
    check_layout(run, {c.alt: c for c in render_brief(results[kind]).images}, 400)
    assert results[kind]["decision"] in run.text
    (tmp_path / f"mail-{kind}-400.png").write_bytes(run.screenshot)
