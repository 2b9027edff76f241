"""Nightly batch: N small experiments triggered together under Airflow's real scheduler.

Usage:
  .venv/bin/python benchmarks/nightly.py duckdb 50        # embedded DuckDB warehouse (one file)
  .venv/bin/python benchmarks/nightly.py postgres 50      # PostgreSQL warehouse (throwaway db)

The deployment is the one of tests/integration/test_local_scheduler.py: api-server, scheduler
and dag-processor with the LocalExecutor (`parallelism` 4, `--parallelism`), PostgreSQL as
Airflow's metadata database (a throwaway database). N copies of the `pageviews` benchmark
config (benchmarks/scenarios/pageviews.yaml, keys bench-nightly-00 ...) each get a small
simulation (`--units`, default 2,000) in one warehouse; once the dag-processor has parsed all N
DAGs, one DAG run of each is triggered through the REST API, all at once, and the script waits
until every run has finished. It prints the wall time from the first trigger to the last run's
end, per-experiment overhead (wall time / N), the sum of task durations, and how long the
queue and the task-runner startup took (a task's queued -> start, from the metadata database).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.scale import MIXES  # noqa: E402
from tests.integration.stack import Stack, prepare_dags, stack_environment, wait_for  # noqa: E402
from tests.local_services import free_port  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432"
RUN_DATE = "2026-05-31"


def create_database(name: str) -> None:
    from sqlalchemy import text

    from ab_pipeline.warehouse import Warehouse, dispose_all

    engine = Warehouse(f"{SERVER}/postgres").engine()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    dispose_all()


def drop_database(name: str) -> None:
    from sqlalchemy import text

    from ab_pipeline.warehouse import Warehouse, dispose_all

    engine = Warehouse(f"{SERVER}/postgres").engine()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    dispose_all()


def write_configs(root: Path, count: int) -> list[Path]:
    """N copies of the pageviews config, each its own experiment key."""
    import yaml

    mix = MIXES["pageviews"]
    base = yaml.safe_load(mix.config.read_text())
    folder = root / "configs"
    folder.mkdir()
    paths = []
    for i in range(count):
        data = {**base, "key": f"bench-nightly-{i:02d}"}
        path = folder / f"bench-nightly-{i:02d}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        paths.append(path)
    return paths


def simulate_all(url: str, configs: list[Path], units: int) -> float:
    import yaml

    from ab_pipeline.core.config import load_config
    from ab_pipeline.devtools.simulate import parse_scenario, simulate
    from ab_pipeline.warehouse import dispose_all

    truth = yaml.safe_load(MIXES["pageviews"].truth.read_text())
    began = time.perf_counter()
    for i, path in enumerate(configs):
        config = load_config(path)
        data = {**truth, "experiment": config.key, "units": units, "seed": truth["seed"] + i}
        simulate(config, parse_scenario(data), url)
    dispose_all()
    return time.perf_counter() - began


def api(stack: Stack, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.api_port}/api/v2{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def dag_id(key: str) -> str:
    return "ab_" + key.replace("-", "_")


def parsed(stack: Stack, keys: list[str]) -> bool:
    stack.assert_alive()
    try:
        found = {row["dag_id"] for row in stack.query("SELECT dag_id FROM serialized_dag")}
    except Exception:  # the metadata tables are not there yet
        return False
    return all(dag_id(k) in found for k in keys)


def finished(stack: Stack, count: int) -> bool:
    stack.assert_alive()
    rows = stack.query("SELECT COUNT(*) AS n FROM dag_run WHERE state IN ('success', 'failed')")
    return int(rows[0]["n"]) >= count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("warehouse", choices=["duckdb", "postgres"])
    parser.add_argument("count", type=int, nargs="?", default=50)
    parser.add_argument("--units", type=int, default=2000, help="units per experiment")
    parser.add_argument("--parallelism", type=int, default=4)
    args = parser.parse_args()
    from ab_pipeline.warehouse import connection_env_value

    tag = uuid.uuid4().hex[:8]
    metadata_db, warehouse_db = f"ab_nightly_meta_{tag}", f"ab_nightly_wh_{tag}"
    with tempfile.TemporaryDirectory(prefix="ab-nightly-") as tmp:
        root = Path(tmp)
        configs = write_configs(root, args.count)
        keys = [path.stem for path in configs]
        create_database(metadata_db)
        if args.warehouse == "postgres":
            create_database(warehouse_db)
            url = f"{SERVER}/{warehouse_db}"
        else:
            url = f"duckdb:///{root / 'warehouse.duckdb'}"
        stack = None
        try:
            simulate_s = simulate_all(url, configs, args.units)
            api_port = free_port()
            env = stack_environment(
                root,
                metadata_db,
                broker_db=0,  # unused: no Celery here
                api_port=api_port,
                extra={
                    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                    "AIRFLOW__CORE__PARALLELISM": str(args.parallelism),
                    "AIRFLOW_CONN_AB_WAREHOUSE": connection_env_value(url),
                },
            )
            prepare_dags(root, configs)
            stack = Stack(root, env, api_port, env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
            stack.airflow("db", "migrate", timeout=600)
            stack.start("api-server", "api-server", "--port", str(api_port))
            stack.start("scheduler", "scheduler")
            stack.start("dag-processor", "dag-processor")
            wait_for(f"{args.count} parsed DAGs", lambda: parsed(stack, keys), 600, step=2)
            wait_for("the api-server", lambda: _api_up(stack), 300, step=1)
            began = time.monotonic()
            for key in keys:
                api(stack, "POST", f"/dags/{dag_id(key)}/dagRuns",
                    {"logical_date": None, "conf": {"run_date": RUN_DATE}})  # fmt: skip
            wait_for("every DAG run", lambda: finished(stack, args.count), 7200, step=2)
            report(stack, args, time.monotonic() - began, simulate_s, root)
        finally:
            if stack is not None:
                stack.stop()
            drop_database(metadata_db)
            if args.warehouse == "postgres":
                drop_database(warehouse_db)


def _api_up(stack: Stack) -> bool:
    try:
        api(stack, "GET", "/monitor/health")
        return True
    except OSError:
        return False


def report(
    stack: Stack, args: argparse.Namespace, wall: float, simulate_s: float, root: Path
) -> None:
    runs = stack.query("SELECT dag_id, state, start_date, end_date FROM dag_run")
    tasks = stack.query(
        "SELECT task_id, state, queued_dttm, start_date, end_date FROM task_instance"
    )
    states: dict[str, int] = {}
    for run in runs:
        states[run["state"]] = states.get(run["state"], 0) + 1
    durations = [(t["end_date"] - t["start_date"]).total_seconds() for t in tasks
                 if t["start_date"] and t["end_date"]]  # fmt: skip
    per_task: dict[str, list[float]] = {}
    for t in tasks:
        if t["start_date"] and t["end_date"]:
            per_task.setdefault(t["task_id"], []).append(
                (t["end_date"] - t["start_date"]).total_seconds()
            )
    decisions: dict[str, int] = {}
    for path in (root / "briefs").glob("*/*/results.json"):
        decision = json.loads(path.read_text())["decision"]
        decisions[decision] = decisions.get(decision, 0) + 1
    busy = sum(durations)
    print(
        json.dumps(
            {
                "warehouse": args.warehouse,
                "experiments": args.count,
                "units_each": args.units,
                "parallelism": args.parallelism,
                "simulate_s": round(simulate_s, 1),
                "wall_s": round(wall, 1),
                "per_experiment_s": round(wall / args.count, 2),
                "dag_runs": states,
                "decisions": decisions,
                "task_instances": len(tasks),
                "task_seconds_sum": round(busy, 1),
                "task_seconds_per_experiment": round(busy / args.count, 2),
                "slot_utilisation": round(busy / (wall * args.parallelism), 2),
                "task_median_s": {k: round(statistics.median(v), 2) for k, v in per_task.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
