"""SRM and receipt gates on real warehouses (DuckDB file, PostgreSQL schema, Spark Connect)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from ab_pipeline.core.config import ExperimentConfig, parse_config
from ab_pipeline.gates.receipt import (
    MISSING,
    distinct_values_sql,
    receipt_values_by_field,
    run_receipt_gate,
)
from ab_pipeline.gates.srm import run_srm_gate
from ab_pipeline.readout.extract import RunWindow, build_units_table
from ab_pipeline.warehouse import Warehouse, quote_ident
from tests.warehouse_fixtures import (
    Exposure,
    create_contract_tables,
    experiment_data,
    insert_rows,
)

RUN = date(2026, 5, 31)


def config(schema: str = "", **overrides: Any) -> ExperimentConfig:
    metrics = {"m": {"type": "proportion", "event": "e", "window": "1d"}}
    data = experiment_data("gate-check", metrics, "m", schema, receipt=["index", "decoder"])
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


def test_receipt_fails_saying_there_is_nothing_to_compare_when_nobody_enrolled(
    duckdb_warehouse: Warehouse,
) -> None:
    """Not "index differs: control none, treatment none": no arm has a value at all."""
    outcome = run_receipt_gate(duckdb_warehouse, config(), load(duckdb_warehouse, []), RUN)
    assert outcome is not None and not outcome["passed"]
    assert outcome["mismatches"] == []
    assert outcome["detail"] == "no enrolled unit's exposure to compare"


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


# --- the receipt gate reads every field in one query per pass -------------------------------


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse_and_schema(request: pytest.FixtureRequest) -> Iterator[tuple[Warehouse, str]]:
    if request.param == "duckdb":
        yield request.getfixturevalue("duckdb_warehouse"), ""
    else:
        yield request.getfixturevalue("postgres_schema")


def one_field_at_a_time(
    warehouse: Warehouse, cfg: ExperimentConfig, table: str, field: str
) -> dict[str, list[str]]:
    """The reference: the gate's former query, one full exposures scan per field."""
    rows = warehouse.query(
        f"""
        SELECT x.arm AS arm, x.properties->>:field AS value
        FROM {quote_ident(cfg.source.exposures)} x
        JOIN {quote_ident(table)} u ON u.unit_id = x.unit_id
        WHERE x.experiment_key = :key AND x.exposed_at < :run_end
        GROUP BY x.arm, x.properties->>:field
        ORDER BY 1, 2
        """,
        {"field": field, "key": cfg.key, "run_end": RunWindow.of(cfg, RUN).run_end},
    )
    values: dict[str, list[str]] = {arm: [] for arm in cfg.arms}
    for row in rows:
        value = MISSING if row["value"] is None else str(row["value"])
        values.setdefault(str(row["arm"]), []).append(value)
    return values


def untidy_exposures() -> list[Exposure]:
    """Missing fields, a NULL properties document, numbers, and rows the gate must not see."""
    at = datetime(2026, 5, 5, 9)
    full = {"index": "kb-5", "decoder": "v2", "shards": 3}
    rows: list[Exposure] = [
        ("gate-check", f"c{i}", "control", at + timedelta(hours=i), False, False, full)
        for i in range(6)
    ]
    rows += [
        ("gate-check", "c6", "control", at, False, False, {"index": "kb-5"}),
        ("gate-check", "t0", "treatment", at, False, False, {**full, "shards": 4}),
        ("gate-check", "t1", "treatment", at, False, False, {**full, "index": "kb-6"}),
        ("gate-check", "t2", "treatment", at, False, False, None),
        # Not seen: an internal unit, an exposure after the run date, another experiment.
        ("gate-check", "t3", "treatment", at, True, False, {"index": "kb-internal"}),
        ("gate-check", "c0", "control", datetime(2026, 6, 2), False, False, {"index": "late"}),
        ("other", "c1", "control", at, False, False, {"index": "other"}),
    ]
    return rows


