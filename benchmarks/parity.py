"""Engine parity table: every sample experiment read out on each engine from the same simulation.

Usage (from the repository root):
  .venv/bin/python benchmarks/parity.py                       # duckdb postgres snowflake spark
  .venv/bin/python benchmarks/parity.py duckdb spark --experiments refund-query-rewrite

Per engine the sample scenarios (`simulations/<key>.yaml`) are simulated into a fresh warehouse
(a DuckDB file; a throwaway schema on the machine's PostgreSQL; a fakesnow server, Snowflake's
API over DuckDB, reached through the real connector; a local Spark Connect server, `local[2]`)
and read out in-process at the config's end date (`run_pipeline`: the extract, every gate,
analysis, decision, results tables, brief). Prints one Markdown row per engine and experiment:
decision, units per arm, the primary metric's estimate (treatment minus control) and its
interval, and the seconds the readout took. The parity tests (tests/test_*_parity.py) assert the
same equalities; this script shows them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/snowflake_server.py starts the fakesnow server

ENGINES = ("duckdb", "postgres", "snowflake", "spark")
EXPERIMENTS = ("refund-query-rewrite", "onboarding-checklist", "delivery-estimate")
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def warehouse(engine: str, folder: Path) -> Iterator[tuple[str, str | None]]:
    """(URL, schema for the simulator) of a fresh warehouse of `engine`."""
    from ab_pipeline.warehouse import Warehouse, dispose_all

    if engine == "duckdb":
        yield f"duckdb:///{folder / 'parity.duckdb'}", None
    elif engine == "postgres":
        schema = f"ab_parity_{uuid.uuid4().hex[:8]}"
        Warehouse(PG_URL).execute(f"CREATE SCHEMA {schema}")
        try:
            yield f"{PG_URL}?options=-csearch_path%3D{schema}", schema
        finally:
            dispose_all()
            Warehouse(PG_URL).execute(f"DROP SCHEMA {schema} CASCADE")
    elif engine == "snowflake":
        from tests.snowflake_server import serving_fakesnow

        with serving_fakesnow(folder / "fakesnow") as url:
            yield url, None
    else:
        from ab_pipeline.devtools.spark_server import SparkConnectServer

        with SparkConnectServer(folder / "spark") as server:
            yield server.url, None
    dispose_all()


def read_out(engine: str, key: str, url: str, schema: str | None, out: Path) -> dict[str, Any]:
    import yaml

    from ab_pipeline.core.config import load_config
    from ab_pipeline.devtools.simulate import parse_scenario, simulate
    from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
    from ab_pipeline.warehouse import dispose_all

    config_path = REPO / "dags" / "experiments" / f"{key}.yaml"
    config = load_config(config_path)
    scenario = parse_scenario(yaml.safe_load((REPO / "simulations" / f"{key}.yaml").read_text()))
    simulate(config, scenario, PG_URL if engine == "postgres" else url, schema=schema)
    dispose_all()
    began = time.perf_counter()
    ctx = RunContext(config_path, config.end, url, out / engine)
    run_pipeline(ctx, deliver=False)
    seconds = time.perf_counter() - began
    results = json.loads((ctx.run_dir / "results.json").read_text())
    row = {"engine": engine, "experiment": key, "decision": results["decision"]}
    primary = results["metrics"].get(config.primary)
    if primary is None:  # a failed gate: no analysis; units per arm are the SRM gate's counts
        counts = (results["gates"].get("srm") or {}).get("counts", {})
        units = " / ".join(f"{counts[a]:,}" for a in config.arms if a in counts)
        return {**row, "units": units or "—", "estimate": None, "ci": None, "seconds": seconds}
    arms = primary["arms"]
    [comparison] = list(primary["comparisons"].values())[:1]
    return {
        **row,
        "units": " / ".join(f"{arms[a]['units']:,}" for a in config.arms),
        "estimate": comparison["absolute"],
        "ci": tuple(comparison["ci"]),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engines", nargs="*", help=f"some of {', '.join(ENGINES)} (default: all)")
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS))
    args = parser.parse_args()
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ab-parity-") as tmp:
        for engine in args.engines or ENGINES:
            with warehouse(engine, Path(tmp) / engine) as (url, schema):
                for key in args.experiments:
                    row = read_out(engine, key, url, schema, Path(tmp) / "briefs")
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print("\n| experiment | engine | decision | units per arm | primary estimate [95% CI] | s |")
    print("|---|---|---|---:|---|---:|")
    for row in sorted(rows, key=lambda r: (r["experiment"], ENGINES.index(r["engine"]))):
        estimate = "— (not analysed)"
        if row["estimate"] is not None:
            low, high = row["ci"]
            estimate = f"{row['estimate']:+.10g} [{low:+.6g}, {high:+.6g}]"
        print(
            f"| {row['experiment']} | {row['engine']} | {row['decision']} | {row['units']} | "
            f"{estimate} | {row['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
