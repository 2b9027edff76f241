"""Every decision kind's archived brief, opened in a real headless Chromium.

Asserts what a reader would see: the page loads without console errors or exceptions, no
script from a hostile payload runs (no dialog, no injected element), every chart image decodes,
and the key numbers are in the rendered text. Screenshots are written to the test's tmp dir;
with AB_PIPELINE_UPDATE_SCREENSHOTS=1 they also replace docs/screenshots/<kind>.png.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.brief import write_brief

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
    "stop": ["STOP", "+212.0", "+259.4", "max increase 150.0", "FAIL", "check started failing"],
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
    if os.environ.get("AB_PIPELINE_UPDATE_SCREENSHOTS") and kind != "hostile":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / f"{kind}.png").write_bytes(run.screenshot)

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
