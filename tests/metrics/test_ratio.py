"""The ratio kind: numerator and denominator columns, their sums, the delta method, plans."""

from __future__ import annotations

import math

from ab_pipeline.core.config import RatioMetric, parse_config
from ab_pipeline.metrics.base import SqlParams
from ab_pipeline.metrics.ratio import RatioKind
from ab_pipeline.readout.analysis import unit_sums
from ab_pipeline.stats.statistics import RatioSummary, compare_ratios, ratio_variance
from ab_pipeline.warehouse import Warehouse
from tests.warehouse_fixtures import experiment_data

KIND = RatioKind()
CLICKS_PER_SESSION = {
    "type": "ratio",
    "numerator": {"event": "click"},
    "denominator": {"event": "session", "aggregate": "sum"},
    "window": "2d",
}


def metric() -> RatioMetric:
    return RatioMetric.model_validate(CLICKS_PER_SESSION)


def test_a_ratio_has_a_numerator_and_a_denominator_column_per_unit() -> None:
    params = SqlParams()
    window = " AND ev.occurred_at < ev.first_exposed_at + INTERVAL '172800 seconds'"
    assert KIND.pass_aggregates("cps", metric(), params) == (
        f',\n      SUM(CASE WHEN ev.event_name = :p0{window} THEN 1 ELSE 0 END) AS "m_cps__num"'
        f",\n      SUM(CASE WHEN ev.event_name = :p1{window} THEN COALESCE(ev.value, 0) ELSE 0 END)"
        ' AS "m_cps__den"'
    )
    assert params.values == {"p0": "click", "p1": "session"}
    columns = KIND.unit_columns("cps", metric(), "a")
    assert columns.count("<= :run_end THEN COALESCE(a.") == 2
    assert columns.endswith('END AS "m_cps__den"')
    assert KIND.events(metric()) == ["click", "session"]
    assert KIND.event_fields(metric()) == {
        "numerator.event": "click",
        "denominator.event": "session",
    }


def test_scan_sums_on_a_units_table_give_the_ratio_summary_per_arm(
    duckdb_warehouse: Warehouse,
) -> None:
    duckdb_warehouse.execute(
        [
            'CREATE TABLE units (arm TEXT, "m_cps__num" DOUBLE PRECISION, '
            '"m_cps__den" DOUBLE PRECISION)',
            "INSERT INTO units VALUES ('control', 1, 2), ('control', 0, 1), "
            "('treatment', 3, 4), ('treatment', NULL, NULL)",
        ]
    )
    config = parse_config(experiment_data("ratio-scan", {"cps": CLICKS_PER_SESSION}, "cps"))
    sums = unit_sums(duckdb_warehouse, config, "units")
    assert sums == {
        "cps": {
            "control": RatioSummary(2, 1.0, 3.0, 1.0, 5.0, 2.0),
            "treatment": RatioSummary(1, 3.0, 4.0, 9.0, 16.0, 12.0),
        }
    }


def test_a_ratio_is_compared_by_the_delta_method_and_its_entry_shows_both_sums() -> None:
    control = RatioSummary(100, 20.0, 100.0, 8.0, 120.0, 25.0)
    treated = RatioSummary(100, 24.0, 100.0, 10.0, 120.0, 29.0)
    assert KIND.compare(control, treated, 0.05) == compare_ratios(control, treated, 0.05)
    assert KIND.arm_entry(treated) == {
        "units": 100,
        "value": 0.24,
        "numerator": 24.0,
        "denominator": 100.0,
    }
    assert KIND.arm_entry(RatioSummary(3, 0.0, 0.0, 0.0, 0.0, 0.0))["value"] is None
    assert KIND.column_order == 1 and KIND.plan_needs_sd


def test_a_pre_period_plan_reads_both_parts_and_gives_the_linearised_sd() -> None:
    assert KIND.pre_period_parts(metric()) == (("click", "count"), ("session", "sum"))
    moments = KIND.pre_period_moments(metric(), 100, 20.0, 100.0, 8.0, 120.0, 25.0)
    assert moments == {
        "type": "ratio",
        "units": 100,
        "baseline": 0.2,
        "sd": math.sqrt(ratio_variance(100, 20.0, 100.0, 8.0, 120.0, 25.0) * 100),
    }
