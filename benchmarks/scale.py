"""Scale benchmark: the full readout (extract, gates, analysis, brief) against the bare floor.

Usage:
  .venv/bin/python benchmarks/scale.py duckdb 10000 1000000 10000000 [--repeat 3]
  .venv/bin/python benchmarks/scale.py duckdb 200000 1000000 5000000 --scenario pageviews
  .venv/bin/python benchmarks/scale.py postgres 10000 1000000 [--url postgresql://...]
  .venv/bin/python benchmarks/scale.py spark 10000 200000   # a local Spark Connect server

Scenarios (`--scenario`):
- `refund` (default): the refund-query-rewrite experiment with N units and ~10 events per unit
  (latency events per unit raised from 3 to 7): three proportions (one with `unless`) and a p95;
- `pageviews`: benchmarks/scenarios/pageviews.yaml, ~9 valued `page_view` events per unit and a
  purchase for about a quarter of the units: a proportion (7-day window), a mean and a p95 over
  the same page views (7-day window), one guardrail on the p95.

Per size the scenario is simulated into a fresh warehouse (DuckDB file, a throwaway
PostgreSQL schema, or a Spark Connect server of its own: `local[2]`, 1 GB driver, started once
for the whole run by `ab_pipeline.devtools.spark_server`; `--spark-driver-memory 4g` for a
larger driver); then, each in a fresh interpreter
so peak RSS belongs to that step alone:
- `readout`: `run_pipeline` (extract, all gates incl. Great Expectations, analysis, decision,
  results tables, brief; no email) — wall time and peak RSS of the process;
- `floor`: one bare join-and-group-by of events with exposures (one scan of both tables):
  rows and the sum of values per arm;
- `units floor`: the same scan counting distinct units and averaging the value per arm (the
  scan issue 17 measured against: `COUNT(DISTINCT unit)` makes it hash every unit, as a
  per-unit readout must); on DuckDB twice: under the readout's memory cap (900 MB) and under
  DuckDB's usual 1 GB, where at 5 M units it still fits in memory and is faster.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Mix:
    """A benchmark scenario: the experiment config, its simulation truth, and tweaks."""

    config: Path
    truth: Path
    key: str
    tweaks: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> truth fields


MIXES = {
    "refund": Mix(
        REPO / "dags" / "experiments" / "refund-query-rewrite.yaml",
        REPO / "simulations" / "refund-query-rewrite.yaml",
        "refund-query-rewrite",
        {"p95_latency_ms": {"per_unit_events": 7}},  # ~10 events per unit in all
    ),
    "pageviews": Mix(
        BENCH / "scenarios" / "pageviews.yaml",
        BENCH / "scenarios" / "pageviews.sim.yaml",
        "bench-pageviews",
    ),
}
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"

CHILD = """
import json, sys, time
mode, url, out, config, key = sys.argv[1:6]
began = time.perf_counter()
stages = {}
if mode == "readout":
    from datetime import date
    from pathlib import Path
    from ab_pipeline.orchestration import pipeline

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
    ctx = pipeline.RunContext(Path(config), date(2026, 5, 31), url, Path(out))
    detail = pipeline.run_pipeline(ctx, deliver=False)["decision"]
else:
    from ab_pipeline.warehouse import Warehouse
    what = "COUNT(*) AS n, SUM(e.value)"
    if mode == "units_floor":
        what = "COUNT(DISTINCT e.unit_id) AS n, AVG(e.value)"
    rows = Warehouse(url).query(
        f"SELECT x.arm, {what} AS v FROM events e "
        "JOIN exposures x ON x.unit_id = e.unit_id WHERE x.experiment_key = :k GROUP BY x.arm",
        {"k": key})
    detail = sum(int(r["n"]) for r in rows)
wall = time.perf_counter() - began
# VmHWM: this process image's peak RSS (ru_maxrss would carry the parent's over execve).
with open("/proc/self/status") as status:
    peak_mib = next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) / 1024
