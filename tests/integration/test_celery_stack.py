"""The product on Airflow's real distributed machinery (see stack.py), against PostgreSQL.

One experiment DAG is triggered through the REST API and backfilled with `airflow backfill
create` over two dates; every task must run on the Celery worker, each date must leave one
readout (results.json, brief, results-table rows), and the SMTP server must receive exactly the
manual run's email plus the backfill's latest date's (ab_pipeline.orchestration.backfill): the
earlier date's email is skipped. The warehouse password must appear in no log line or output
file.

The refund scenario's interim readouts (before `end`, no sequential design) are CONTINUE; its
final readout on 2026-05-31 is SHIP (see simulations/refund-query-rewrite.yaml).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.warehouse import Warehouse, dispose_all
from tests.local_services import Inbox, serving_smtp, smtp_connection

from .stack import REPO, Stack, running_stack, wait_for

pytestmark = pytest.mark.slow

CONFIG = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
DAG_ID = "ab_refund_query_rewrite"
SECRET = "it-" + uuid.uuid4().hex[:12]
SERVER = "postgresql://postgres@127.0.0.1:5432"
MANUAL_DATE = "2026-05-20"
BACKFILL = ("2026-05-31", "2026-06-01")  # logical dates -> readouts 5/30, 5/31
BACKFILL_READOUTS = ["2026-05-30", "2026-05-31"]
EXPERIMENT = "refund-query-rewrite"
RECIPIENTS = ["support-leads@example.com"]
EXPECTED = {  # readout date -> (decision, status)
    MANUAL_DATE: ("CONTINUE", "interim"),
    "2026-05-30": ("CONTINUE", "interim"),
    "2026-05-31": ("SHIP", "final"),
}
EMAILED = [MANUAL_DATE, "2026-05-31"]  # the manual run, and the backfill's latest date only


@pytest.fixture(scope="module")
def databases() -> Iterator[tuple[str, str]]:
    """A throwaway metadata database and a throwaway warehouse database."""
    admin = Warehouse(f"{SERVER}/postgres")
    suffix = uuid.uuid4().hex[:8]
    names = (f"ab_it_meta_{suffix}", f"ab_it_wh_{suffix}")
    engine = admin.engine()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        from sqlalchemy import text

        for name in names:
            connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield names
    finally:
        dispose_all()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for name in names:
                connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        dispose_all()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, databases: tuple[str, str]
) -> Iterator[tuple[Stack, Inbox]]:

    from ab_pipeline.devtools.simulate import main_simulate

    metadata_db, warehouse_db = databases
    assert main_simulate(["--warehouse", f"{SERVER}/{warehouse_db}", str(_scenario())]) == 0
    root = tmp_path_factory.mktemp("stack")
    inbox = Inbox()
    with serving_smtp(inbox) as controller:
        env = {
            # The warehouse as a postgres connection URI with a password (trust auth ignores it).
            "AIRFLOW_CONN_AB_WAREHOUSE": (
                f"postgres://postgres:{SECRET}@127.0.0.1:5432/{warehouse_db}"
            ),
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp_connection(controller.port)),
            "AB_PIPELINE_SENDER": "readouts@example.com",
        }
        with running_stack(root, metadata_db, env, [CONFIG]) as running:
            yield running, inbox


def _scenario() -> Path:
    return REPO / "simulations" / "refund-query-rewrite.yaml"


def api(stack: Stack, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.api_port}/api/v2{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def api_up(stack: Stack) -> bool:
    stack.assert_alive()
    try:
        return api(stack, "GET", f"/dags/{DAG_ID}")["dag_id"] == DAG_ID
    except OSError:
        return False


def runs(stack: Stack) -> list[dict[str, Any]]:
    return list(
        stack.query("SELECT run_id, run_type, state FROM dag_run WHERE dag_id = :d", {"d": DAG_ID})
    )


def all_finished(stack: Stack, expected: int) -> bool:
    stack.assert_alive()
    found = runs(stack)
    return len(found) >= expected and all(r["state"] in ("success", "failed") for r in found)


def test_runs_and_backfill_on_celery(
    stack: tuple[Stack, Inbox], databases: tuple[str, str]
) -> None:
    running, inbox = stack
    began = time.monotonic()
    wait_for("the api-server and the parsed DAG", lambda: api_up(running), timeout=150)
    started = time.monotonic() - began
    api(
        running,
        "POST",
        f"/dags/{DAG_ID}/dagRuns",
        {"logical_date": None, "conf": {"run_date": MANUAL_DATE}},
    )
    running.airflow(
        "backfill", "create", "--dag-id", DAG_ID, "--from-date", BACKFILL[0], "--to-date",
        BACKFILL[1], "--max-active-runs", "1",
    )  # fmt: skip
    wait_for("three DAG runs to finish", lambda: all_finished(running, 3), timeout=420, step=2)
    found = runs(running)
    assert sorted(r["run_type"] for r in found) == ["backfill"] * 2 + ["manual"]
    assert {r["state"] for r in found} == {"success"}, found

    tasks = running.query(
        "SELECT task_id, run_id, state, hostname, queue, executor FROM task_instance "
        "WHERE dag_id = :d",
        {"d": DAG_ID},
    )
    ran = [t for t in tasks if t["state"] == "success"]
    assert ran and {t["hostname"] for t in ran} == {running.worker_name}, tasks
    assert_the_worker_executed(running, ran)

    briefs = running.root / "briefs" / EXPERIMENT
    results = {day: json.loads((briefs / day / "results.json").read_text()) for day in EXPECTED}
    assert [h["run_date"] for h in results["2026-05-31"]["history"]] == [
        MANUAL_DATE,
        *BACKFILL_READOUTS[:1],
    ]
    readouts = assert_results_tables(Warehouse(f"{SERVER}/{databases[1]}"), results)
    for day, (decision, status) in EXPECTED.items():
        assert_brief(briefs / day, day, decision, status, readouts[day])

    # Email: the manual run and the backfill's latest date only.
    skipped = [t for t in tasks if t["task_id"] == "send_email" and t["state"] == "skipped"]
    assert len(skipped) == 1
    wait_for("two emails", lambda: len(inbox.messages) >= 2, timeout=20)
    time.sleep(1)
    assert len(inbox.messages) == 2, inbox.subjects()
    by_date = {
        str(m["Subject"]).rsplit(", ", 1)[-1].rstrip(")"): (to, m) for to, m in inbox.messages
    }
    assert sorted(by_date) == EMAILED, inbox.subjects()
    for day, (recipients, message) in by_date.items():
        assert recipients == RECIPIENTS
        assert_email(message, day, *EXPECTED[day], readouts[day])

    # The warehouse password appears in no log and no output file.
    for path in running.root.rglob("*"):
        if path.is_file() and path.stat().st_size < 20_000_000:
            assert SECRET not in path.read_text(errors="replace"), path
    print(f"stack up in {started:.0f} s, runs done in {time.monotonic() - began:.0f} s")


def assert_the_worker_executed(running: Stack, ran: list[dict[str, Any]]) -> None:
    """The Celery worker's own log names every successful task instance it executed.

    A task instance is marked success by its task process before the worker logs that the
    Celery task returned: the last task's line may come a moment after the run's state, so the
    log is read again until it has a line per task (or 60 s have passed)."""
    succeeded = re.compile(r"Task execute_workload\[[0-9a-f-]+\] succeeded")
    deadline = time.monotonic() + 60
    log = running.log("worker").read_text(errors="replace")
    while len(succeeded.findall(log)) < len(ran) and time.monotonic() < deadline:
        time.sleep(1)
        log = running.log("worker").read_text(errors="replace")
    executed = set(
        re.findall(
            r"Executing workload in Celery: .*?task_id='([^']+)', dag_id='([^']+)', "
            r"run_id='([^']+)'",
            log,
        )
    )
    assert {(t["task_id"], DAG_ID, t["run_id"]) for t in ran} <= executed
    assert len(succeeded.findall(log)) >= len(ran)


def assert_results_tables(
    warehouse: Warehouse, results: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """One ab_readouts row per readout date, equal to that date's results.json, with the
    primary metric's per-arm rows in ab_metric_results; returns the rows by date."""
    rows = warehouse.query(
        "SELECT run_date, decision, status, config_sha256, owner, results_json FROM ab_readouts "
        "WHERE experiment = :e ORDER BY run_date",
        {"e": EXPERIMENT},
    )
    assert [str(r["run_date"]) for r in rows] == sorted(EXPECTED)
    readouts = {}
    for row in rows:
        day = str(row["run_date"])
        stored = json.loads(row["results_json"])
        assert (row["decision"], row["status"]) == EXPECTED[day]
        assert row["config_sha256"] == results[day]["config_sha256"] == stored["config_sha256"]
        assert row["owner"] == "support-ml@example.com"
        assert stored["metrics"] == results[day]["metrics"]
        assert stored["gates"]["srm"] == results[day]["gates"]["srm"]
        readouts[day] = stored
    metric_rows = warehouse.query(
        "SELECT run_date, arm, units, value, absolute, ci_low, ci_high FROM ab_metric_results "
        "WHERE experiment = :e AND metric = 'resolution_rate' ORDER BY run_date, arm",
        {"e": EXPERIMENT},
    )
    assert [(str(r["run_date"]), r["arm"]) for r in metric_rows] == [
        (day, arm) for day in sorted(EXPECTED) for arm in ("control", "treatment")
    ]
    for row in metric_rows:
        primary = readouts[str(row["run_date"])]["metrics"]["resolution_rate"]
        assert row["units"] == primary["arms"][row["arm"]]["units"]
        assert row["value"] == primary["arms"][row["arm"]]["value"]
        if row["arm"] == "treatment":
            comparison = primary["comparisons"]["treatment"]
            assert [row["absolute"], row["ci_low"], row["ci_high"]] == [
                comparison["absolute"],
                *comparison["ci"],
            ]
    return readouts


