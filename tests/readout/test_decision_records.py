"""Human decision records: stored next to the pipeline's decision, kept across re-runs, listed in
every later results.json."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import load_config
from ab_pipeline.devtools.simulate import load_scenario, parse_scenario, simulate
from ab_pipeline.orchestration.cli import main
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.readout.decision_records import load_decisions, record_decision
from ab_pipeline.warehouse import Warehouse, dispose_all

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
SCENARIO = REPO / "simulations" / "refund-query-rewrite.yaml"
FINAL = date(2026, 5, 31)


def readout(tmp_path: Path, warehouse: Warehouse, day: date = FINAL) -> dict[str, Any]:
    ctx = RunContext(CONFIG, day, warehouse.url, tmp_path / "briefs")
    run_pipeline(ctx, deliver=False)
    return dict(json.loads((ctx.run_dir / "results.json").read_text()))


def decide(tmp_path: Path, warehouse: Warehouse, decision: str, by: str) -> int:
    return main(
        [
            "decide", "refund-query-rewrite", "--decision", decision, "--by", by,
            "--note", "launch with a holdback", "--follow-up", "2026-07-01",
            "--warehouse", warehouse.url, "--out", str(tmp_path / "briefs"),
        ]
    )  # fmt: skip


def test_records_survive_reruns_and_appear_in_the_next_results(
    tmp_path: Path, duckdb_warehouse: Warehouse, capsys: pytest.CaptureFixture[str]
) -> None:
    simulate(load_config(CONFIG), load_scenario(SCENARIO), duckdb_warehouse.url)
    first = readout(tmp_path, duckdb_warehouse)
    pipeline = first["decision"]
    assert first["human_decisions"] == [] and first["status"] == "final"
    other = "iterate" if pipeline != "ITERATE" else "ship"

    assert decide(tmp_path, duckdb_warehouse, other, "ana@example.com") == 0
    assert f"DISAGREES with the pipeline's {pipeline}" in capsys.readouterr().out
    archived = json.loads(
        (tmp_path / "briefs/refund-query-rewrite/2026-05-31/results.json").read_text()
    )
    [record] = archived["human_decisions"]  # the archive shows it without a re-run
    assert record["decision"] == other.upper() and record["disagrees"]
    assert record["pipeline_decision"] == pipeline
    assert record["by"] == "ana@example.com" and record["follow_up"] == "2026-07-01"

    # A re-run (fresh data, same date) replaces the pipeline's outputs, never the human rows.
    simulate(load_config(CONFIG), load_scenario(SCENARIO), duckdb_warehouse.url)
    again = readout(tmp_path, duckdb_warehouse)
    assert again["human_decisions"] == archived["human_decisions"]

    assert decide(tmp_path, duckdb_warehouse, pipeline.lower(), "lead@example.com") == 0
    later = readout(tmp_path, duckdb_warehouse)
    assert [r["decision"] for r in later["human_decisions"]] == [other.upper(), pipeline]
    assert [r["disagrees"] for r in later["human_decisions"]] == [True, False]


def test_decide_needs_a_final_brief(
    tmp_path: Path, duckdb_warehouse: Warehouse, capsys: pytest.CaptureFixture[str]
) -> None:
    simulate(load_config(CONFIG), load_scenario(SCENARIO), duckdb_warehouse.url)
    assert readout(tmp_path, duckdb_warehouse, date(2026, 5, 14))["status"] == "interim"
    assert decide(tmp_path, duckdb_warehouse, "ship", "ana@example.com") == 2
    assert "no final brief" in capsys.readouterr().err


def test_postgres_stores_and_loads_records(postgres_schema: tuple[Warehouse, str]) -> None:
    warehouse, schema = postgres_schema
    results = {"run_date": "2026-05-31", "decision": "STOP"}
    record_decision(
        warehouse, "exp", "stop", "ana", "guardrail", date(2026, 6, 2), results, schema=schema
    )
    record_decision(
        warehouse, "exp", "ship", "bob", "override", date(2026, 6, 9), results, schema=schema
    )
    rows = load_decisions(warehouse, "exp", schema=schema)
    assert [(r["decision"], r["disagrees"]) for r in rows] == [("STOP", False), ("SHIP", True)]
    assert rows[0]["run_date"] == "2026-05-31" and rows[1]["follow_up"] == "2026-06-09"
    assert load_decisions(warehouse, "other", schema=schema) == []
    with pytest.raises(ValueError, match="continue"):
        record_decision(warehouse, "exp", "continue", "a", "b", date(2026, 6, 1), results)


def small_scenario(units: int = 4000) -> Any:
    data = yaml.safe_load(SCENARIO.read_text())
    data["units"] = units
    return parse_scenario(data)


def test_concurrent_decides_on_one_duckdb_file_all_land(
    tmp_path: Path, duckdb_warehouse: Warehouse
) -> None:
    """Eight `ab-pipeline decide` processes at once: each waits for the file, none fails."""
    simulate(load_config(CONFIG), small_scenario(), duckdb_warehouse.url)
    assert readout(tmp_path, duckdb_warehouse)["status"] == "final"
    dispose_all()
    command = [
        str(Path(sys.executable).with_name("ab-pipeline")), "decide", "refund-query-rewrite",
        "--note", "ship it", "--follow-up", "2026-07-01", "--warehouse", duckdb_warehouse.url,
        "--out", str(tmp_path / "briefs"), "--decision",
    ]  # fmt: skip
    began = time.monotonic()
    processes = [
        subprocess.Popen(
            [*command, "ship" if i % 2 else "stop", "--by", f"owner{i}@example.com"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    outcomes = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in processes]
    elapsed = time.monotonic() - began
    assert [code for code, _ in outcomes] == [0] * 8, outcomes
    rows = duckdb_warehouse.query("SELECT decided_by, decision FROM ab_human_decisions")
    assert sorted(r["decided_by"] for r in rows) == sorted(
        f"owner{i}@example.com" for i in range(8)
    )
    print(f"8 concurrent decides in {elapsed:.1f} s")
