"""Scale benchmark: the full readout (extract, gates, analysis, brief) against the bare floor.

Usage:
  .venv/bin/python benchmarks/scale.py duckdb 10000 1000000 10000000 [--repeat 3]
  .venv/bin/python benchmarks/scale.py postgres 10000 1000000 [--url postgresql://...]

Per size: the refund-query-rewrite scenario with N units and ~10 events per unit (latency events
per unit raised from 3 to 7) is simulated into a fresh warehouse (DuckDB file, or a throwaway
PostgreSQL schema); then, each in a fresh interpreter so peak RSS belongs to that step alone:
- `readout`: `run_pipeline` (extract, all gates incl. Great Expectations, analysis, decision,
  results tables, brief; no email) — wall time and peak RSS of the process;
- `floor`: one bare join-and-group-by of events with exposures (one scan of both tables).
With `--repeat N` the readout and the floor alternate N times on the same warehouse and the
medians are reported (peak RSS: the largest): at 1M units the floor is a fraction of a second,
so one slow run swings the ratio. The smallest size gives the fixed overhead; marginal cost per
event is the slope between the smallest and each larger size. Prints a Markdown table
(docs/benchmarks.md).
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
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
SCENARIO = REPO / "simulations" / "refund-query-rewrite.yaml"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"

CHILD = """
import json, sys, time
mode, url, out = sys.argv[1], sys.argv[2], sys.argv[3]
began = time.perf_counter()
stages = {}
if mode == "readout":
    from datetime import date
    from pathlib import Path
    from ab_pipeline.readout import pipeline

    def timed(name, stage):  # run_pipeline looks its stages up in the module at call time
        def run(*args, **kwargs):
            began = time.perf_counter()
            try:
                return stage(*args, **kwargs)
            finally:
                label = name if name != "gate" else f"gate {args[1]}"
                stages[label] = stages.get(label, 0.0) + time.perf_counter() - began
        return run

    for name in ("extract", "gate", "validity", "analyse", "brief"):
        setattr(pipeline, f"stage_{name}", timed(name, getattr(pipeline, f"stage_{name}")))
    ctx = pipeline.RunContext(Path(sys.argv[4]), date(2026, 5, 31), url, Path(out))
    detail = pipeline.run_pipeline(ctx, deliver=False)["decision"]
else:
    from ab_pipeline.warehouse import Warehouse
    rows = Warehouse(url).query(
        "SELECT x.arm, COUNT(*) AS n, SUM(e.value) AS v FROM events e "
        "JOIN exposures x ON x.unit_id = e.unit_id WHERE x.experiment_key = :k GROUP BY x.arm",
        {"k": "refund-query-rewrite"})
    detail = sum(int(r["n"]) for r in rows)
wall = time.perf_counter() - began
# VmHWM: this process image's peak RSS (ru_maxrss would carry the parent's over execve).
with open("/proc/self/status") as status:
    peak_mib = next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) / 1024