def test_receipt_reads_every_field_in_one_query_per_pass_with_the_former_results(
    warehouse_and_schema: tuple[Warehouse, str],
) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    warehouse, schema = warehouse_and_schema
    fields = ["index", "decoder", "shards", "absent", "index"]  # a repeat counts once
    cfg = config(schema, receipt=fields)
    table = load(warehouse, untidy_exposures(), schema)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        outcome = run_receipt_gate(warehouse, cfg, table, RUN)
    finally:
        event.remove(Engine, "before_cursor_execute", record)

    # All exposures disagree, so the enrolled units' exposures are read again: two passes.
    exposure_reads = [s for s in statements if '"exposures"' in s or "exposures x" in s]
    assert len(exposure_reads) == 2 and len(statements) == 2
    assert outcome is not None and not outcome["passed"]
    assert outcome["fields"] == ["index", "decoder", "shards", "absent"]
    mismatches = {m["field"]: m["values"] for m in outcome["mismatches"]}
    assert mismatches == {
        "index": {"control": ["kb-5"], "treatment": ["kb-5", "kb-6", MISSING]},
        "decoder": {"control": ["v2", MISSING], "treatment": ["v2", MISSING]},
        "shards": {"control": ["3", MISSING], "treatment": ["3", "4", MISSING]},
        "absent": {"control": [MISSING], "treatment": [MISSING]},
    }
    together = receipt_values_by_field(warehouse, cfg, table, fields, RUN)
    for field in fields:
        assert together[field] == one_field_at_a_time(warehouse, cfg, table, field), field
    warehouse.execute(f"DROP TABLE {quote_ident(table)}")


def test_receipt_field_names_are_bound_parameters(duckdb_warehouse: Warehouse) -> None:
    cfg = config()
    table = load(
        duckdb_warehouse,
        exposures({"control": 3, "treatment": 3}, {"control": SAME, "treatment": SAME}),
    )
    odd = "index' OR '1'='1"  # config validation refuses this; the query must not care
    values = receipt_values_by_field(duckdb_warehouse, cfg, table, [odd, "index"], RUN)
    assert values == {
        odd: {"control": [MISSING], "treatment": [MISSING]},
        "index": {"control": ["kb-5"], "treatment": ["kb-5"]},
    }


def recorded_statements(run: Any) -> tuple[Any, list[str]]:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        return run(), statements
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_a_uniform_receipt_is_read_without_joining_the_units(
    warehouse_and_schema: tuple[Warehouse, str],
) -> None:
    warehouse, schema = warehouse_and_schema
    cfg = config(schema)
    rows = exposures({"control": 20, "treatment": 20}, {"control": SAME, "treatment": SAME})
    table = load(warehouse, rows, schema)
    outcome, statements = recorded_statements(lambda: run_receipt_gate(warehouse, cfg, table, RUN))
    assert outcome is not None and outcome["passed"]
    reads = [s for s in statements if "properties" in s]
    assert len(reads) == 1 and "IN (SELECT u.unit_id" not in reads[0]
    for field in ("index", "decoder"):
        assert receipt_values_by_field(warehouse, cfg, table, [field], RUN)[field] == (
            one_field_at_a_time(warehouse, cfg, table, field)
        )
    warehouse.execute(f"DROP TABLE {quote_ident(table)}")


def test_values_of_units_that_are_not_enrolled_do_not_fail_the_receipt(
    warehouse_and_schema: tuple[Warehouse, str],
) -> None:
    """An excluded (internal) unit ran another index: the first pass sees it, the second
    pass over enrolled units does not, and the gate passes."""
    warehouse, schema = warehouse_and_schema
    cfg = config(schema)
    rows = exposures({"control": 10, "treatment": 10}, {"control": SAME, "treatment": SAME})
    at = datetime(2026, 5, 5, 9)
    rows.append(("gate-check", "staff", "treatment", at, True, False, {**SAME, "index": "kb-x"}))
    table = load(warehouse, rows, schema)
    outcome, statements = recorded_statements(lambda: run_receipt_gate(warehouse, cfg, table, RUN))
    assert outcome is not None and outcome["passed"], outcome
    assert len([s for s in statements if "properties" in s]) == 2
    warehouse.execute(f"DROP TABLE {quote_ident(table)}")


