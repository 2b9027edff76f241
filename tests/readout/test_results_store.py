"""Results tables: one row set per readout attempt, every attempt kept; the `ab_latest_*` views
and `history` show the attempt each date stands on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.readout import results_store
from ab_pipeline.readout.results_store import (
    TABLES,
    history,
    latest_final_readout,
    table,
    write_readout,
)
from ab_pipeline.warehouse import Warehouse

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def ship(run_date: str = "2026-05-31", **changes: Any) -> dict[str, Any]:
    data = json.loads((FIXTURES / "results_ship.json").read_text())
    data.update(run_date=run_date, **changes)
    return dict(data)


def count(warehouse: Warehouse, name: str, schema: str | None = None) -> int:
    rows = warehouse.query(f"SELECT COUNT(*) AS n FROM {results_store.table(name, schema)}")
    return int(rows[0]["n"])


def test_a_readout_lands_in_every_table(duckdb_warehouse: Warehouse) -> None:
    results = ship()
    write_readout(duckdb_warehouse, results)
    readout = duckdb_warehouse.query("SELECT * FROM ab_readouts")[0]
    assert readout["decision"] == "SHIP" and readout["owner"] == results["owner"]
    assert readout["config_sha256"] == results["config_sha256"]
    assert json.loads(readout["results_json"])["decision"] == "SHIP"
    primary = duckdb_warehouse.query(
        "SELECT * FROM ab_metric_results WHERE metric = 'resolution_rate' AND arm = 'treatment'"
    )[0]
    assert primary["absolute"] == 0.04 and primary["ci_low"] == 0.009662
    assert primary["p_value"] == 0.009823 and primary["units"] == 2000
    arms = count(duckdb_warehouse, "ab_metric_results")
    assert arms == sum(len(m["arms"]) for m in results["metrics"].values())
    gates = {r["gate"]: r for r in duckdb_warehouse.query("SELECT * FROM ab_gate_results")}
    assert gates["srm"]["passed"] and gates["srm"]["ran"]
    assert count(duckdb_warehouse, "ab_checks") == len(results["checks"])


@pytest.fixture(params=["duckdb", "postgresql"])
def store(request: pytest.FixtureRequest) -> tuple[Warehouse, str | None]:
    """The results tables' warehouse and schema, on DuckDB and on the real PostgreSQL."""
    if request.param == "duckdb":
        return request.getfixturevalue("duckdb_warehouse"), None
    warehouse, schema = request.getfixturevalue("postgres_schema")
    return warehouse, schema


def decisions(warehouse: Warehouse, name: str, schema: str | None) -> list[str]:
    rows = warehouse.query(
        f"SELECT decision FROM {table(name, schema)} ORDER BY written_at, attempt_id"
    )
    return [r["decision"] for r in rows]


def test_the_same_attempt_written_again_replaces_only_its_own_rows(
    duckdb_warehouse: Warehouse,
) -> None:
    write_readout(duckdb_warehouse, ship(), attempt="run-1")
    write_readout(duckdb_warehouse, ship(decision="ITERATE"), attempt="run-2")
    write_readout(duckdb_warehouse, ship(decision="STOP"), attempt="run-2")  # a retried brief
    assert decisions(duckdb_warehouse, "ab_readouts", None) == ["SHIP", "STOP"]
    assert count(duckdb_warehouse, "ab_checks") == 2 * len(ship()["checks"])
    assert decisions(duckdb_warehouse, "ab_latest_readouts", None) == ["STOP"]
    assert count(duckdb_warehouse, "ab_latest_checks") == len(ship()["checks"])


