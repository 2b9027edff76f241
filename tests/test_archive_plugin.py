"""The briefs archive served by a real `airflow api-server` through plugins/ab_briefs.py.

One api-server per module (SQLite metadata db in tmp, the repo's plugins folder, a free port,
SimpleAuthManager with one configured user): authenticated requests read the portfolio index
(decision, status, days left, primary estimate, owner; filters), a brief and its results.json;
browsers without a session are sent to Airflow's login, forged tokens are refused; hostile text
stays text and no page names a server path.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from ab_pipeline.report.brief import write_brief
from tests.local_services import free_port

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
USER, PASSWORD = "reader", "archive-test-password"
KINDS = ["continue", "ship", "iterate", "stop", "rerun", "hostile"]
GROWTH = "growth@example.com"  # a second owner, for the owner filter
# Every experiment in the archive: one per fixture kind and one whose results.json is garbled.
EXPERIMENTS = sorted([f"exp-{kind}" for kind in KINDS] + ["exp-broken"])
OWNER_DECISION = {
    "run_date": "2026-05-31",
    "decision": "ITERATE",
    "by": "lead@example.com",
    "note": "<b>one more</b> week",
    "follow_up": "2026-06-14",
    "recorded_at": "2026-06-01T09:00:00Z",
    "pipeline_decision": "STOP",
    "disagrees": True,
}
DAYS_LEFT = 19  # exp-continue's planned end, counted from today

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Server:
    base: str
    token: str
    briefs: Path


def today() -> Any:
    return datetime.now(UTC).date()


def fill_archive(briefs: Path) -> None:
    """One experiment per fixture kind, two readouts for the SHIP one (latest must win).

    exp-continue is still running (its end DAYS_LEFT days from today); exp-iterate has its own
    owner; exp-stop's owner recorded a decision; exp-broken's results.json is hand-garbled.
    """
    for kind in KINDS:
        results = json.loads((FIXTURES / f"results_{kind}.json").read_text())
        results["experiment"] = f"exp-{kind}"
        if kind == "continue":
            results["end"] = (today() + timedelta(days=DAYS_LEFT)).isoformat()
        if kind == "iterate":
            results["owner"] = GROWTH
        if kind == "stop":
            results["human_decisions"] = [OWNER_DECISION]
        run_dir = briefs / results["experiment"] / results["run_date"]
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps(results))
        write_brief(results, run_dir)
    earlier = json.loads((FIXTURES / "results_continue.json").read_text())
    earlier["experiment"] = "exp-ship"
    (briefs / "exp-ship" / earlier["run_date"]).mkdir()
    (briefs / "exp-ship" / earlier["run_date"] / "results.json").write_text(json.dumps(earlier))
    garbled = {"decision": "ITERATE", "metrics": "oops", "end": 12, "human_decisions": "x"}
    (briefs / "exp-broken" / "2026-05-20").mkdir(parents=True)
    (briefs / "exp-broken" / "2026-05-20" / "results.json").write_text(json.dumps(garbled))


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx surfaces as an HTTPError, to be inspected


def request(
    url: str, token: str | None = None, follow: bool = True, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    req = urllib.request.Request(url, headers=headers, **kwargs)
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(NoRedirects)
    try:
        with opener.open(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def row_text(page: str, experiment: str) -> str:
    """The visible text of one experiment's row in the portfolio table."""
    start = page.index(f'<tr data-experiment="{experiment}">')
    row = page[start : page.index("</tr>", start)]
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row))).strip()


def listed(page: str) -> list[str]:
    return re.findall(r'<tr data-experiment="([^"]+)">', page)


