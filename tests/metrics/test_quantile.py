"""The quantile kind: its per-unit event count, its stored histogram, its comparison, its text."""

from __future__ import annotations

from ab_pipeline.core.config import QuantileMetric
from ab_pipeline.devtools.simulate import ValueDistribution
from ab_pipeline.metrics.base import SqlParams
from ab_pipeline.metrics.quantile import QuantileKind
from ab_pipeline.stats.statistics import QuantileSummary, compare_quantiles

KIND = QuantileKind()


def metric() -> QuantileMetric:
    return QuantileMetric(type="quantile", event="served", quantile=0.95)


def test_a_quantile_counts_each_units_events_with_a_value() -> None:
    params = SqlParams()
    assert KIND.pass_aggregates("lat", metric(), params) == (
        ",\n      SUM(CASE WHEN ev.event_name = :p0 AND ev.value IS NOT NULL THEN 1 ELSE 0 END)"
        ' AS "n_lat"'
    )
    assert params.values == {"p0": "served"}
    assert KIND.unit_columns("lat", metric(), "a") == ',\n  COALESCE(a."n_lat", 0) AS "n_lat"'
    assert KIND.stores_histogram and KIND.column_order == 2


def test_a_quantile_reads_its_own_order_statistics_instead_of_the_units_scan() -> None:
    assert KIND.scan_sums("lat") is None
    assert KIND.per_unit_how(metric()) is None  # neither a CUPED covariate nor a plan


def test_a_quantile_is_compared_by_its_brackets_and_said_over_events() -> None:
    control = QuantileSummary(400, 120.0, 110.0, 131.0, 1.96)
    treated = QuantileSummary(410, 126.0, 117.0, 138.0, 1.96)
    assert KIND.compare(control, treated, 0.05) == compare_quantiles(control, treated, 0.05)
    assert KIND.arm_entry(treated) == {"events": 410, "value": 126.0}
    treated_entry, control_entry = KIND.arm_entry(treated), KIND.arm_entry(control)
    assert KIND.plain_sentence(treated_entry, control_entry, "users") == (
        "126 over 410 events vs 120 over 400 events"
    )


def test_the_simulator_expects_the_value_distributions_quantile() -> None:
    values = ValueDistribution(distribution="normal", mean={"control": 100.0}, sd=0)
    assert KIND.expected_value(metric(), 3.0, 0.9, values, "control") == 100.0
    assert KIND.needs_values(metric())
    assert KIND.simulated_event(metric()) == "served"
