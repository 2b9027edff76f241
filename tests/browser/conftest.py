"""A headless Chromium driven over the DevTools protocol (a small CDP client on `websockets`).

One browser per test module; each page gets a fresh tab. What a page did is collected from CDP
events: console errors, uncaught exceptions, JavaScript dialogs (a payload's `alert()` would
open one) and failed image loads. Needs Debian's `chromium` (`make test` installs it).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",  # the browser picks a free port and writes it to a file
    "about:blank",
]


@dataclass
class PageRun:
    """What happened while a page loaded."""

    text: str = ""
    screenshot: bytes = b""
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    probe: Any = None


class Tab:
    """One page target's websocket: send commands, collect events until a reply arrives."""

    def __init__(self, ws: ClientConnection, run: PageRun) -> None:
        self.ws, self.run, self.ids = ws, run, itertools.count(1)

    def send(self, method: str, timeout: float = 20, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.record(message)

    def wait_for(self, event: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            self.record(message)
            if message.get("method") == event:
                return

    def record(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.run.console_errors.append(json.dumps(params.get("args"))[:300])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.run.console_errors.append(params["entry"].get("text", "")[:300])
        elif method == "Runtime.exceptionThrown":
            self.run.exceptions.append(json.dumps(params.get("exceptionDetails"))[:300])
        elif method == "Page.javascriptDialogOpening":
            self.run.dialogs.append(params.get("message", ""))
            # Dismiss it, or the page would hang waiting for a click.
            self.ws.send(
                json.dumps(
                    {
                        "id": next(self.ids),
                        "method": "Page.handleJavaScriptDialog",
                        "params": {"accept": False},
                    }
                )
            )


class Chromium:
    def __init__(self, workdir: Path) -> None:
        profile = workdir / "profile"  # a fresh profile: no state from earlier runs
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS[:-1], f"--user-data-dir={profile}", FLAGS[-1]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.port = self._devtools_port(profile / "DevToolsActivePort")

    def _devtools_port(self, path: Path) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("chromium exited at start-up")
            if path.is_file() and (lines := path.read_text().splitlines()):
                return int(lines[0])
            time.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    def _new_target(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/json/new?about:blank"
        with urllib.request.urlopen(urllib.request.Request(url, method="PUT"), timeout=10) as r:
            return dict(json.load(r))

    def open(self, url: str, width: int = 900, probe: str | None = None) -> PageRun:
        """Load `url` in a new tab; return its text, a full-page screenshot and what went wrong."""
        target, run = self._new_target(), PageRun()
        with connect(target["webSocketDebuggerUrl"], max_size=64 * 2**20) as ws:
            tab = Tab(ws, run)
            for domain in ("Page", "Runtime", "Log"):
                tab.send(f"{domain}.enable")
            tab.send(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=800,
                deviceScaleFactor=1,
                mobile=False,
            )
            tab.send("Page.navigate", url=url)
            tab.wait_for("Page.loadEventFired")
            run.text = self.evaluate(tab, "document.body.innerText")
            run.images = self.evaluate(
                tab,
                "[...document.images].map(i => ({src: i.src.slice(0, 40), alt: i.alt,"
                " complete: i.complete, width: i.naturalWidth}))",
            )
            if probe:
                run.probe = self.evaluate(tab, probe)
            shot = tab.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            run.screenshot = base64.b64decode(shot["data"])
            # Let late events (errors from deferred work) arrive before the tab closes.
            tab.send(
                "Runtime.evaluate",
                expression="new Promise(r => setTimeout(r, 100))",
                awaitPromise=True,
            )
        close = f"http://127.0.0.1:{self.port}/json/close/{target['id']}"
        urllib.request.urlopen(close, timeout=10).read()
        return run

    @staticmethod
    def evaluate(tab: Tab, expression: str) -> Any:
        result = tab.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make test` (it installs it) as root")
    browser = Chromium(tmp_path_factory.mktemp("chromium"))
    try:
        yield browser
    finally:
        browser.close()
