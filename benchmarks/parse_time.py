"""How long Airflow takes to parse the dags folder with N experiment configs.

Usage: .venv/bin/python benchmarks/parse_time.py [N ...]   (default: 4 50 500)

Each size is parsed in a fresh interpreter, as the dag-processor does. Printed per size: the
time to import Airflow's DagBag (paid once per processor, not per file) and the time DagBag
takes to process the dags folder (the number Airflow calls the file's parse time), wall clock
and the parsing process's CPU time (on a busy machine the wall time includes waiting for a core;
the CPU time mostly does not).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted((REPO / "dags" / "experiments").glob("*.yaml"))

MEASURE = """
import json, sys, time
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t1, c1 = time.perf_counter(), time.process_time()
bag = DagBag(sys.argv[1])
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"import_s": t1 - t0, "parse_s": t2 - t1, "parse_cpu_s": c2 - c1,
                  "dags": len(bag.dags), "errors": len(bag.import_errors)}))
"""


def make_folder(root: Path, count: int) -> Path:
    folder = root / f"dags_{count}"
    (folder / "experiments").mkdir(parents=True)
    shutil.copy(REPO / "dags" / "ab_experiments.py", folder)
    shutil.copytree(REPO / "dags" / "metrics", folder / "metrics")  # the configs' catalog
    for i in range(count):
        data = yaml.safe_load(SAMPLES[i % len(SAMPLES)].read_text())
        data["key"] = f"{data['key']}-{i:04d}"
        (folder / "experiments" / f"{data['key']}.yaml").write_text(yaml.safe_dump(data))
    return folder


def measure(folder: Path, home: Path) -> dict[str, float]:
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(sizes: list[int]) -> None:
    print(
        f"{'configs':>8} {'dags':>6} {'errors':>6} {'import s':>9} {'parse s':>8} "
        f"{'parse cpu s':>12} {'ms/config':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for count in sizes:
            result = measure(make_folder(root, count), root / "airflow")
            per = 1000 * result["parse_s"] / max(count, 1)
            print(
                f"{count:>8} {int(result['dags']):>6} {int(result['errors']):>6} "
                f"{result['import_s']:>9.2f} {result['parse_s']:>8.2f} "
                f"{result['parse_cpu_s']:>12.2f} {per:>10.1f}"
            )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [4, 50, 500])
