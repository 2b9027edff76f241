"""Per-run scratch tables (`ab_units__*`, `ab_qhist__*`) do not pile up: the brief stage drops
all but the latest few run dates' of each experiment, on DuckDB and PostgreSQL."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml

from ab_pipeline.core.config import ExperimentConfig, load_config
from ab_pipeline.readout.extract import drop_old_run_tables
from ab_pipeline.warehouse import Warehouse, quote_ident
from ab_pipeline.warehouse.run_tables import StepTables, scratch_table_name, units_table_name

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
DAYS = ["20260527", "20260528", "20260529", "20260530", "20260531"]


def config_in(
    tmp_path: Path, schema: str | None, key: str = "refund-query-rewrite"
) -> ExperimentConfig:
    data = yaml.safe_load(CONFIG.read_text())
    data["key"] = key
    if schema:
        data["source"]["work_schema"] = schema
    path = tmp_path / f"{key}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.fixture(params=["duckdb", "postgresql"])
def store(request: pytest.FixtureRequest) -> tuple[Warehouse, str | None]:
    if request.param == "duckdb":
        return request.getfixturevalue("duckdb_warehouse"), None
    warehouse, schema = request.getfixturevalue("postgres_schema")
    return warehouse, schema


def tables(warehouse: Warehouse, schema: str | None) -> set[str]:
    rows = warehouse.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = :s",
        {"s": schema or "main"},
    )
    return {r["table_name"] for r in rows}


def test_only_the_latest_run_dates_keep_their_tables(
    tmp_path: Path, store: tuple[Warehouse, str | None]
) -> None:
    warehouse, schema = store
    prefix = f"{schema}." if schema else ""
    mine = [f"ab_units__refund_query_rewrite__{d}" for d in DAYS]
    mine += [f"ab_qhist__refund_query_rewrite__{d}" for d in DAYS[::2]]
    others = ["ab_units__refund_query_rewrite_v2__20260501", "ab_readouts_notes", "exposures"]
    warehouse.execute([f"CREATE TABLE {prefix}{name} (i INTEGER)" for name in mine + others])

    dropped = drop_old_run_tables(warehouse, config_in(tmp_path, schema), keep=2)

    assert dropped == sorted(
        f"{prefix}{n}" for n in mine if n.endswith(("20260527", "20260528", "20260529"))
    )
    assert tables(warehouse, schema) == {
        "ab_units__refund_query_rewrite__20260530",
        "ab_units__refund_query_rewrite__20260531",
        "ab_qhist__refund_query_rewrite__20260531",
        *others,
    }
    assert drop_old_run_tables(warehouse, config_in(tmp_path, schema), keep=2) == []
    drop_old_run_tables(warehouse, config_in(tmp_path, schema), keep=0)
    assert tables(warehouse, schema) == set(others)


def test_a_long_key_s_shortened_names_are_found(
    tmp_path: Path, duckdb_warehouse: Warehouse
) -> None:
    from datetime import date

    from ab_pipeline.readout.extract import units_table_name

    config = config_in(tmp_path, None, key="a-very-long-experiment-key-that-needs-shortening-badly")
    names = [units_table_name(config, date(2026, 5, d)) for d in (1, 2)]
    duckdb_warehouse.execute([f"CREATE TABLE {n} (i INTEGER)" for n in names])
    assert drop_old_run_tables(duckdb_warehouse, config, keep=1) == [names[0]]


def test_scratch_tables_sit_beside_the_units_table_under_a_name_of_their_run(
    tmp_path: Path,
) -> None:
    long_key = "k" * 60
    names = set()
    for key, day in [("refund-query-rewrite", 30), ("refund-query-rewrite", 31), (long_key, 31)]:
        config = config_in(tmp_path, "Work", key)
        units = units_table_name(config, date(2026, 5, day))
        name = scratch_table_name(units, "ab_dq_events")
        schema, table = name.split(".")
        assert schema == "Work" and table.startswith("ab_dq_events_") and len(table) <= 63
        names.add(name)
    assert len(names) == 3  # another date's or experiment's run never shares a scratch table


def test_step_tables_are_session_local_unless_placed_beside_the_units_table() -> None:
    local = StepTables()
    assert (local.create, local.ref("enrolled")) == ("CREATE TEMP TABLE", "ab_tmp_enrolled")
    units = "Work.ab_units__x__20260531"
    shared = StepTables(units)
    assert shared.create == "CREATE UNLOGGED TABLE"
    assert shared.name("enrolled") == scratch_table_name(units, "ab_tmp_enrolled")
    assert shared.ref("enrolled") == quote_ident(shared.name("enrolled"))
    assert shared.ref("enrolled").startswith('"Work"."ab_tmp_enrolled_')
