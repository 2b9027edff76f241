"""Many processes on one embedded DuckDB file: runs wait for the warehouse, none fails on its lock.

(a) Airflow's real scheduler with the LocalExecutor (api-server, scheduler, dag-processor; the
    helpers of stack.py; PostgreSQL metadata; parallelism 4): four experiments triggered at once
    on one DuckDB file, so their extracts, parallel gates and briefs contend for it.
(b) Three `ab-pipeline run` processes at once on one DuckDB file.

The data are small simulations of the sample experiments: what matters is the contention. The
tests print how long tasks waited for the warehouse (the lock's "waited N s" log lines).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import load_config
from ab_pipeline.devtools.simulate import parse_scenario, simulate
from ab_pipeline.warehouse import Warehouse, connection_env_value, dispose_all

from .stack import REPO, Stack, prepare_dags, stack_environment, wait_for

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("ab-pipeline"))
SERVER = "postgresql://postgres@127.0.0.1:5432"
EXPERIMENTS = REPO / "dags" / "experiments"
# Each experiment's final readout date, and a small healthy simulation of it.
FINAL = {
    "refund-query-rewrite": "2026-05-31",
    "delivery-estimate": "2026-04-26",
    "onboarding-checklist": "2026-03-29",
    "search-ranking-v2": "2026-06-14",
}
SMALL = {
    "refund-query-rewrite": {"units": 3000},
    "delivery-estimate": {"units": 3000},
    "onboarding-checklist": {"units": 3000},
    # Its sample scenario breaks the split on purpose (RERUN); here it is healthy.
    "search-ranking-v2": {"counts": {"control": 1500, "treatment": 1500}},
}
WAITED = re.compile(r"waited ([0-9.]+) s for the warehouse lock")


def simulate_small(url: str, keys: list[str]) -> None:
    for key in keys:
        data = yaml.safe_load((REPO / "simulations" / f"{key}.yaml").read_text())
        data.update(SMALL[key])
        simulate(load_config(EXPERIMENTS / f"{key}.yaml"), parse_scenario(data), url)
    dispose_all()


def wait_summary(text: str) -> str:
    waits = sorted(float(w) for w in WAITED.findall(text))
    if not waits:
        return "no lock wait over 0.2 s"
    return (
        f"{len(waits)} lock waits over 0.2 s: median {waits[len(waits) // 2]:.1f} s, "
        f"max {waits[-1]:.1f} s, total {sum(waits):.1f} s"
    )


def test_three_cli_runs_at_once_on_one_duckdb_file(tmp_path: Path) -> None:
    from ab_pipeline.orchestration.cli import ensure_metadata_db

    keys = ["refund-query-rewrite", "delivery-estimate", "onboarding-checklist"]
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    simulate_small(url, keys)
    env = {**os.environ}
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    # Two runs share one fresh SQLite Airflow home (they take turns on it: cli.metadata_turn,
    # migrate included); the third has its own home, so it meets them on the warehouse only.
    shared, own = tmp_path / "airflow-shared", tmp_path / "airflow-own"
    ensure_metadata_db({**env, "AIRFLOW_HOME": str(own)})
    homes = {keys[0]: shared, keys[1]: shared, keys[2]: own}
    out = tmp_path / "briefs"
    began = time.monotonic()
    runs = {
        key: subprocess.Popen(
            [
                CLI,
                "run",
                str(EXPERIMENTS / f"{key}.yaml"),
                "--date",
                FINAL[key],
                "--warehouse",
                url,
                "--out",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**env, "AIRFLOW_HOME": str(homes[key])},
        )  # fmt: skip
        for key in keys
    }
    outputs = {key: run.communicate(timeout=900)[0] for key, run in runs.items()}
    elapsed = time.monotonic() - began
    for key, run in runs.items():
        assert run.returncode == 0, outputs[key][-3000:]
        assert "Conflicting lock" not in outputs[key]
        results = json.loads((out / key / FINAL[key] / "results.json").read_text())
        assert results["status"] == "final" and results["decision"] != "RERUN", key
        assert (out / key / FINAL[key] / "brief.html").exists()
    print(f"3 concurrent CLI runs in {elapsed:.0f} s; {wait_summary(''.join(outputs.values()))}")


@pytest.fixture(scope="module")
def metadata_db() -> Iterator[str]:
    from sqlalchemy import text

    name = f"ab_it_local_{uuid.uuid4().hex[:8]}"
    engine = Warehouse(f"{SERVER}/postgres").engine()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield name
    finally:
        dispose_all()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        dispose_all()


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory, metadata_db: str) -> Iterator[Stack]:
    """api-server, scheduler and dag-processor with the LocalExecutor, four experiments."""
    from tests.local_services import free_port

    root = tmp_path_factory.mktemp("local")
    url = f"duckdb:///{root / 'warehouse.duckdb'}"
    simulate_small(url, list(FINAL))
    api_port = free_port()
    env = stack_environment(
        root,
        metadata_db,
        broker_db=0,  # unused: no Celery here
        api_port=api_port,
        extra={
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW_CONN_AB_WAREHOUSE": connection_env_value(url),
        },
    )
    prepare_dags(root, [EXPERIMENTS / f"{key}.yaml" for key in FINAL])
    stack = Stack(root, env, api_port, env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        stack.airflow("db", "migrate", timeout=300)
        stack.start("api-server", "api-server", "--port", str(api_port))
        stack.start("scheduler", "scheduler")
        stack.start("dag-processor", "dag-processor")
        yield stack
    finally:
        stack.stop()


def api(stack: Stack, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.api_port}/api/v2{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def dag_id(key: str) -> str:
    return "ab_" + key.replace("-", "_")


def all_parsed(stack: Stack) -> bool:
    stack.assert_alive()
    try:
        return all(api(stack, "GET", f"/dags/{dag_id(k)}")["dag_id"] for k in FINAL)
    except OSError:
        return False


def finished_runs(stack: Stack) -> list[dict[str, Any]]:
    stack.assert_alive()
    return stack.query("SELECT dag_id, state FROM dag_run WHERE state IN ('success', 'failed')")


def test_four_experiments_at_once_on_the_local_executor(local_stack: Stack) -> None:
    stack = local_stack
    wait_for("the api-server and four parsed DAGs", lambda: all_parsed(stack), timeout=180)
    began = time.monotonic()
    for key, day in FINAL.items():
        api(stack, "POST", f"/dags/{dag_id(key)}/dagRuns", {"logical_date": None,
            "conf": {"run_date": day}})  # fmt: skip
    wait_for("four DAG runs to finish", lambda: len(finished_runs(stack)) >= 4, timeout=600, step=3)
    elapsed = time.monotonic() - began
    runs = stack.query("SELECT dag_id, state FROM dag_run ORDER BY dag_id")
    tasks = stack.query("SELECT dag_id, task_id, state, start_date, end_date FROM task_instance")
    assert {r["state"] for r in runs} == {"success"}, (runs, tasks)
    assert len(runs) == 4
    # The runs overlapped: tasks of different experiments were running at the same moment.
    spans = [(t["start_date"], t["end_date"], t["dag_id"]) for t in tasks if t["start_date"]]
    overlapping = {
        (a[2], b[2]) for a in spans for b in spans if a[2] < b[2] and a[0] < b[1] and b[0] < a[1]
    }
    assert overlapping, spans
    for key, day in FINAL.items():
        results = json.loads((stack.root / "briefs" / key / day / "results.json").read_text())
        assert results["decision"] != "RERUN", (key, results["gate_failures"])
    logs = "".join(
        path.read_text(errors="replace")
        for path in (stack.root / "airflow" / "logs").rglob("*.log")
    )
    assert "Conflicting lock" not in logs
    print(
        f"4 runs ({len(tasks)} tasks) on the LocalExecutor in {elapsed:.0f} s; "
        f"{len(overlapping)} experiment pairs overlapped; {wait_summary(logs)}"
    )
