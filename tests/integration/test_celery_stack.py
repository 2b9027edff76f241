"""The product on Airflow's real distributed machinery (see stack.py), against PostgreSQL.

One experiment DAG is triggered through the REST API and backfilled with `airflow backfill
create` over three dates; every task must run on the Celery worker, each date must leave one
readout (results.json, brief, results-table rows), and the SMTP server must receive exactly the
manual run's email plus the backfill's latest date's (ab_pipeline.backfill). The warehouse
password must appear in no log line or output file.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.warehouse import Warehouse, dispose_all
from tests.local_services import Inbox, serving_smtp, smtp_connection

from .stack import REPO, WORKER_NAME, Stack, running_stack, wait_for

pytestmark = pytest.mark.slow

CONFIG = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
DAG_ID = "ab_refund_query_rewrite"
SECRET = "it-" + uuid.uuid4().hex[:12]
SERVER = "postgresql://postgres@127.0.0.1:5432"
MANUAL_DATE = "2026-05-20"
BACKFILL = ("2026-05-30", "2026-06-01")  # logical dates -> readouts 5/29, 5/30, 5/31
BACKFILL_READOUTS = ["2026-05-29", "2026-05-30", "2026-05-31"]


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

    from ab_pipeline.simulate import main_simulate

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


def test_runs_and_backfill_on_celery(stack: tuple[Stack, Inbox]) -> None:
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
    wait_for("four DAG runs to finish", lambda: all_finished(running, 4), timeout=240, step=2)
    found = runs(running)
    assert sorted(r["run_type"] for r in found) == ["backfill"] * 3 + ["manual"]
    assert {r["state"] for r in found} == {"success"}, found

    tasks = running.query(
        "SELECT task_id, state, hostname, queue, executor FROM task_instance WHERE dag_id = :d",
        {"d": DAG_ID},
    )
    ran = [t for t in tasks if t["state"] == "success"]
    assert ran and {t["hostname"] for t in ran} == {WORKER_NAME}, tasks
    worker_log = running.log("worker").read_text(errors="replace")
    assert "extract" in worker_log or "ExecuteTask" in worker_log

    briefs = running.root / "briefs" / "refund-query-rewrite"
    for day in [MANUAL_DATE, *BACKFILL_READOUTS]:
        assert (briefs / day / "brief.html").exists(), day
    latest = json.loads((briefs / "2026-05-31" / "results.json").read_text())
    assert [h["run_date"] for h in latest["history"]] == [MANUAL_DATE, *BACKFILL_READOUTS[:2]]

    # Email: the manual run and the backfill's latest date only.
    sent = {t["task_id"]: t for t in tasks if t["task_id"] == "send_email"}
    assert sent
    wait_for("two emails", lambda: len(inbox.messages) >= 2, timeout=20)
    time.sleep(1)
    subjects = [str(m["Subject"]) for _, m in inbox.messages]
    assert len(subjects) == 2, subjects
    assert any("2026-05-31" in s for s in subjects) and any(MANUAL_DATE in s for s in subjects)
    skipped = [t for t in tasks if t["task_id"] == "send_email" and t["state"] == "skipped"]
    assert len(skipped) == 2

    # The warehouse password appears in no log and no output file.
    for path in running.root.rglob("*"):
        if path.is_file() and path.stat().st_size < 20_000_000:
            assert SECRET not in path.read_text(errors="replace"), path
    print(f"stack up in {started:.0f} s, runs done in {time.monotonic() - began:.0f} s")
