"""SRM and receipt gates on real warehouses (DuckDB file, PostgreSQL schema)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from ab_pipeline.config import ExperimentConfig, parse_config
from ab_pipeline.extract import build_units_table
from ab_pipeline.gates.receipt import run_receipt_gate
from ab_pipeline.gates.srm import run_srm_gate
from ab_pipeline.warehouse import Warehouse, quote_ident
from tests.warehouse_fixtures import Exposure, create_contract_tables, insert_rows

RUN = date(2026, 5, 31)


def config(schema: str = "", **overrides: Any) -> ExperimentConfig:
    prefix = f"{schema}." if schema else ""
    data: dict[str, Any] = {
        "key": "gate-check",
        "version": 1,
        "title": "gates",
        "owner": "o@example.com",
        "recipients": ["r@example.com"],
        "hypothesis": {"change": "c", "metric": "m", "direction": "increase"},
        "unit": "user",
        "arms": {"control": 0.5, "treatment": 0.5},
        "control": "control",
        "start": "2026-05-04",
        "end": "2026-05-31",
        "source": {"exposures": f"{prefix}exposures", "events": f"{prefix}events"},
        "receipt": ["index", "decoder"],
        "metrics": {"m": {"type": "proportion", "event": "e", "window": "1d"}},
        "primary": "m",
    }
    return parse_config(data | overrides)


def exposures(counts: dict[str, int], properties: dict[str, dict[str, Any]]) -> list[Exposure]:
    rows: list[Exposure] = []
    at = datetime(2026, 5, 5, 9)
    for arm, n in counts.items():
        for i in range(n):
            rows.append(
                (
                    "gate-check",
                    f"{arm}-{i}",
                    arm,
                    at + timedelta(minutes=i),
                    False,
                    False,
                    properties[arm],
                )
            )
    return rows


SAME = {"index": "kb-5", "decoder": "v2"}


def load(warehouse: Warehouse, rows: list[Exposure], schema: str = "") -> str:
    create_contract_tables(warehouse, schema)
    insert_rows(warehouse, rows, [], schema)
    return build_units_table(warehouse, config(schema), RUN)


def test_srm_passes_on_the_textbook_split_and_records_counts(duckdb_warehouse: Warehouse) -> None:
    table = load(
        duckdb_warehouse,
        exposures({"control": 3328, "treatment": 3460}, {"control": SAME, "treatment": SAME}),
    )
    outcome = run_srm_gate(duckdb_warehouse, config(), table)
    assert outcome["passed"]
    assert outcome["counts"] == {"control": 3328, "treatment": 3460}
    assert round(outcome["p_value"], 3) == 0.109


def test_srm_fails_on_the_broken_split(duckdb_warehouse: Warehouse) -> None:
    table = load(
        duckdb_warehouse,
        exposures({"control": 3050, "treatment": 3738}, {"control": SAME, "treatment": SAME}),
    )
    outcome = run_srm_gate(duckdb_warehouse, config(), table)
    assert not outcome["passed"]
    assert outcome["p_value"] < 0.001
    assert "does not match" in outcome["detail"]


def test_srm_fails_when_nobody_enrolled(duckdb_warehouse: Warehouse) -> None:
    table = load(duckdb_warehouse, [])
    outcome = run_srm_gate(duckdb_warehouse, config(), table)
    assert not outcome["passed"] and outcome["counts"] == {"control": 0, "treatment": 0}


def test_receipt_passes_when_every_arm_ran_the_same_system(duckdb_warehouse: Warehouse) -> None:
    table = load(
        duckdb_warehouse,
        exposures({"control": 20, "treatment": 20}, {"control": SAME, "treatment": SAME}),
    )
    outcome = run_receipt_gate(duckdb_warehouse, config(), table, RUN)
    assert outcome is not None and outcome["passed"] and outcome["mismatches"] == []


def test_receipt_names_the_field_and_values_per_arm(duckdb_warehouse: Warehouse) -> None:
    rows = exposures(
        {"control": 20, "treatment": 20},
        {"control": SAME, "treatment": {"index": "kb-6", "decoder": "v2"}},
    )
    table = load(duckdb_warehouse, rows)
    outcome = run_receipt_gate(duckdb_warehouse, config(), table, RUN)
    assert outcome is not None and not outcome["passed"]
    assert outcome["mismatches"] == [
        {"field": "index", "values": {"control": ["kb-5"], "treatment": ["kb-6"]}}
    ]


def test_receipt_flags_a_missing_field(duckdb_warehouse: Warehouse) -> None:
    rows = exposures(
        {"control": 5, "treatment": 5}, {"control": SAME, "treatment": {"index": "kb-5"}}
    )
    outcome = run_receipt_gate(duckdb_warehouse, config(), load(duckdb_warehouse, rows), RUN)
    assert outcome is not None
    assert outcome["mismatches"] == [
        {"field": "decoder", "values": {"control": ["v2"], "treatment": ["(missing)"]}}
    ]


def test_receipt_gate_does_not_run_without_receipt_fields(duckdb_warehouse: Warehouse) -> None:
    table = load(
        duckdb_warehouse,
        exposures({"control": 5, "treatment": 5}, {"control": SAME, "treatment": SAME}),
    )
    assert run_receipt_gate(duckdb_warehouse, config(receipt=[]), table, RUN) is None


def test_gates_agree_on_postgresql(postgres_schema: tuple[Warehouse, str]) -> None:
    warehouse, schema = postgres_schema
    rows = exposures(
        {"control": 300, "treatment": 330},
        {"control": SAME, "treatment": {"index": "kb-6", "decoder": "v2"}},
    )
    table = load(warehouse, rows, schema)
    srm = run_srm_gate(warehouse, config(schema), table)
    receipt = run_receipt_gate(warehouse, config(schema), table, RUN)
    assert srm["counts"] == {"control": 300, "treatment": 330} and srm["passed"]
    assert receipt is not None and receipt["mismatches"][0]["field"] == "index"
    warehouse.execute(f"DROP TABLE {quote_ident(table)}")