def test_an_arm_seen_only_in_excluded_units_has_no_receipt_values(
    warehouse_and_schema: tuple[Warehouse, str],
) -> None:
    """The first pass agrees everywhere, but one arm's only exposures are an internal unit's:
    the enrolled units' exposures hold no value for that arm, as the second pass reports."""
    warehouse, schema = warehouse_and_schema
    cfg = config(schema)
    rows = exposures({"control": 10}, {"control": SAME})
    at = datetime(2026, 5, 5, 9)
    rows.append(("gate-check", "staff", "treatment", at, True, False, SAME))
    table = load(warehouse, rows, schema)
    values = receipt_values_by_field(warehouse, cfg, table, ["index"], RUN)["index"]
    assert values == {"control": ["kb-5"], "treatment": []}
    assert values == one_field_at_a_time(warehouse, cfg, table, "index")
    warehouse.execute(f"DROP TABLE {quote_ident(table)}")


def test_a_receipt_field_with_thousands_of_values_lists_ten_and_counts_the_rest(
    duckdb_warehouse: Warehouse,
) -> None:
    """10,000 distinct values must not become a 39,000-character reason and a 361 KB email."""
    rows = [
        (
            "gate-check",
            f"u{i}",
            ("control", "treatment")[i % 2],
            datetime(2026, 5, 5, 9),
            False,
            False,
            {"index": f"kb-{i:05d}", "decoder": "v2"},
        )
        for i in range(10_000)
    ]
    table = load(duckdb_warehouse, rows)
    outcome = run_receipt_gate(duckdb_warehouse, config(), table, RUN)
    assert outcome is not None and not outcome["passed"]
    [mismatch] = outcome["mismatches"]
    control = mismatch["values"]["control"]
    assert control[:10] == [f"kb-{i:05d}" for i in range(0, 20, 2)]
    assert control[10:] == ["and 4,990 more"]
    assert mismatch["values"]["treatment"][10:] == ["and 4,990 more"]
    assert len(outcome["detail"]) < 400, outcome["detail"]
    assert "and 4,990 more" in outcome["detail"]


def test_srm_names_the_arms_units_were_enrolled_in_when_none_is_configured(
    duckdb_warehouse: Warehouse,
) -> None:
    """An integer arm (0/1) used to read as 'no enrolled units'."""
    rows = exposures({"0": 30, "1": 25}, {"0": SAME, "1": SAME})
    table = load(duckdb_warehouse, rows)
    outcome = run_srm_gate(duckdb_warehouse, config(), table)
    assert not outcome["passed"] and outcome["counts"] == {"control": 0, "treatment": 0}
    assert outcome["detail"] == (
        "no enrolled unit is in a configured arm (control, treatment); the units table has "
        "arms '0' (30), '1' (25)"
    )
    empty = run_srm_gate(duckdb_warehouse, config(), load(duckdb_warehouse, []))
    assert empty["detail"] == "no enrolled units: nothing to test"


@pytest.mark.slow
def test_on_spark_the_receipt_groups_the_documents_before_parsing_any(
    spark_url: str, spark_database: str
) -> None:
    """Spark's optimizer drops a GROUP BY whose rows only feed another GROUP BY; the receipt
    query's inner grouping of the JSON documents must survive it, or every exposure's
    document is parsed (ten times the gate's time at 1 M units)."""
    warehouse = Warehouse(spark_url)
    create_contract_tables(warehouse, spark_database)
    rows = exposures({"control": 3, "treatment": 3}, {"control": SAME, "treatment": SAME})
    values = ", ".join(
        f"('{key}', '{unit}', '{arm}', TIMESTAMP '{at:%Y-%m-%d %H:%M:%S}', false, false, "
        f"'{json.dumps(props)}')"
        for key, unit, arm, at, _, _, props in rows
    )
    warehouse.execute(f"INSERT INTO {spark_database}.exposures VALUES {values}")
    sql, params = distinct_values_sql(
        config(spark_database), None, ["index", "decoder"], RUN, warehouse.dialect
    )
    plan = warehouse.query(f"EXPLAIN {warehouse.render(sql)}", params)[0]["plan"]
    # Parsed straight off the scanned column, a document is parsed once per exposure.
    assert "get_json_object(properties#" not in plan, plan
    found = {(r["field_no"], r["arm"], r["value"]) for r in warehouse.query(sql, params)}
    assert found == {
        (0, "control", "kb-5"),
        (0, "treatment", "kb-5"),
        (1, "control", "v2"),
        (1, "treatment", "v2"),
    }
