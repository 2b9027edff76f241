"""The archive's portfolio page (`/ab-briefs/`) in a real headless Chromium, served by a real
`airflow api-server` (the `server` fixture of tests/test_archive_plugin.py).

At a phone's 400 px and a desktop's 1,400 px: the page never scrolls sideways (only the table's
own container may), the decision and owner filters work by submitting the plain HTML form and
following the decision links, and a browser without an Airflow session lands on Airflow's login
page, signs in there and comes back to the page it asked for. Screenshots go to the test's tmp
dir; with AB_PIPELINE_UPDATE_SCREENSHOTS=1 they also replace docs/screenshots/archive-<width>.png.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.sync.client import connect

from tests.browser.conftest import PageRun, Tab
from tests.test_archive_plugin import EXPERIMENTS, GROWTH, PASSWORD, USER, Server, server

__all__ = ["server"]  # the api-server fixture, shared with the plugin's HTTP tests

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow

LAYOUT = """({
  page: document.documentElement.scrollWidth,
  viewport: window.innerWidth,
  visible: document.documentElement.clientWidth,
  bodyOverflow: document.body.scrollWidth > document.documentElement.clientWidth,
  table: document.querySelector('.scroll').scrollWidth,
  tableBox: document.querySelector('.scroll').clientWidth,
  estimatesRight: Math.max(...[...document.querySelectorAll('td[data-label=Primary]')]
    .map(td => td.getBoundingClientRect().right)),
  rows: [...document.querySelectorAll('tr[data-experiment]')].map(r => r.dataset.experiment),
})"""


def wait_until(tab: Tab, condition: str, timeout: float = 20) -> Any:
    """Evaluate a JavaScript expression until it is truthy (across navigations); its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = evaluate(tab, f"(() => {{ try {{ return {condition}; }} catch (e) {{}} }})()")
        except RuntimeError:  # the page navigated while the expression ran
            value = None
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {condition} at {evaluate(tab, 'location.href')}")


@contextmanager
def browser_tab(chromium: Any, width: int, session: str | None, base: str) -> Iterator[Tab]:
    """A new tab at `width` px; with the Airflow session cookie `session`, or with none."""
    url = f"http://127.0.0.1:{chromium.port}/json/new?about:blank"
    with urllib.request.urlopen(urllib.request.Request(url, method="PUT"), timeout=10) as r:
        target = json.load(r)
    try:
        with connect(target["webSocketDebuggerUrl"], max_size=64 * 2**20) as ws:
            tab = Tab(ws, PageRun())
            for domain in ("Page", "Runtime", "Network"):
                tab.send(f"{domain}.enable")
            tab.send("Network.clearBrowserCookies")
            if session:
                tab.send("Network.setCookie", name="_token", value=session, url=base)
            tab.send(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=900,
                deviceScaleFactor=1,
                mobile=width <= 600,  # a phone: the viewport meta tag applies, no scrollbar
            )
            yield tab
    finally:
        close = f"http://127.0.0.1:{chromium.port}/json/close/{target['id']}"
        urllib.request.urlopen(close, timeout=10).read()


def navigate(tab: Tab, url: str) -> None:
    tab.send("Page.navigate", url=url)
    tab.wait_for("Page.loadEventFired")


def click(tab: Tab, selector: str) -> None:
    """Click like a reader would, then wait for the page it leads to."""
    tab.send(
        "Runtime.evaluate", expression=f"document.querySelector({json.dumps(selector)}).click()"
    )
    tab.wait_for("Page.loadEventFired")


def evaluate(tab: Tab, expression: str) -> Any:
    return tab.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get(
        "value"
    )


