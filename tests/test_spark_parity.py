"""Two sample experiments read out on Spark (through Spark Connect) give what DuckDB gives.

The same seeded scenarios are simulated into an embedded DuckDB file and into a real Spark
Connect server (`spark_url`, started once per test session). Every stage runs on each
engine: extract, all gates (the data-quality suites through GX's Spark datasource), analysis,
decision, brief and the results tables. Decisions, SRM counts, every gate outcome and every
number of results.json must agree (floats to 1e-9 relative); only the data-quality check
wording, which names the clock, is left out (as in the PostgreSQL parity test).

onboarding-checklist reads its tables in-process (`run_pipeline`). refund-query-rewrite
(proportions with an `unless`, guardrails, a p95 quantile) reads both sources through
`{sql: ...}` queries and adds a `sql:` metric, and on Spark runs as the real DAG in an
`ab-pipeline run` process, as an Airflow task would; DuckDB reads the same config out
in-process (a DAG run and an in-process run write the same results.json).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import load_config
from ab_pipeline.devtools.simulate import main_simulate
from ab_pipeline.readout.results_store import history
from ab_pipeline.warehouse import Warehouse, dispose_all
from ab_pipeline.warehouse.dialects.spark import close_sessions
from tests.test_postgres_parity import (
    comparable,
    read_out,
    same,
    with_sql_metric_and_query_sources,
)
from tests.test_snowflake_parity import run_dag

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = ("refund-query-rewrite", "onboarding-checklist")
DAG_RUN = "refund-query-rewrite"  # on Spark as the real DAG, with query sources and a sql: metric
pytestmark = pytest.mark.slow


def run_in_process(
    url: str, out: Path, configs: dict[str, Path]
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    runs, seconds = {}, {}
    for key, path in configs.items():
        began = time.perf_counter()
        runs[key] = read_out(path, load_config(path).end, url, out)
        seconds[key] = time.perf_counter() - began
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
    variant = with_sql_metric_and_query_sources(root / "variant")
    tables = {key: REPO / "dags" / "experiments" / f"{key}.yaml" for key in EXPERIMENTS}
    duck_runs, duck_s = run_in_process(duck, root / "duckdb", {**tables, DAG_RUN: variant})
    del tables[DAG_RUN]
    spark_runs, spark_s = run_in_process(spark_url, root / "spark", tables)
    began = time.perf_counter()
    run_date = load_config(variant).end.isoformat()
    spark_runs[DAG_RUN] = run_dag(variant, run_date, spark_url, root / "dag", root / "airflow")
    spark_s[DAG_RUN] = time.perf_counter() - began
    # A session keeps its own listing of a table's files: the next one sees what the DAG's
    # process wrote to the results tables.
    close_sessions(spark_url)
    print(f"readout seconds: DuckDB {duck_s}, Spark {spark_s} ({DAG_RUN}: the DAG)")
    yield duck_runs, spark_runs, {"url": spark_url, "variant": variant, "root": root}


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


def test_the_real_dag_on_spark_reads_query_sources_and_an_sql_metric_as_duckdb_does(
    both: tuple[Any, ...],
) -> None:
    duck, spark, info = both
    config = yaml.safe_load(info["variant"].read_text())
    assert all("sql" in config["source"][which] for which in ("exposures", "events"))
    assert "sql" in config["metrics"]["escalations"]
    expected, got = duck[DAG_RUN], spark[DAG_RUN]
    assert got["decision"] == expected["decision"] == "SHIP"
    assert got["gates"]["srm"]["counts"] == expected["gates"]["srm"]["counts"]
    assert sum(got["gates"]["srm"]["counts"].values()) > 100_000
    escalations = got["metrics"]["escalations"]
    assert same(expected["metrics"]["escalations"], escalations) == []
    assert all(arm["value"] > 0 for arm in escalations["arms"].values())
    assert escalations["comparisons"]["treatment"]["se"] > 0
    assert same(comparable(expected), comparable(got)) == []


def test_an_sql_metric_with_several_rows_for_an_enrolled_unit_stops_the_extract_on_spark(
    both: tuple[Any, ...], tmp_path: Path
) -> None:
    """One row per escalation: several rows for a unit that escalated twice, counted over the
    units DuckDB enrolled (its units table of the same readout); the session's temporary
    tables are dropped, so the process can build again."""
    from ab_pipeline.readout.extract import build_units_table, units_table_name
    from ab_pipeline.warehouse.dialects.spark import spark_session

    _, _, info = both
    data = yaml.safe_load(info["variant"].read_text())
    sql = "SELECT unit_id, 1 AS value FROM events WHERE event_name = 'escalated'"
    data["metrics"] = {"escalation_rows": {"type": "proportion", "sql": sql}}
    data["primary"] = data["hypothesis"]["metric"] = "escalation_rows"
    data["guardrails"] = {}
    # Its units table in a database of its own: the readout's stays as the DAG left it.
    data["source"]["work_schema"] = "ab_several_rows"
    (tmp_path / "refund-query-rewrite.yaml").write_text(yaml.safe_dump(data))
    config = load_config(tmp_path / "refund-query-rewrite.yaml")
    readout = load_config(info["variant"])
    duck = Warehouse(f"duckdb:///{info['root'] / 'warehouse.duckdb'}")
    [twice] = duck.query(
        "SELECT COUNT(*) AS units, MIN(unit_id) AS example "
        f'FROM "{units_table_name(readout, readout.end)}" WHERE m_escalations > 1'
    )
    assert twice["units"] > 100
    spark = Warehouse(info["url"])
    spark.execute("CREATE DATABASE IF NOT EXISTS ab_several_rows")
    with pytest.raises(ValueError) as raised:
        build_units_table(spark, config, config.end)
    assert str(raised.value) == (
        f"metrics.escalation_rows.sql returned more than one row for {twice['units']} enrolled "
        f"units (for example unit_id {twice['example']!r}): a metric's query must return one "
        "row per unit"
    )
    session = spark_session(info["url"])
    assert not [t.name for t in session.catalog.listTables() if t.name.startswith("ab_tmp_")]
    assert not spark.table_exists(units_table_name(config, config.end))


def test_the_p95_joins_its_rows_once_into_a_scratch_table_that_it_drops(
    both: tuple[Any, ...], executed_statements: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spark has no MATERIALIZED CTE: the quantile's two narrow passes read one scratch table
    of the joined rows instead of joining the events to the units table twice. The extract
    stored no histogram (`quantiles_by_edge`): the rows from an edge guessed by one scan of
    the event stand in for it, and no histogram pass runs."""
    from ab_pipeline.metrics import quantile as quantile_kind
    from ab_pipeline.metrics.quantile import quantile_summaries
    from ab_pipeline.warehouse.run_tables import quantile_histogram_table_name, units_table_name

    duck, _, info = both
    config = load_config(REPO / "dags" / "experiments" / f"{DAG_RUN}.yaml")
    name = "p95_latency_ms"
    warehouse = Warehouse(info["url"])
    assert not warehouse.table_exists(quantile_histogram_table_name(config, config.end))

    def no_pass(*args: Any) -> Any:
        raise AssertionError("a histogram pass ran: the guessed edge missed")

    monkeypatch.setattr(quantile_kind, "histograms", no_pass)
    summaries = quantile_summaries(
        warehouse,
        config,
        name,
        config.metrics[name],  # type: ignore[arg-type]
        units_table_name(config, config.end),
        config.end,
    )
    created = [s for s in executed_statements if s.startswith("CREATE TABLE")]
    assert len(created) == 1 and "ab_qside_" in created[0], created
    expected = duck[DAG_RUN]["metrics"][name]["arms"]
    assert {arm: s.estimate for arm, s in summaries.items()} == pytest.approx(
        {arm: entry["value"] for arm, entry in expected.items()}, rel=1e-6
    )
    assert not [t for t in warehouse.table_names() if t.startswith("ab_qside_")]
