"""Two sample experiments read out on Spark (through Spark Connect) give what DuckDB gives.

The same seeded scenarios are simulated into an embedded DuckDB file and into a real Spark
Connect server (`spark_url`, started once per test session). Every stage runs on each
engine: extract, all gates (the data-quality suites through GX's Spark datasource), analysis,
decision, brief and the results tables. Decisions, SRM counts, every gate outcome and every
number of results.json must agree (floats to 1e-9 relative); only the data-quality check
wording, which names the clock, is left out (as in the PostgreSQL parity test).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.core.config import load_config
from ab_pipeline.devtools.simulate import main_simulate
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.readout.results_store import history
from ab_pipeline.warehouse import Warehouse, dispose_all
from tests.test_postgres_parity import comparable, same

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = ("refund-query-rewrite", "onboarding-checklist")
pytestmark = pytest.mark.slow


def run_both(url: str, out: Path) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    runs, seconds = {}, {}
    for key in EXPERIMENTS:
        path = REPO / "dags" / "experiments" / f"{key}.yaml"
        ctx = RunContext(path, load_config(path).end, url, out)
        began = time.perf_counter()
        run_pipeline(ctx, deliver=False)
        seconds[key] = time.perf_counter() - began
        runs[key] = json.loads((ctx.run_dir / "results.json").read_text())
    dispose_all()
    return runs, seconds


@pytest.fixture(scope="module")
def both(
    spark_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    root = tmp_path_factory.mktemp("spark-parity")
    duck = f"duckdb:///{root / 'warehouse.duckdb'}"
    scenarios = [str(REPO / "simulations" / f"{key}.yaml") for key in EXPERIMENTS]
    assert main_simulate(["--warehouse", duck, *scenarios]) == 0
    assert main_simulate(["--warehouse", spark_url, *scenarios]) == 0
    duck_runs, duck_s = run_both(duck, root / "duckdb")
    spark_runs, spark_s = run_both(spark_url, root / "spark")
    print(f"readout seconds: DuckDB {duck_s}, Spark {spark_s}")
    yield duck_runs, spark_runs, {"url": spark_url}


def test_decisions_gates_and_numbers_match_duckdb(both: tuple[Any, ...]) -> None:
    duck, spark, _ = both
    assert duck.keys() == spark.keys() == set(EXPERIMENTS)
    for key, expected in duck.items():
        got = spark[key]
        assert got["decision"] == expected["decision"], key
        assert got["decision_reason"] == expected["decision_reason"], key
        assert got["gates"]["srm"]["counts"] == expected["gates"]["srm"]["counts"], key
        for gate, outcome in expected["gates"].items():
            assert (got["gates"][gate] or {}).get("passed") == (outcome or {}).get("passed"), gate
        assert same(comparable(expected), comparable(got)) == [], key


def test_every_gate_ran_on_spark_and_the_readouts_are_decision_grade(
    both: tuple[Any, ...],
) -> None:
    _, spark, _ = both
    for key, results in spark.items():
        assert results["decision"] != "RERUN", (key, results["decision_reason"])
        assert results["gates"]["srm"]["passed"], key
        checks = results["gates"]["data_quality"]["checks"]
        assert checks[0]["name"] == "contract_column_types" and checks[0]["passed"], key
        assert len(checks) > 10, key


def test_the_results_tables_on_spark_hold_the_readouts(both: tuple[Any, ...]) -> None:
    _, spark, info = both
    warehouse = Warehouse(info["url"])
    rows = warehouse.query(
        "SELECT experiment, decision FROM ab_latest_readouts ORDER BY experiment"
    )
    assert rows == [
        {"experiment": key, "decision": spark[key]["decision"]} for key in sorted(EXPERIMENTS)
    ]
    later = load_config(REPO / "dags" / "experiments" / f"{EXPERIMENTS[0]}.yaml").end
    earlier = history(warehouse, EXPERIMENTS[0], later.replace(year=later.year + 1))
    assert [h["decision"] for h in earlier] == [spark[EXPERIMENTS[0]]["decision"]]