def wait_for_token(base: str, process: subprocess.Popen[bytes], log: Path) -> str:
    body = json.dumps({"username": USER, "password": PASSWORD}).encode()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"api-server exited: {log.read_text()[-3000:]}")
        try:
            status, _, data = request(
                f"{base}/auth/token",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
        except OSError:
            time.sleep(0.5)
            continue
        if status in (200, 201):
            return str(json.loads(data)["access_token"])
        time.sleep(0.5)
    pytest.fail(f"api-server did not answer in time: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("archive")
    home, briefs, dags = tmp / "home", tmp / "briefs", tmp / "dags"
    for path in (home, briefs, dags):
        path.mkdir()
    fill_archive(briefs)
    passwords = tmp / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": "archive-test-secret-" + "x" * 32,
        "AB_PIPELINE_BRIEFS_DIR": str(briefs),
        "PYTHONPATH": str(REPO),
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    migrated = subprocess.run(
        [airflow, "db", "migrate"], env=env, cwd=tmp, capture_output=True, text=True, timeout=180
    )
    assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-2000:]
    port = free_port()
    log = tmp / "api-server.log"
    with log.open("wb") as out:
        # Own process group: the server's workers go down with it.
        process = subprocess.Popen(
            [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        yield Server(base, wait_for_token(base, process, log), briefs)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)


def test_browsers_without_a_session_are_sent_to_the_login(server: Server) -> None:
    for path in (
        "/ab-briefs/?decision=SHIP&owner=a%26b+c",
        "/ab-briefs/exp-ship/",
        "/ab-briefs/exp-ship/2026-05-31/brief.html",
        "/ab-briefs/exp-ship/2026-05-31/results.json",
    ):
        # No credentials at all, or an expired/forged session cookie: the login, then back.
        for headers in ({}, {"Cookie": "_token=forged"}):
            status, response, body = request(server.base + path, follow=False, headers=headers)
            assert status == 303, (path, headers, status)
            location = urlsplit(response["location"])
            assert location.path == "/api/v2/auth/login" and not location.netloc
            assert parse_qs(location.query) == {"next": [path]}  # the page, as a path
            assert b"refund" not in body.lower() and b"SHIP" not in body
    # Airflow's own login route accepts that `next` and hands over to the auth manager's page.
    status, response, _ = request(server.base + "/ab-briefs/", follow=False)
    status, response, _ = request(server.base + response["location"], follow=False)
    assert status in (302, 307), status
    assert response["location"].startswith("/auth/login?next=%2Fab-briefs%2F")


def test_api_clients_with_bad_credentials_are_refused(server: Server) -> None:
    for path in ("/ab-briefs/", "/ab-briefs/exp-ship/2026-05-31/results.json"):
        status, _, body = request(server.base + path, token="not-a-jwt", follow=False)
        assert status in (401, 403), (path, status)
        assert b"refund" not in body.lower()


def test_index_is_a_portfolio_of_latest_decisions(server: Server) -> None:
    status, headers, body = request(server.base + "/ab-briefs/", server.token)
    assert status == 200, body[:500]
    page = body.decode()
    # What needs attention first: RERUN, STOP, SHIP, ITERATE, CONTINUE; newest readout first.
    assert listed(page) == [
        "exp-rerun",
        "exp-stop",
        "exp-ship",
        "exp-hostile",
        "exp-iterate",
        "exp-broken",
        "exp-continue",
    ]

    ship = row_text(page, "exp-ship")  # the latest of its two readouts wins
    assert "SHIP" in ship and "2026-05-31" in ship and "CONTINUE" not in ship
    comparison = json.loads((FIXTURES / "results_ship.json").read_text())["metrics"][
        "resolution_rate"
    ]["comparisons"]["treatment"]
    low, high = (100 * x for x in comparison["ci"])
    expected = (
        f"treatment: {100 * comparison['absolute']:+.1f} pp [{low:+.1f} pp, {high:+.1f} pp] "
        f"{100 * comparison['relative']:+.1f}%"
    )
    assert "resolution_rate" in ship and expected in ship, ship
    assert "final" in ship and "ended 2026-05-31" in ship and "support-ml@example.com" in ship
    assert "2 readouts" in ship

    running = row_text(page, "exp-continue")
    assert "CONTINUE" in running and "running" in running and f"{DAYS_LEFT} days" in running
    rerun = row_text(page, "exp-rerun")
    assert "RERUN" in rerun.split() and "no estimate (gate failed)" in rerun
    assert GROWTH in row_text(page, "exp-iterate")
    # The owner's recorded decision shows under the pipeline's, escaped; a garbled
    # results.json costs its row's details, not the page.
    assert "lead@example.com decided ITERATE (differs)" in row_text(page, "exp-stop")
    assert 'title="&lt;b&gt;one more&lt;/b&gt; week"' in page
    broken = row_text(page, "exp-broken")
    assert broken.startswith("exp-broken ITERATE interim —") and "no estimate" in broken

    # Each decision has its colour; the links go to the latest brief and results.json.
    assert 'style="background:#1a7f37" title="' in page.split('data-experiment="exp-ship"')[1]
    assert 'style="background:#cf222e"' in page.split('data-experiment="exp-stop"')[1]
    assert 'href="exp-ship/2026-05-31/brief.html"' in page
    assert 'href="exp-ship/2026-05-31/results.json"' in page
    assert "script-src" not in headers["content-security-policy"]
    assert "default-src 'none'" in headers["content-security-policy"]
    cookie, _, _ = request(
        server.base + "/ab-briefs/", headers={"Cookie": f"_token={server.token}"}
    )
    assert cookie == 200


def test_filters_by_decision_and_owner(server: Server) -> None:
    def shown(query: str) -> list[str]:
        status, _, body = request(server.base + "/ab-briefs/" + query, server.token)
        assert status == 200, body[:300]
        return sorted(listed(body.decode()))

    assert shown("?decision=SHIP") == ["exp-hostile", "exp-ship"]
    assert shown("?decision=ship") == ["exp-hostile", "exp-ship"]
    assert shown(f"?owner={GROWTH}") == ["exp-iterate"]
    assert shown("?owner=a%26b+%3Cevil%40example.com%3E") == ["exp-hostile"]
    assert shown("?decision=SHIP&owner=support-ml%40example.com") == ["exp-ship"]
    assert shown("?decision=STOP&owner=" + GROWTH) == []
    assert shown("?decision=&owner=") == EXPERIMENTS
    assert shown("?decision=ITERATE") == ["exp-broken", "exp-iterate"]
    status, _, body = request(server.base + "/ab-briefs/?decision=NOPE", server.token)
    assert "No experiment matches these filters." in body.decode()
    # The filter links keep the other filter: SHIP for GROWTH's owner is a count of 0.
    _, _, body = request(server.base + f"/ab-briefs/?owner={GROWTH}", server.token)
    assert '<a href="?decision=ITERATE&amp;owner=growth%40example.com"' in body.decode()


def test_no_page_names_a_server_path(server: Server) -> None:
    root = str(server.briefs.parent)
    for path in ("/ab-briefs/", "/ab-briefs/exp-ship/", "/ab-briefs/?decision=RERUN"):
        status, _, body = request(server.base + path, server.token)
        assert status == 200
        assert root not in body.decode() and "/tmp" not in body.decode(), path
    for missing in ("/ab-briefs/nope/", "/ab-briefs/exp-ship/2026-01-01/brief.html"):
        status, _, body = request(server.base + missing, server.token)
        assert status == 404 and root not in body.decode()


def test_each_brief_and_results_json_are_served(server: Server) -> None:
    status, _, body = request(server.base + "/ab-briefs/exp-ship/", server.token)
    assert status == 200 and b"2026-05-12" in body and b"2026-05-31" in body
    status, _, body = request(
        server.base + "/ab-briefs/exp-ship/2026-05-31/brief.html", server.token
    )
    assert status == 200
    assert body == (server.briefs / "exp-ship/2026-05-31/brief.html").read_bytes()
    assert b"data:image/png;base64," in body
    status, headers, body = request(
        server.base + "/ab-briefs/exp-stop/2026-05-31/results.json", server.token
    )
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["decision"] == "STOP"
    for missing in (
        "/ab-briefs/exp-ship/2026-01-01/brief.html",
        "/ab-briefs/..%2Fhome/x/",
        "/ab-briefs/exp-ship/..%2F..%2Fpasswords/results.json",
    ):
        status, _, _ = request(server.base + missing, server.token)
        assert status == 404, missing


def test_hostile_text_stays_text_in_the_archive(server: Server) -> None:
    status, _, body = request(
        server.base + "/ab-briefs/?owner=a%26b+%3Cevil%40example.com%3E", server.token
    )
    page = body.decode()
    assert "<script" not in page.lower() and "&lt;script&gt;" in page  # the hostile title
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page  # an arm
    assert '<option value="a&amp;b &lt;evil@example.com&gt;" selected>' in page  # the owner
    status, _, body = request(
        server.base + "/ab-briefs/exp-hostile/2026-05-31/brief.html", server.token
    )
    assert status == 200 and b"<script" not in body.lower() and b"<img src=x" not in body


def test_navigation_link_is_registered(server: Server) -> None:
    status, _, body = request(server.base + "/api/v2/plugins", server.token)
    assert status == 200, body[:300]
    [plugin] = [p for p in json.loads(body)["plugins"] if p["name"] == "ab_briefs"]
    [view] = plugin["external_views"]
    assert view["href"] == "/ab-briefs/" and view["destination"] == "nav"