def test_a_rerun_after_a_ship_keeps_the_ship_queryable(store: tuple[Warehouse, str | None]) -> None:
    warehouse, schema = store
    write_readout(warehouse, ship(), schema, attempt="nightly")
    rerun = json.loads((FIXTURES / "results_rerun.json").read_text())
    rerun.update(run_date="2026-05-31", experiment="refund-query-rewrite", status="final")
    write_readout(warehouse, rerun, schema, attempt="manual-rerun")

    assert decisions(warehouse, "ab_readouts", schema) == ["SHIP", "RERUN"]  # nothing erased
    assert decisions(warehouse, "ab_latest_readouts", schema) == ["SHIP"]
    latest_metrics = count(warehouse, "ab_latest_metric_results", schema)
    assert latest_metrics == sum(len(m["arms"]) for m in ship()["metrics"].values())
    gates = warehouse.query(
        f"SELECT gate, passed FROM {table('ab_latest_gate_results', schema)} WHERE ran"
    )
    assert {g["gate"] for g in gates} == {"data_quality", "srm", "receipt"}
    assert all(g["passed"] for g in gates)
    [later] = history(warehouse, "refund-query-rewrite", date(2026, 6, 1), schema)
    assert later["decision"] == "SHIP" and later["primary"]["absolute"] == 0.04
    final = latest_final_readout(warehouse, "refund-query-rewrite", schema)
    assert final is not None and final["decision"] == "SHIP"

    # A later decision-grade attempt is what the date stands on from then on.
    write_readout(warehouse, ship(decision="ITERATE"), schema, attempt="fresh-data")
    assert decisions(warehouse, "ab_latest_readouts", schema) == ["ITERATE"]
    assert len(decisions(warehouse, "ab_readouts", schema)) == 3


def test_a_date_with_only_reruns_stands_on_its_latest(duckdb_warehouse: Warehouse) -> None:
    rerun = json.loads((FIXTURES / "results_rerun.json").read_text())
    write_readout(duckdb_warehouse, rerun, attempt="a")
    write_readout(duckdb_warehouse, {**rerun, "decision_reason": "again"}, attempt="b")
    [row] = duckdb_warehouse.query("SELECT attempt_id FROM ab_latest_readouts")
    assert row["attempt_id"] == "b"


def without_added_columns(name: str, columns: str) -> str:
    """A table's DDL as it was before the columns of `ADDED_COLUMNS`."""
    for column in results_store.ADDED_COLUMNS.get(name, []):
        columns = re.sub(rf",\s*{column}", "", columns)
    return columns


def legacy_columns(columns: str, name: str = "") -> str:
    """A table's DDL as it was before attempts."""
    columns = re.sub(r",?\s*attempt_id TEXT NOT NULL", "", without_added_columns(name, columns))
    return columns.replace("run_date, attempt_id", "run_date")


def test_tables_from_before_attempts_are_migrated(store: tuple[Warehouse, str | None]) -> None:
    warehouse, schema = store
    warehouse.execute(
        [f"CREATE TABLE {table(n, schema)} ({legacy_columns(c, n)})" for n, c in TABLES.items()]
    )
    old = ship("2026-05-30")
    warehouse.execute(
        f"INSERT INTO {table('ab_readouts', schema)} (experiment, run_date, status, decision, "
        "config_sha256, written_at, results_json) VALUES (:e, :d, 'interim', 'CONTINUE', 'x', "
        ":t, '{}')",
        {"e": old["experiment"], "d": date(2026, 5, 30), "t": "2026-05-30 01:00:00"},
    )
    write_readout(warehouse, ship(), schema, attempt="new")
    rows = warehouse.query(
        f"SELECT run_date, decision, attempt_id FROM {table('ab_readouts', schema)} "
        "ORDER BY run_date"
    )
    assert [(str(r["run_date"]), r["decision"], r["attempt_id"]) for r in rows] == [
        ("2026-05-30", "CONTINUE", results_store.LEGACY_ATTEMPT),
        ("2026-05-31", "SHIP", "new"),
    ]
    assert [
        h["decision"] for h in history(warehouse, old["experiment"], date(2026, 6, 1), schema)
    ] == [
        "CONTINUE",
        "SHIP",
    ]


