"""Assignment-integrity gate: recomputes every enrolled unit's hashed arm in the warehouse."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.assignment import assign
from ab_pipeline.core.config import load_config, parse_config
from ab_pipeline.devtools.simulate import parse_scenario, simulate
from ab_pipeline.gates.assignment import run_assignment_gate
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.readout.extract import build_units_table
from ab_pipeline.warehouse import Warehouse
from tests.warehouse_fixtures import create_contract_tables, insert_rows

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
SCENARIO = REPO / "simulations" / "refund-query-rewrite.yaml"
FINAL = date(2026, 5, 31)
HASHED = {"assignment": "hash", "assignment_check": {"first_event": "page_viewed"}}


def hashed_scenario(**changes: Any) -> dict[str, Any]:
    data = yaml.safe_load(SCENARIO.read_text())
    data.pop("assignment")
    data.update({"first_event": {"event": "page_viewed"}, **changes})
    return dict(data)


def run(tmp_path: Path, warehouse: Warehouse, scenario: dict[str, Any]) -> dict[str, Any]:
    import json

    data = {**yaml.safe_load(CONFIG.read_text()), **HASHED}
    path = tmp_path / "refund-query-rewrite.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    simulate(config, parse_scenario(scenario), warehouse.url)
    ctx = RunContext(path, FINAL, warehouse.url, tmp_path / "briefs")
    run_pipeline(ctx, deliver=False)
    return dict(json.loads((ctx.run_dir / "results.json").read_text()))


def test_clean_hashed_warehouse_passes(tmp_path: Path, duckdb_warehouse: Warehouse) -> None:
    results = run(tmp_path, duckdb_warehouse, hashed_scenario())
    gate = results["gates"]["assignment"]
    assert gate["passed"] and gate["mismatches"] == 0 and gate["rate"] == 0
    assert gate["units"] == sum(results["gates"]["srm"]["counts"].values())
    assert gate["early_exposures"]["early"] == 0
    assert results["decision"] != "RERUN"


def test_one_percent_flipped_arms_fail_the_gate(
    tmp_path: Path, duckdb_warehouse: Warehouse
) -> None:
    results = run(tmp_path, duckdb_warehouse, hashed_scenario(arm_flip_share=0.01))
    gate = results["gates"]["assignment"]
    assert not gate["passed"]
    assert results["decision"] == "RERUN" and "assignment" in results["gate_failures"]
    assert 0.005 < gate["rate"] < 0.015 and gate["mismatches"] == round(
        gate["rate"] * gate["units"]
    )
    assert len(gate["examples"]) == 5
    for example in gate["examples"]:
        truth = assign(
            "refund-query-rewrite", 1, example["unit_id"], {"control": 0.5, "treatment": 0.5}
        )
        assert example["expected"] == truth != example["logged"]
    assert "assignment" in results["decision_reason"]


def test_early_exposures_are_reported_not_gating(
    tmp_path: Path, duckdb_warehouse: Warehouse
) -> None:
    results = run(
        tmp_path,
        duckdb_warehouse,
        hashed_scenario(first_event={"event": "page_viewed", "early_share": 0.05}),
    )
    gate = results["gates"]["assignment"]
    early = gate["early_exposures"]
    assert gate["passed"] and 0.03 < early["rate"] < 0.07
    assert all(e["first_exposed_at"] < e["first_event_at"] for e in early["examples"])
    assert "exposed before their first 'page_viewed'" in gate["detail"]


def test_the_gate_does_not_apply_to_external_assignment(duckdb_warehouse: Warehouse) -> None:
    config = load_config(CONFIG)
    assert run_assignment_gate(duckdb_warehouse, config, "no_such_table", FINAL) is None


def _hand_made(warehouse: Warehouse, schema: str, flip: set[str]) -> tuple[Any, str]:
    data = {**yaml.safe_load(CONFIG.read_text()), **HASHED, "receipt": []}
    data["source"] = {"exposures": f"{schema}.exposures", "events": f"{schema}.events"}
    config = parse_config(data)
    arms = {"control": 0.5, "treatment": 0.5}
    start = datetime(2026, 5, 5, 9)
    exposures, events = [], []
    for n in range(200):
        unit = f"acct-{n:03d}"
        arm = assign(config.key, config.version, unit, arms)
        if unit in flip:
            arm = "treatment" if arm == "control" else "control"
        t = start + timedelta(minutes=n)
        exposures.append((config.key, unit, arm, t, False, False, None))
        # acct-000..009 saw the page only after their exposure was logged.
        seen = t + timedelta(minutes=5) if n < 10 else t - timedelta(seconds=30)
        events.append((unit, "page_viewed", seen, None, config.key))
    create_contract_tables(warehouse, schema)
    insert_rows(warehouse, exposures, events, schema)
    return config, build_units_table(warehouse, config, FINAL)


@pytest.mark.parametrize("flip", [set(), {"acct-050", "acct-150"}])
def test_postgres_gate_counts_mismatches_and_early_exposures(
    postgres_schema: tuple[Warehouse, str], flip: set[str]
) -> None:
    warehouse, schema = postgres_schema
    config, table = _hand_made(warehouse, schema, flip)
    gate = run_assignment_gate(warehouse, config, table, FINAL)
    assert gate is not None
    # Any logged arm the hash does not give fails the gate, even 2 of 200 units.
    assert gate["passed"] is (not flip)
    assert gate["mismatches"] == len(flip) and gate["units"] == 200
    assert gate["rate"] == pytest.approx(len(flip) / 200)
    assert {e["unit_id"] for e in gate["examples"]} == flip
    assert gate["early_exposures"]["early"] == 10 and gate["early_exposures"]["without_event"] == 0