print(json.dumps({"wall_s": wall, "peak_rss_mib": peak_mib, "detail": detail, "stages": stages}))
"""


def simulate(url: str, units: int, schema: str | None) -> dict[str, Any]:
    import yaml

    from ab_pipeline.core.config import load_config
    from ab_pipeline.devtools.simulate import parse_scenario
    from ab_pipeline.devtools.simulate import simulate as run_simulation

    data = yaml.safe_load(SCENARIO.read_text())
    data["units"] = units
    data["metrics"]["p95_latency_ms"]["per_unit_events"] = 7  # ~10 events per unit in all
    began = time.perf_counter()
    summary = run_simulation(load_config(CONFIG), parse_scenario(data), url, schema=schema)
    return {"simulate_s": time.perf_counter() - began, "summary": summary}


def child(mode: str, url: str, out: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, url, str(out), str(CONFIG)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def count_events(url: str) -> int:
    from ab_pipeline.warehouse import Warehouse, dispose_all

    n = int(Warehouse(url).query("SELECT COUNT(*) AS n FROM events")[0]["n"])
    dispose_all()
    return n


def measure(kind: str, units: int, root: Path, pg_url: str, repeat: int = 1) -> dict[str, Any]:
    from ab_pipeline.warehouse import Warehouse, dispose_all

    schema = None
    if kind == "duckdb":
        url = f"duckdb:///{root / f'scale_{units}.duckdb'}"
    else:
        schema = f"ab_scale_{uuid.uuid4().hex[:8]}"
        Warehouse(pg_url).execute(f"CREATE SCHEMA {schema}")
        url = f"{pg_url}?options=-csearch_path%3D{schema}"
    try:
        sim = simulate(url if kind == "duckdb" else pg_url, units, schema)
        dispose_all()
        if kind == "postgres":  # a loaded warehouse has statistics; the simulator's tables not yet
            Warehouse(pg_url).execute([f"ANALYZE {schema}.exposures", f"ANALYZE {schema}.events"])
        events = count_events(url)
        readouts, floors = [], []
        for _ in range(repeat):
            readouts.append(child("readout", url, root / "briefs"))
            floors.append(child("floor", url, root / "briefs"))
    finally:
        if schema:
            Warehouse(pg_url).execute(f"DROP SCHEMA {schema} CASCADE")
        dispose_all()
        if kind == "duckdb":
            (root / f"scale_{units}.duckdb").unlink(missing_ok=True)
    readout = _median_run(readouts)
    return {
        "units": units,
        "events": events,
        "simulate_s": sim["simulate_s"],
        "readout_s": readout["wall_s"],
        "readout_runs_s": [r["wall_s"] for r in readouts],
        "readout_rss_mib": max(r["peak_rss_mib"] for r in readouts),
        "decision": readout["detail"],
        "stages_s": readout["stages"],
        "floor_s": statistics.median_low(f["wall_s"] for f in floors),
        "floor_runs_s": [f["wall_s"] for f in floors],
        "floor_rss_mib": max(f["peak_rss_mib"] for f in floors),
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda run: float(run["wall_s"]))
    return ordered[(len(ordered) - 1) // 2]


def report(kind: str, rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    print(
        f"\n{kind}: fixed overhead (readout at {base['units']:,} units) {base['readout_s']:.1f} s"
    )
    print(
        "| units | events | simulate s | readout s | readout peak RSS MiB | floor s |"
        " readout ns/event (marginal) | floor ns/event (marginal) | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        extra = row["events"] - base["events"]
        if extra > 0:
            marginal = 1e9 * (row["readout_s"] - base["readout_s"]) / extra
            floor = 1e9 * (row["floor_s"] - base["floor_s"]) / extra
            tail = f"{marginal:.0f} | {floor:.0f} | {marginal / max(floor, 1e-9):.1f}x"
        else:
            tail = "— | — | —"
        print(
            f"| {row['units']:,} | {row['events']:,} | {row['simulate_s']:.1f} | "
            f"{row['readout_s']:.1f} | {row['readout_rss_mib']:.0f} | "
            f"{row['floor_s']:.2f} | {tail} |"
        )
    stages = sorted({name for row in rows for name in row["stages_s"]})
    print(f"\n{kind}: readout stages, seconds (marginal: minus the smallest size)")
    print("| stage | " + " | ".join(f"{row['units']:,} units" for row in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for name in stages:
        cells = [row["stages_s"].get(name, 0.0) for row in rows]
        print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["duckdb", "postgres"])
    parser.add_argument("sizes", nargs="+", type=int, help="units per size, smallest first")
    parser.add_argument("--url", default=PG_DEFAULT, help="PostgreSQL server (postgres only)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="readout/floor pairs per size; medians reported"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ab-scale-") as tmp:
        for units in sorted(args.sizes):
            row = measure(args.kind, units, Path(tmp), args.url, args.repeat)
            print(json.dumps(row), flush=True)
            rows.append(row)
    report(args.kind, rows)


if __name__ == "__main__":
    main()