def test_tables_from_before_definition_hashes_gain_the_columns(
    store: tuple[Warehouse, str | None],
) -> None:
    warehouse, schema = store
    warehouse.execute(
        [
            f"CREATE TABLE {table(n, schema)} ({without_added_columns(n, c)})"
            for n, c in TABLES.items()
        ]
        + results_store.view_statements(schema)  # the views, as the earlier version made them
    )
    old = ship("2026-05-30")
    warehouse.execute(
        f"INSERT INTO {table('ab_metric_results', schema)} (experiment, run_date, metric, arm, "
        "is_control, attempt_id) VALUES (:e, :d, 'resolution_rate', 'control', TRUE, 'old')",
        {"e": old["experiment"], "d": date(2026, 5, 30)},
    )
    results = ship()
    write_readout(warehouse, results, schema, attempt="new")
    rows = warehouse.query(
        f"SELECT run_date, attempt_id, definition_sha256, catalog_file "
        f"FROM {table('ab_metric_results', schema)} WHERE metric = 'resolution_rate' "
        "ORDER BY run_date, arm"
    )
    recorded = results["metric_definitions"]["resolution_rate"]["sha256"]
    assert [(r["attempt_id"], r["definition_sha256"]) for r in rows] == [
        ("old", None),
        ("new", recorded),
        ("new", recorded),
    ]
    [latest] = warehouse.query(
        f"SELECT COUNT(DISTINCT definition_sha256) AS n "
        f"FROM {table('ab_latest_metric_results', schema)}"
    )
    assert latest["n"] == len(results["metrics"])


def test_a_failed_write_leaves_the_previous_rows(
    duckdb_warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_readout(duckdb_warehouse, ship())
    before = {name: count(duckdb_warehouse, name) for name in results_store.TABLES}

    def broken_checks(results: dict[str, Any]) -> Any:
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(results_store, "check_rows", broken_checks)
    with pytest.raises(RuntimeError):
        write_readout(duckdb_warehouse, ship(decision="STOP"))
    assert {name: count(duckdb_warehouse, name) for name in results_store.TABLES} == before
    assert duckdb_warehouse.query("SELECT decision FROM ab_readouts")[0]["decision"] == "SHIP"


def test_history_lists_earlier_readouts_oldest_first(duckdb_warehouse: Warehouse) -> None:
    for day, decision in [("2026-05-20", "CONTINUE"), ("2026-05-10", "CONTINUE")]:
        write_readout(duckdb_warehouse, ship(day, decision=decision, status="interim"))
    write_readout(duckdb_warehouse, ship("2026-05-31"))
    from datetime import date

    earlier = history(duckdb_warehouse, "refund-query-rewrite", date(2026, 5, 31))
    assert [h["run_date"] for h in earlier] == ["2026-05-10", "2026-05-20"]
    assert earlier[0] == {
        "run_date": "2026-05-10",
        "decision": "CONTINUE",
        "status": "interim",
        "primary": {"absolute": 0.04, "ci": [0.009662, 0.070338]},
    }


def test_a_rerun_readout_has_gates_but_no_metrics(duckdb_warehouse: Warehouse) -> None:
    rerun = json.loads((FIXTURES / "results_rerun.json").read_text())
    write_readout(duckdb_warehouse, rerun)
    assert count(duckdb_warehouse, "ab_metric_results") == 0
    failed = duckdb_warehouse.query("SELECT gate FROM ab_gate_results WHERE NOT passed")
    assert {r["gate"] for r in failed} == set(rerun["gate_failures"])


WRITER = """
import json, sys, time
from ab_pipeline.readout import results_store
from ab_pipeline.warehouse import Warehouse

def stall(results):
    print("inside", flush=True)
    time.sleep(60)
    return iter(())

results_store.check_rows = stall
results = json.loads(sys.argv[3])
results_store.write_readout(Warehouse(sys.argv[1]), results, sys.argv[2])
"""


def test_a_killed_writer_leaves_no_half_written_readout(
    postgres_schema: tuple[Warehouse, str],
) -> None:
    """SIGKILL a real writer mid-transaction: PostgreSQL keeps the previous readout whole."""
    warehouse, schema = postgres_schema
    write_readout(warehouse, ship(), schema)
    before = {name: count(warehouse, name, schema) for name in results_store.TABLES}
    payload = json.dumps(ship(decision="STOP", checks=[]))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, warehouse.url, schema, payload],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "inside"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
    time.sleep(0.2)  # the server notices the dropped connection and rolls back
    assert {name: count(warehouse, name, schema) for name in results_store.TABLES} == before
    decisions = warehouse.query(f"SELECT decision FROM {schema}.ab_readouts")
    assert [r["decision"] for r in decisions] == ["SHIP"]
