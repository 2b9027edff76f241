"""The statistics engine's SQL path: ratio and CUPED columns, clustered quantiles, corrections,
SRM diagnosis, on a hand-made warehouse (DuckDB and PostgreSQL)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest

from ab_pipeline.analysis import analyse, current_look
from ab_pipeline.config import parse_config
from ab_pipeline.diagnosis import progress, srm_diagnosis
from ab_pipeline.errors import ConfigError
from ab_pipeline.extract import build_units_table, covariate_column, ratio_columns
from ab_pipeline.warehouse import Warehouse
from tests.warehouse_fixtures import create_contract_tables, experiment_data, insert_rows

RUN = date(2026, 5, 31)
START = datetime(2026, 5, 4, 9)


def config(**extra: Any) -> Any:
    metrics = {
        "solved": {
            "type": "proportion",
            "event": "solved",
            "window": "1d",
            "cuped": {"lookback": "14d"},
        },
        "clicks_per_session": {
            "type": "ratio",
            "numerator": {"event": "click"},
            "denominator": {"event": "session"},
            "window": "1d",
        },
        "latency": {"type": "quantile", "event": "served", "quantile": 0.9},
    }
    data = experiment_data(
        "stats-check",
        metrics,
        "solved",
        arms={"control": 0.34, "a": 0.33, "b": 0.33},
        plan={"baseline": 0.38, "mde": 0.02},
    )
    return parse_config(data | extra)


def load(warehouse: Warehouse) -> None:
    create_contract_tables(warehouse)
    exposures, events = [], []
    for i in range(90):
        arm = ("control", "a", "b")[i % 3]
        unit, first = f"u{i}", START + timedelta(hours=i)
        props = {"platform": "ios" if i % 2 else "android", "country": "de"}
        exposures.append(("stats-check", unit, arm, first, False, False, props))
        if i % 4 == 0:
            exposures.append(
                ("stats-check", unit, arm, first + timedelta(hours=1), False, False, props)
            )
        pre_solved = i % 5
        for k in range(pre_solved):  # pre-exposure history: the covariate
            events.append((unit, "solved", first - timedelta(days=1 + k), None, None))
        events.append((unit, "solved", first - timedelta(days=20), None, None))  # too early
        if pre_solved >= 2 or (arm != "control" and i % 7 == 0):
            events.append((unit, "solved", first + timedelta(hours=2), None, None))
        sessions = 1 + i % 3
        for s in range(sessions):
            events.append((unit, "session", first + timedelta(minutes=10 + s), None, None))
        for c in range(i % 4):
            events.append((unit, "click", first + timedelta(minutes=20 + c), None, None))
        for e in range(1 + i % 3):
            value = 100.0 + 10 * (i % 9) + e + (5 if arm != "control" else 0)
            events.append((unit, "served", first + timedelta(minutes=30 + e), value, None))
    insert_rows(warehouse, exposures, events)


def test_ratio_and_cuped_columns_and_analysis(duckdb_warehouse: Warehouse) -> None:
    load(duckdb_warehouse)
    cfg = config()
    table = build_units_table(duckdb_warehouse, cfg, RUN)
    rows = {
        r["unit_id"]: r
        for r in duckdb_warehouse.query(f'SELECT * FROM "{table}"')  # noqa: S608
    }
    num, den = ratio_columns("clicks_per_session")
    assert rows["u7"][num] == 3 and rows["u7"][den] == 2
    # Covariate: solved (0/1, as the metric) in the 14 days before exposure; day -20 is outside.
    assert rows["u4"][covariate_column("solved")] == 1
    assert rows["u5"][covariate_column("solved")] == 0
    metrics = analyse(duckdb_warehouse, cfg, table, RUN)
    solved = metrics["solved"]["comparisons"]
    assert set(solved) == {"a", "b"}
    for comparison in solved.values():
        assert comparison["cuped"]["variance_reduction"] > 0.2
        assert comparison["se"] < comparison["cuped"]["se_unadjusted"]
        assert comparison["correction"]["method"] == "holm"
        assert comparison["p_value_adjusted"] >= comparison["p_value"]
    ratio = metrics["clicks_per_session"]
    assert ratio["arms"]["control"]["denominator"] > 0
    assert "delta" in ratio["comparisons"]["a"]["method"]
    latency = metrics["latency"]["comparisons"]["a"]
    # Few distinct latencies (100 + 10 k + e): the p90 sits on a tie, so it is discrete.
    assert latency["discrete"] and latency["se"] is None and latency["p_value"] is None
    assert latency["ci"][0] <= latency["absolute"] <= latency["ci"][1]


def test_srm_diagnosis_and_progress(duckdb_warehouse: Warehouse) -> None:
    load(duckdb_warehouse)
    cfg = config()
    table = build_units_table(duckdb_warehouse, cfg, RUN)
    diagnosis = srm_diagnosis(duckdb_warehouse, cfg, table, failed=True)
    assert diagnosis["repeat_exposure_rate"] == pytest.approx(23 / 90)
    assert diagnosis["multiple_exposure_rate"] == 0
    assert sum(sum(d["counts"].values()) for d in diagnosis["by_day"]) == 90
    platforms = {s["value"]: s["counts"] for s in diagnosis["by_property"]["platform"]}
    assert sum(platforms["ios"].values()) == 45 and set(diagnosis["by_property"]) == {
        "country",
        "platform",
    }
    assert "by_day" not in srm_diagnosis(duckdb_warehouse, cfg, table, failed=False)
    made = progress(cfg, {"control": 30, "a": 30, "b": 30}, date(2026, 5, 13))
    # Two treatment arms: the plan (Fleiss formula) at alpha / 2 per comparison.
    assert made is not None and made["planned_per_arm"] == 11305
    assert made["enrolment_per_day"] == pytest.approx(3.0) and made["days_left"] == 3759
    assert made["mde_now"] > 0.3


def test_units_table_with_ratio_and_cuped_builds_on_postgresql(
    postgres_schema: tuple[Warehouse, str],
) -> None:
    warehouse, _ = postgres_schema
    from ab_pipeline.extract import build_units_sql

    statements, params = build_units_sql(config(), RUN, "ab_units_stats_check")
    create_contract_tables(warehouse)  # empty: the statements run, the table has every column
    try:
        warehouse.execute(statements, params)
        built = warehouse.query("SELECT * FROM ab_units_stats_check")
        assert built == []
        columns = {
            row["column_name"]
            for row in warehouse.query(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'ab_units_stats_check'"
            )
        }
        assert {"m_solved", "c_solved", "n_latency", "m_clicks_per_session__num"} <= columns
    finally:
        warehouse.execute(
            [
                "DROP TABLE IF EXISTS ab_units_stats_check",
                "DROP TABLE IF EXISTS exposures",
                "DROP TABLE IF EXISTS events",
            ]
        )


def test_a_covariate_window_reaching_past_exposure_is_a_config_error() -> None:
    metrics = config().model_dump(mode="json")["metrics"]
    metrics["solved"]["cuped"] = {"lookback": "14d", "until": "+1h"}
    with pytest.raises(ConfigError, match="reaches past the first exposure"):
        config(metrics=metrics)


def test_sequential_look_index() -> None:
    cfg = config(analysis={"sequential": "obrien_fleming", "looks": 4})
    assert [current_look(cfg, date(2026, 5, d)) for d in (5, 10, 11, 20, 31)] == [1, 1, 2, 3, 4]