@pytest.mark.parametrize("width", [400, 1400])
def test_portfolio_fits_the_screen(
    width: int, server: Server, chromium: Any, tmp_path: Path
) -> None:
    with browser_tab(chromium, width, server.token, server.base) as tab:
        navigate(tab, server.base + "/ab-briefs/")
        layout = evaluate(tab, LAYOUT)
        text = evaluate(tab, "document.body.innerText")
        shot = tab.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        errors, exceptions = tab.run.console_errors, tab.run.exceptions
    screenshot = base64.b64decode(shot["data"])
    assert screenshot.startswith(PNG) and len(screenshot) > 10_000
    (tmp_path / f"archive-{width}.png").write_bytes(screenshot)
    if os.environ.get("AB_PIPELINE_UPDATE_SCREENSHOTS"):
        (SCREENSHOTS / f"archive-{width}.png").write_bytes(screenshot)

    assert layout["viewport"] == width
    # No sideways scrolling: the page is no wider than what is visible of it.
    assert layout["page"] <= layout["visible"] and not layout["bodyOverflow"], layout
    # Nothing to scroll sideways at all: a phone gets one card per experiment.
    assert layout["table"] <= layout["tableBox"], layout
    assert layout["estimatesRight"] <= width, layout  # every estimate is on screen
    assert sorted(layout["rows"]) == EXPERIMENTS
    assert "Experiments: latest decisions" in text and "SHIP" in text and "+4.0 pp" in text
    assert "<script>" in text  # the hostile title is shown as text ...
    assert errors == [] and exceptions == [] and tab.run.dialogs == []  # ... and never run


def test_filters_work_in_the_browser(server: Server, chromium: Any) -> None:
    with browser_tab(chromium, 400, server.token, server.base) as tab:
        navigate(tab, server.base + "/ab-briefs/")
        # The form: pick an owner, submit; the page comes back filtered, the choice kept.
        evaluate(tab, f"document.querySelector('select[name=owner]').value = {GROWTH!r}")
        click(tab, "form button[type=submit]")
        layout = evaluate(tab, LAYOUT)
        assert layout["rows"] == ["exp-iterate"], layout
        assert parse_qs(urlsplit(evaluate(tab, "location.href")).query) == {"owner": [GROWTH]}
        assert evaluate(tab, "document.querySelector('select[name=owner]').value") == GROWTH
        # A decision link: SHIP across every owner, then back to everything.
        click(tab, "form a[href='./']")
        click(tab, ".chips a[href='?decision=SHIP']")
        assert sorted(evaluate(tab, LAYOUT)["rows"]) == ["exp-hostile", "exp-ship"]
        assert evaluate(tab, "document.querySelector('select[name=decision]').value") == "SHIP"
        click(tab, ".chips a:first-child")
        assert sorted(evaluate(tab, LAYOUT)["rows"]) == EXPERIMENTS
        assert tab.run.console_errors == [] and tab.run.exceptions == []


def test_without_a_session_the_login_brings_the_reader_back(server: Server, chromium: Any) -> None:
    page = "/ab-briefs/?decision=SHIP"
    with browser_tab(chromium, 400, None, server.base) as tab:
        navigate(tab, server.base + page)
        location = urlsplit(evaluate(tab, "location.href"))
        assert location.path == "/auth/login", location
        assert parse_qs(location.query)["next"] == [page]
        assert "Experiments: latest decisions" not in evaluate(tab, "document.body.innerText")
        # Airflow's own sign-in form (SimpleAuthManager here), filled in as a person would.
        wait_until(tab, "!!document.querySelector('input[type=password]')")
        for selector, value in (
            ("input:not([type=password])", USER),
            ("input[type=password]", PASSWORD),
        ):
            evaluate(tab, f"document.querySelector({json.dumps(selector)}).focus()")
            tab.send("Input.insertText", text=value)
        evaluate(tab, "document.querySelector('button[type=submit]').click()")
        rows = wait_until(
            tab,
            "location.pathname === '/ab-briefs/' && "
            "[...document.querySelectorAll('tr[data-experiment]')].map(r => r.dataset.experiment)",
        )
        assert sorted(rows) == ["exp-hostile", "exp-ship"]
        assert parse_qs(urlsplit(evaluate(tab, "location.href")).query) == {"decision": ["SHIP"]}
