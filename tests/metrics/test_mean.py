"""The mean kind: its per-unit sum or count, its Welch comparison and its text."""

from __future__ import annotations

from ab_pipeline.core.config import MeanMetric, parse_config
from ab_pipeline.devtools.simulate import ValueDistribution
from ab_pipeline.metrics.base import SqlParams
from ab_pipeline.metrics.mean import MeanKind
from ab_pipeline.readout.analysis import unit_sums
from ab_pipeline.stats.statistics import MeanSummary, compare_means
from ab_pipeline.warehouse import Warehouse
from tests.warehouse_fixtures import experiment_data

KIND = MeanKind()


def metric(**fields: object) -> MeanMetric:
    return MeanMetric.model_validate({"type": "mean", **fields})


def test_a_sum_mean_adds_its_events_values_and_a_count_mean_counts_them() -> None:
    params = SqlParams()
    total = KIND.pass_aggregates("rev", metric(event="buy"), params)
    count = KIND.pass_aggregates("n", metric(event="click", aggregate="count"), params)
    assert total == (
        ",\n      SUM(CASE WHEN ev.event_name = :p0 THEN COALESCE(ev.value, 0) ELSE 0 END)"
        ' AS "m_rev"'
    )
    assert count == ',\n      SUM(CASE WHEN ev.event_name = :p1 THEN 1 ELSE 0 END) AS "m_n"'
    assert params.values == {"p0": "buy", "p1": "click"}
    assert KIND.per_unit_how(metric(event="buy")) == "sum"
    assert KIND.per_unit_how(metric(event="click", aggregate="count")) == "count"


def test_scan_sums_on_a_units_table_give_count_sum_and_sum_of_squares_per_arm(
    duckdb_warehouse: Warehouse,
) -> None:
    warehouse = duckdb_warehouse
    warehouse.execute(
        [
            'CREATE TABLE units (arm TEXT, "m_rev" DOUBLE PRECISION)',
            "INSERT INTO units VALUES ('control', 1), ('control', 3), ('control', NULL), "
            "('treatment', 2), ('treatment', 4), ('treatment', 6)",
        ]
    )
    config = parse_config(
        experiment_data("mean-scan", {"rev": {"type": "mean", "event": "buy"}}, "rev")
    )
    sums = unit_sums(warehouse, config, "units")
    assert sums == {
        "rev": {"control": MeanSummary(2, 4.0, 10.0), "treatment": MeanSummary(3, 12.0, 56.0)}
    }


def test_a_mean_is_compared_by_welch_and_said_in_its_own_unit() -> None:
    control, treated = MeanSummary(50, 100.0, 260.0), MeanSummary(50, 120.0, 330.0)
    assert KIND.compare(control, treated, 0.05) == compare_means(control, treated, 0.05)
    assert KIND.arm_entry(treated) == {"units": 50, "value": 2.4}
    assert KIND.arm_entry(MeanSummary(0, 0.0, 0.0)) == {"units": 0, "value": None}
    assert not KIND.in_points and KIND.chart_scale == 1.0 and KIND.plan_needs_sd
    assert KIND.format_value(12.5) == "12.5"
    assert KIND.format_difference(1.25, 1) == "+1.2"
    assert KIND.format_check(1234.5) == "+1,234"
    assert KIND.plain_sentence({"value": 2.4, "units": 50}, {"value": 2, "units": 50}, "users") == (
        "an average of 2.40 over 50 users vs 2 over 50"
    )


def test_the_simulator_expects_count_times_mean_value_for_a_sum() -> None:
    values = ValueDistribution(
        distribution="normal", mean={"control": 10.0, "treatment": 12.0}, sd=1
    )
    assert KIND.expected_value(metric(event="buy"), 2.0, 0.8, values, "treatment") == 24.0
    assert KIND.expected_value(metric(event="c", aggregate="count"), 2.0, 0.8, None, "x") == 2.0
    assert KIND.needs_values(metric(event="buy"))
    assert not KIND.needs_values(metric(event="c", aggregate="count"))
