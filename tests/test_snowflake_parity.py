"""The sample experiments read out on Snowflake (a fakesnow server) give what DuckDB gives.

The same seeded data goes into an embedded DuckDB file (the session's parity baseline,
tests/conftest.py) and, through the simulator's Snowflake sink (PUT + COPY INTO), into a
fakesnow server the Snowflake connector talks to over HTTP (tests/snowflake_server.py). Every
sample config plus onboarding-checklist with a ratio and a CUPED metric runs in-process
(`run_pipeline`) on both; refund-query-rewrite (proportions, guardrails, a p95 quantile),
reading both sources through `{sql: ...}` queries and with a `sql:` metric added, also runs on
Snowflake as the real DAG in an `ab-pipeline run` process, which reaches the server as any
Airflow task would, against the same config read out in-process on DuckDB. Decisions, units
per arm, estimates and every gate outcome must agree (floats to 1e-9 relative).

What this does not prove: fakesnow runs the SQL on DuckDB after translating it, so Snowflake's
own semantics (name case, implicit commits around DDL, numeric types) are not exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.devtools.simulate import main_simulate
from ab_pipeline.warehouse import Warehouse, dispose_all
from tests.local_services import Inbox, serving_smtp, smtp_connection
from tests.snowflake_server import serving_fakesnow
from tests.test_postgres_parity import (
    CONFIGS,
    VARIANT,
    comparable,
    read_out,
    run_all,
    same,
    with_sql_metric_and_query_sources,
)

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("ab-pipeline"))
DAG_RUN = ("refund-query-rewrite", "2026-05-31")


def run_dag(config: Path, run_date: str, warehouse: str, out: Path, home: Path) -> dict[str, Any]:
    """`ab-pipeline run`: the experiment's real DAG in its own process (dag.test()), its
    brief sent to a local SMTP server."""
    with serving_smtp(Inbox()) as smtp:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp_connection(smtp.port)),
            "AB_PIPELINE_SENDER": "readouts@example.com",
        }
        done = subprocess.run(
            [CLI, "run", str(config), "--date", run_date, "--warehouse", warehouse]
            + ["--out", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = out / config.stem / run_date / "results.json"
    assert results.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    return dict(json.loads(results.read_text()))


@pytest.fixture(scope="module")
def both(
    tmp_path_factory: pytest.TempPathFactory, duckdb_parity_baseline: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """DuckDB's readouts (the session's baseline, tests/conftest.py, plus the query-sourced
    config read out in-process there) and Snowflake's, the latter config through the DAG."""
    root = tmp_path_factory.mktemp("snowflake_parity")
    with serving_fakesnow(root / "fakesnow") as snowflake:
        assert main_simulate(["--warehouse", snowflake]) == 0
        config = with_sql_metric_and_query_sources(root / "queries")
        yield {
            "duckdb": duckdb_parity_baseline["runs"],
            "snowflake": run_all(snowflake, root / "snowflake", duckdb_parity_baseline["variant"]),
            "queries_duckdb": read_out(
                config, date.fromisoformat(DAG_RUN[1]), duckdb_parity_baseline["url"], root
            ),
            "dag_snowflake": run_dag(
                config, DAG_RUN[1], snowflake, root / "dag_snowflake", root / "af2"
            ),
            "tables": [
                r["table_name"]
                for r in Warehouse(snowflake).query(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = CURRENT_SCHEMA()"
                )
            ],
            "root": root,
        }
        dispose_all()


def test_decisions_and_numbers_match_duckdb(both: dict[str, Any]) -> None:
    duck, snow = both["duckdb"], both["snowflake"]
    assert duck.keys() == snow.keys() and len(duck) == len(CONFIGS) + 1
    for run, expected in duck.items():
        got = snow[run]
        assert got["decision"] == expected["decision"], run
        assert got["decision_reason"] == expected["decision_reason"], run
        assert got["gates"]["srm"]["counts"] == expected["gates"]["srm"]["counts"], run
        assert same(comparable(expected), comparable(got)) == [], run


def test_every_gate_ran_and_the_primary_was_estimated_on_snowflake(both: dict[str, Any]) -> None:
    """Parity above would also hold if both sides skipped everything: they do not."""
    decisions = {}
    for (key, _), results in both["snowflake"].items():
        gates = results["gates"]
        # Every check ran (some samples carry seeded data faults: found alike on both sides).
        assert len(gates["data_quality"]["checks"]) >= 10, key
        assert sum(gates["srm"]["counts"].values()) > 1000, key
        decisions[key] = results["decision"]
        if results["decision"] != "RERUN":  # a failed gate stops the analysis
            [primary] = [m for m in results["metrics"].values() if m["role"] == "primary"]
            assert all(c["se"] > 0 for c in primary["comparisons"].values()), key
    assert len([d for d in decisions.values() if d != "RERUN"]) >= 3, decisions
    ratio = both["snowflake"][VARIANT, "2026-03-29"]["metrics"]["tickets_per_session"]
    assert ratio["comparisons"]["treatment"]["se"] > 0


def test_the_real_dag_on_snowflake_matches_duckdb(both: dict[str, Any]) -> None:
    """Through query sources, with a `sql:` metric: the contract check read the queries'
    result types, and the metric's values were joined in on Snowflake as on DuckDB."""
    expected, got = both["queries_duckdb"], both["dag_snowflake"]
    assert got["decision"] == expected["decision"] == "SHIP"
    assert got["gates"]["srm"]["counts"] == expected["gates"]["srm"]["counts"]
    assert same(comparable(expected), comparable(got)) == []
    quantile = got["metrics"]["p95_latency_ms"]["comparisons"]["treatment"]
    assert quantile["absolute"] > 0
    contract = got["gates"]["data_quality"]["checks"][0]
    assert contract["name"] == "contract_column_types" and contract["passed"]
    escalations = got["metrics"]["escalations"]
    assert all(arm["value"] > 0 for arm in escalations["arms"].values())
    assert escalations["comparisons"]["treatment"]["se"] > 0


def test_the_pipeline_tables_are_snowflake_upper_case_names(both: dict[str, Any]) -> None:
    """Unquoted-style names (Snowflake's convention): what users' SQL finds unquoted."""
    tables = set(both["tables"])
    assert {"EXPOSURES", "EVENTS", "AB_READOUTS", "AB_METRIC_RESULTS", "AB_GATE_RESULTS"} <= tables
    assert any(t.startswith("AB_UNITS__") for t in tables)
