"""Fixed overhead of `ab-pipeline run`: what the Airflow run costs on top of the readout.

Usage:
  .venv/bin/python benchmarks/run_overhead.py [--units 20000] [--repeat 3]

A small `pageviews` warehouse (benchmarks/scenarios/pageviews.yaml, `--units` units) is
simulated into a temporary DuckDB file; then, each in a fresh process:
- `cold`: `ab-pipeline run` with a fresh AIRFLOW_HOME (SQLite metadata database migrated first);
- `warm`: `ab-pipeline run` again on that AIRFLOW_HOME, `--repeat` times (the usual case);
- `in-process`: `run_pipeline` alone (benchmarks/scale.py's readout child), `--repeat` times;
- `breakdown`: one warm `ab-pipeline run` inside a Python process that times its parts:
  Great Expectations' import, Airflow's set-up before the first task (DAG parse and
  serialization, DAG run creation), the tasks through Airflow's in-process task runner, and
  `dag.test()` and `run_experiment()` in all (the rest of the process: imports).
Medians are printed as Markdown (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.scale import MIXES, child, simulate  # noqa: E402

CLI = str(Path(sys.executable).with_name("ab-pipeline"))
RUN_DATE = "2026-05-31"

BREAKDOWN = r"""
import json, sys, time
began = time.perf_counter()
marks = {}
def mark(name, since):
    marks[name] = marks.get(name, 0.0) + time.perf_counter() - since
t = time.perf_counter()
from ab_pipeline.orchestration import cli
mark("import ab_pipeline.orchestration.cli", t)
t = time.perf_counter()
import great_expectations  # timed here once; the data-quality task then finds it imported
mark("import great_expectations", t)
config, warehouse, out = sys.argv[1:4]
first_task = {}
from airflow.sdk.definitions import dag as sdk_dag
real_run_task = sdk_dag._run_task
def run_task(**kwargs):
    first_task.setdefault("runner_at", time.perf_counter())
    t = time.perf_counter()
    try:
        return real_run_task(**kwargs)
    finally:
        mark("tasks incl. Airflow's task runner", t)
sdk_dag._run_task = run_task
real_test = sdk_dag.DAG.test
def test(self, *args, **kwargs):
    t = time.perf_counter()
    try:
        return real_test(self, *args, **kwargs)
    finally:
        mark("dag.test()", t)
        marks["dag.test() until the first task"] = first_task.get("runner_at", t) - t
sdk_dag.DAG.test = test
t = time.perf_counter()
code = cli.run_experiment(cli.Path(config), cli.date.fromisoformat("2026-05-31"), warehouse,
                          cli.Path(out))
mark("run_experiment()", t)
marks["total in this process"] = time.perf_counter() - began
print(json.dumps({"code": code, "marks": marks}))
"""


def timed(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    wall = time.perf_counter() - began
    print(f"{' '.join(Path(a).name for a in argv[:3])}: {wall:.2f} s", flush=True)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    mix = MIXES["pageviews"]
    with tempfile.TemporaryDirectory(prefix="ab-overhead-") as tmp:
        root = Path(tmp)
        url = f"duckdb:///{root / 'warehouse.duckdb'}"
        simulate(mix, url, args.units, None)
        from ab_pipeline.warehouse import dispose_all

        dispose_all()
        env = {**os.environ, "AIRFLOW_HOME": str(root / "airflow"), "PYTHONPATH": str(REPO)}
        env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
        run = [CLI, "run", str(mix.config), "--date", RUN_DATE, "--warehouse", url,
               "--out", str(root / "briefs")]  # fmt: skip
        rows: dict[str, Any] = {}
        rows["python -c pass"] = statistics.median(
            timed([sys.executable, "-c", "pass"], env) for _ in range(args.repeat)
        )
        rows["python -c 'import ab_pipeline.orchestration.cli'"] = statistics.median(
            timed([sys.executable, "-c", "import ab_pipeline.orchestration.cli"], env)
            for _ in range(args.repeat)
        )
        rows["python -c 'import airflow.sdk'"] = statistics.median(
            timed([sys.executable, "-c", "import airflow.sdk"], env) for _ in range(args.repeat)
        )
        rows["python -c 'import great_expectations'"] = statistics.median(
            timed([sys.executable, "-c", "import great_expectations"], env)
            for _ in range(args.repeat)
        )
        rows["ab-pipeline run, cold (fresh AIRFLOW_HOME)"] = timed(run, env)
        warm = [timed(run, env) for _ in range(args.repeat)]
        rows["ab-pipeline run, warm"] = statistics.median(warm)
        inproc = [
            child("readout", url, root / "briefs-in-process", mix)["wall_s"]
            for _ in range(args.repeat)
        ]
        rows["run_pipeline in-process (no Airflow)"] = statistics.median(inproc)
        done = subprocess.run(
            [sys.executable, "-c", BREAKDOWN, str(mix.config), url, str(root / "briefs")],
            env=env,
            capture_output=True,
            text=True,
        )
        last = [line for line in done.stdout.splitlines() if line.startswith('{"code"')]
        if not last:
            raise RuntimeError(done.stderr[-3000:])
        marks = json.loads(last[-1])["marks"]
    print(json.dumps({"runs": rows, "warm_runs": warm, "in_process_runs": inproc,
                      "breakdown": marks}, indent=1))  # fmt: skip
    print(f"\n| {args.units:,} units, pageviews mix | s |\n|---|---:|")
    for name, value in rows.items():
        print(f"| {name} | {value:.2f} |")
    print("\n| one warm `ab-pipeline run`, timed inside | s |\n|---|---:|")
    for name, value in marks.items():
        print(f"| {name} | {value:.2f} |")


if __name__ == "__main__":
    main()