print(json.dumps({"wall_s": wall, "peak_rss_mib": peak_mib, "detail": detail, "stages": stages}))
"""


def simulate(mix: Mix, url: str, units: int, schema: str | None) -> dict[str, Any]:
    import yaml

    from ab_pipeline.core.config import load_config
    from ab_pipeline.devtools.simulate import parse_scenario
    from ab_pipeline.devtools.simulate import simulate as run_simulation

    data = yaml.safe_load(mix.truth.read_text())
    data["units"] = units
    for metric, tweak in mix.tweaks.items():
        data["metrics"][metric].update(tweak)
    began = time.perf_counter()
    summary = run_simulation(load_config(mix.config), parse_scenario(data), url, schema=schema)
    return {"simulate_s": time.perf_counter() - began, "summary": summary}


def child(mode: str, url: str, out: Path, mix: Mix) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, url, str(out), str(mix.config), mix.key],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
    # The last line the child prints; DuckDB may draw a progress bar on stdout before it.
    last = next(line for line in reversed(done.stdout.splitlines()) if '{"wall_s"' in line)
    return dict(json.loads(last[last.index('{"wall_s"') :]))


def count_events(url: str) -> int:
    from ab_pipeline.warehouse import Warehouse, dispose_all

    n = int(Warehouse(url).query("SELECT COUNT(*) AS n FROM events")[0]["n"])
    dispose_all()
    return n


def measure(
    kind: str, units: int, root: Path, pg_url: str, repeat: int = 1, mix: Mix = MIXES["refund"]
) -> dict[str, Any]:
    from ab_pipeline.warehouse import Warehouse, dispose_all

    schema = None
    if kind == "duckdb":
        url = f"duckdb:///{root / f'scale_{units}.duckdb'}"
    elif kind == "spark":
        url = pg_url  # the running Spark Connect server's sc:// URL
    else:
        schema = f"ab_scale_{uuid.uuid4().hex[:8]}"
        Warehouse(pg_url).execute(f"CREATE SCHEMA {schema}")
        url = f"{pg_url}?options=-csearch_path%3D{schema}"
    try:
        sim = simulate(mix, pg_url if kind == "postgres" else url, units, schema)
        dispose_all()
        if kind == "postgres":  # a loaded warehouse has statistics; the simulator's tables not yet
            Warehouse(pg_url).execute([f"ANALYZE {schema}.exposures", f"ANALYZE {schema}.events"])
        events = count_events(url)
        readouts, floors, unit_floors, unit_floors_1gb = [], [], [], []
        for _ in range(repeat):
            readouts.append(child("readout", url, root / "briefs", mix))
            floors.append(child("floor", url, root / "briefs", mix))
            unit_floors.append(child("units_floor", url, root / "briefs", mix))
            if kind == "duckdb":  # the scan with DuckDB's usual 1 GB, not the readout's cap
                one_gb = f"{url}?memory_limit=1GB"
                unit_floors_1gb.append(child("units_floor", one_gb, root / "briefs", mix))
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
        "stages_s": _median_stages([r["stages"] for r in readouts]),
        "floor_s": statistics.median_low(f["wall_s"] for f in floors),
        "floor_runs_s": [f["wall_s"] for f in floors],
        "floor_rss_mib": max(f["peak_rss_mib"] for f in floors),
        "units_floor_s": statistics.median_low(f["wall_s"] for f in unit_floors),
        "units_floor_runs_s": [f["wall_s"] for f in unit_floors],
        "units_floor_1gb_s": statistics.median_low(f["wall_s"] for f in unit_floors_1gb)
        if unit_floors_1gb
        else None,
    }


# The report's stage rows: the data-quality gate, the other gates (and the validity check)
# together, the rest as timed.
STAGE_ROWS = {
    "extract": ("extract",),
    "data quality gate": ("gate data_quality",),
    "other gates": ("gate receipt", "gate srm", "gate assignment", "validity"),
    "analysis": ("analyse",),
    "brief (incl. results tables)": ("brief",),
}


def _median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each stage's median over the runs (a stage a run did not reach counts 0)."""
    names = sorted({name for run in runs for name in run})
    return {name: statistics.median(run.get(name, 0.0) for run in runs) for name in names}


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
        " units floor s | ratio to units floor |"
        + (" units floor s (1 GB) | ratio to it |" if kind == "duckdb" else "")
    )
    print(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + "---:|---:|" * (kind == "duckdb")
    )
    for row in rows:
        extra = row["events"] - base["events"]
        if extra > 0:
            marginal = 1e9 * (row["readout_s"] - base["readout_s"]) / extra
            floor = 1e9 * (row["floor_s"] - base["floor_s"]) / extra
            tail = f"{marginal:.0f} | {floor:.0f} | {marginal / max(floor, 1e-9):.1f}x"
        else:
            tail = "— | — | —"
        for key in ("units_floor_s", "units_floor_1gb_s"):  # the second on DuckDB only
            if row[key] is None:
                continue
            ratio = "—"
            if extra > 0:
                units = 1e9 * (row[key] - base[key]) / extra
                ratio = f"{marginal / max(units, 1e-9):.1f}x"
            tail += f" | {row[key]:.2f} | {ratio}"
        print(
            f"| {row['units']:,} | {row['events']:,} | {row['simulate_s']:.1f} | "
            f"{row['readout_s']:.1f} | {row['readout_rss_mib']:.0f} | "
            f"{row['floor_s']:.2f} | {tail} |"
        )
    known = {name for names in STAGE_ROWS.values() for name in names}
    extra = sorted({n for row in rows for n in row["stages_s"]} - known)
    print(f"\n{kind}: readout stages, seconds (median of each stage over the runs)")
    print("| stage | " + " | ".join(f"{row['units']:,} units" for row in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for label, names in [*STAGE_ROWS.items(), *((n, (n,)) for n in extra)]:
        cells = [sum(row["stages_s"].get(n, 0.0) for n in names) for row in rows]
        print(f"| {label} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["duckdb", "postgres", "spark"])
    parser.add_argument("sizes", nargs="+", type=int, help="units per size, smallest first")
    parser.add_argument("--url", default=PG_DEFAULT, help="PostgreSQL server (postgres only)")
    parser.add_argument("--scenario", choices=sorted(MIXES), default="refund", help="metric mix")
    parser.add_argument(
        "--repeat", type=int, default=1, help="readout/floor pairs per size; medians reported"
    )
    parser.add_argument(
        "--spark-driver-memory", default="1g", help="the Spark Connect server's driver memory"
    )
    args = parser.parse_args()
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="ab-scale-") as tmp,
        _server(args.kind, tmp, args.spark_driver_memory) as url,
    ):
        for units in sorted(args.sizes):
            row = measure(
                args.kind, units, Path(tmp), url or args.url, args.repeat, MIXES[args.scenario]
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    report(args.kind, rows)


@contextmanager
def _server(kind: str, folder: str, driver_memory: str) -> Iterator[str | None]:
    """A Spark Connect server for the run (its URL), or nothing for the other engines."""
    if kind != "spark":
        yield None
        return
    from ab_pipeline.devtools.spark_server import SparkConnectServer

    with SparkConnectServer(Path(folder) / "spark", driver_memory=driver_memory) as server:
        print(f"spark: server answered after {server.started_in_s:.0f} s", flush=True)
        yield server.url


if __name__ == "__main__":
    main()
