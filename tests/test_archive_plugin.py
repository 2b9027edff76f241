"""The briefs archive served by a real `airflow api-server` through plugins/ab_briefs.py.

One api-server per module (SQLite metadata db in tmp, the repo's plugins folder, a free port,
SimpleAuthManager with one configured user): authenticated requests read the index, a brief
and its results.json; unauthenticated or forged ones are refused; hostile text stays text.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.brief import write_brief
from tests.local_services import free_port

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
USER, PASSWORD = "reader", "archive-test-password"
KINDS = ["continue", "ship", "iterate", "stop", "rerun", "hostile"]

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Server:
    base: str
    token: str
    briefs: Path


def fill_archive(briefs: Path) -> None:
    """One experiment per fixture kind, two readouts for the SHIP one (latest must win)."""
    for kind in KINDS:
        results = json.loads((FIXTURES / f"results_{kind}.json").read_text())
        results["experiment"] = f"exp-{kind}"
        run_dir = briefs / results["experiment"] / results["run_date"]
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps(results))
        write_brief(results, run_dir)
    earlier = json.loads((FIXTURES / "results_continue.json").read_text())
    earlier["experiment"] = "exp-ship"
    (briefs / "exp-ship" / earlier["run_date"]).mkdir()
    (briefs / "exp-ship" / earlier["run_date"] / "results.json").write_text(json.dumps(earlier))


def request(url: str, token: str | None = None, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    req = urllib.request.Request(url, headers=headers, **kwargs)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


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


def test_unauthenticated_requests_are_refused(server: Server) -> None:
    for path in (
        "/ab-briefs/",
        "/ab-briefs/exp-ship/2026-05-31/brief.html",
        "/ab-briefs/exp-ship/2026-05-31/results.json",
    ):
        status, _, body = request(server.base + path)
        assert status in (401, 403), (path, status)
        assert b"refund" not in body
        forged, _, _ = request(server.base + path, token="not-a-jwt")
        assert forged in (401, 403), (path, forged)
    # The UI's session cookie is accepted in place of the header (the nav link relies on it).
    status, _, _ = request(server.base + "/ab-briefs/", headers={"Cookie": "_token=forged"})
    assert status in (401, 403)


def test_index_lists_experiments_with_their_latest_decision(server: Server) -> None:
    status, headers, body = request(server.base + "/ab-briefs/", server.token)
    assert status == 200, body[:500]
    html = body.decode()
    for kind in KINDS:
        assert f"exp-{kind}" in html
    ship_row = html[html.index("exp-ship/") :].split("</tr>")[0]
    assert "SHIP" in ship_row and "2026-05-31" in ship_row  # not the earlier CONTINUE
    assert "script-src" not in headers["content-security-policy"]
    assert "default-src 'none'" in headers["content-security-policy"]
    cookie, _, _ = request(
        server.base + "/ab-briefs/", headers={"Cookie": f"_token={server.token}"}
    )
    assert cookie == 200


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
    status, _, body = request(server.base + "/ab-briefs/", server.token)
    html = body.decode()
    assert "<script" not in html.lower() and "&lt;script&gt;" in html  # the hostile title
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