def counts_phrase(results: dict[str, Any]) -> str:
    """The brief's primary sentence, from the stored readout: treatment first."""
    arms = results["metrics"]["resolution_rate"]["arms"]
    t, c = arms["treatment"], arms["control"]
    treated = f"{t['successes']:,} of {t['units']:,} customer_accounts ({t['value']:.1%})"
    return f"{treated} vs {c['successes']:,} of {c['units']:,} ({c['value']:.1%})"


def assert_brief(
    folder: Path, day: str, decision: str, status: str, results: dict[str, Any]
) -> None:
    text = (folder / "brief.txt").read_text()
    html = (folder / "brief.html").read_text()
    assert text.startswith(f"A/B experiment readout: {EXPERIMENT} v1, run {day}\n"), text[:200]
    assert f"DECISION: {decision}" in text
    for body in (text, html):
        assert counts_phrase(results) in body
        assert results["config_sha256"] in body


def bodies(message: Message) -> dict[str, str]:
    found = {}
    for part in message.walk():
        if part.get_content_type() in ("text/plain", "text/html"):
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            found[part.get_content_type()] = payload.decode(part.get_content_charset() or "utf-8")
    return found


def assert_email(
    message: Message, day: str, decision: str, status: str, results: dict[str, Any]
) -> None:
    assert str(message["Subject"]) == f"[ab-pipeline] {EXPERIMENT}: {decision} ({status}, {day})"
    assert message["X-AB-Experiment"] == EXPERIMENT and message["X-AB-Decision"] == decision
    assert message["From"] == "readouts@example.com"
    text, html = bodies(message)["text/plain"], bodies(message)["text/html"]
    assert f"DECISION: {decision}" in text and f"{EXPERIMENT} v1, run {day}" in text
    for body in (text, html):
        assert counts_phrase(results) in body
        assert "results.json next to this brief" in body
