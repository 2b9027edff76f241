"""The proportion kind: its per-unit columns, its `unless` step, its comparison and its text."""

from __future__ import annotations

from datetime import timedelta

from ab_pipeline.core.config import ProportionMetric, Unless
from ab_pipeline.metrics.base import SqlParams
from ab_pipeline.metrics.proportion import ProportionKind
from ab_pipeline.stats.statistics import MeanSummary, compare_proportions
from ab_pipeline.warehouse.run_tables import StepTables

KIND = ProportionKind()


def metric(**fields: object) -> ProportionMetric:
    return ProportionMetric.model_validate({"type": "proportion", **fields})


def test_an_event_proportion_is_the_max_of_matching_events_in_its_window() -> None:
    params = SqlParams()
    sql = KIND.pass_aggregates("conv", metric(event="buy", window="1d"), params)
    assert sql == (
        ",\n      MAX(CASE WHEN ev.event_name = :p0 AND ev.occurred_at < ev.first_exposed_at + "
        "INTERVAL '86400 seconds' THEN 1 ELSE 0 END) AS \"m_conv\""
    )
    assert params.values == {"p0": "buy"}
    assert KIND.pass_events(metric(event="buy")) == ["buy"]


def test_its_units_column_is_null_until_the_window_has_elapsed() -> None:
    assert KIND.unit_columns("conv", metric(event="buy", window="1d"), "a") == (
        ",\n  CASE WHEN u.first_exposed_at + INTERVAL '86400 seconds' <= :run_end THEN "
        'COALESCE(a."m_conv", 0) END AS "m_conv"'
    )
    assert "CASE WHEN TRUE THEN" in KIND.unit_columns("conv", metric(event="buy"), "a")


def test_an_sql_proportion_has_no_pass_column_and_gives_its_select() -> None:
    sql_metric = metric(sql="SELECT unit_id, 1 AS value FROM events")
    assert KIND.pass_events(sql_metric) == []
    assert KIND.pass_aggregates("s", sql_metric, SqlParams()) == ""
    assert KIND.unit_columns("s", sql_metric, "a") == ""
    assert KIND.sql_text(sql_metric) == "SELECT unit_id, 1 AS value FROM events"
    assert KIND.per_unit_how(sql_metric) is None


def test_unless_proportions_get_a_step_of_their_own_with_the_next_unless_event() -> None:
    spoilable = metric(event="solved", unless={"event": "ticket", "within": "10m"})
    params = SqlParams()
    step = KIND.side_step(
        {"solved": spoilable, "plain": metric(event="buy")},
        params,
        lambda names: f"SELECT * FROM events_of({', '.join(names)})",
        StepTables(),
    )
    assert step is not None
    assert (step.table, step.alias, step.metrics) == ("ab_tmp_unless", "ua", ("solved",))
    assert step.statement.startswith("CREATE TEMP TABLE ab_tmp_unless AS")
    assert "events_of(solved, ticket)" in step.statement
    assert "OVER (PARTITION BY ev.unit_key ORDER BY ev.occurred_at" in step.statement
    assert "NOT COALESCE(ev.next_unless_0 <= ev.occurred_at + INTERVAL '600 seconds'" in (
        step.statement
    )
    assert params.values == {"p0": "ticket", "p1": "solved"}
    assert KIND.side_step({"plain": metric(event="buy")}, SqlParams(), str, StepTables()) is None


def test_scan_sums_give_a_count_and_success_summary_compared_by_the_z_test() -> None:
    assert KIND.scan_sums("conv") == {
        "n": 'COUNT("m_conv")',
        "s": 'SUM("m_conv")',
        "q": 'SUM("m_conv" * "m_conv")',
    }
    control = KIND.summary_from_sums({"n": 2000, "s": 760, "q": 760})
    treated = KIND.summary_from_sums({"n": 2000, "s": 840, "q": 840})
    assert control == MeanSummary(2000, 760.0, 760.0)
    assert KIND.arm_entry(treated) == {"units": 2000, "value": 0.42, "successes": 840}
    assert KIND.compare(control, treated, 0.05) == compare_proportions(760, 2000, 840, 2000)


def test_values_read_as_percentages_and_differences_as_percentage_points() -> None:
    assert KIND.in_points and KIND.chart_scale == 100.0 and not KIND.plan_needs_sd
    assert KIND.format_value(0.42) == "42.0%"
    assert KIND.format_difference(0.04) == "+4.0 pp"
    assert KIND.format_difference(0.04, 2) == "+4.00 pp"
    assert KIND.format_precise(0.0123, digits=4, signed=False) == "1.23 pp"
    assert KIND.headline_digits(3) is None and KIND.table_digits(3) == 2
    assert KIND.format_magnitude(0.02) == "2.0 pp"
    assert KIND.format_check(-0.012) == "-1.2 pp"
    treated = {"successes": 840, "units": 2000, "value": 0.42}
    control = {"successes": 760, "units": 2000, "value": 0.38}
    assert KIND.plain_sentence(treated, control, "accounts") == (
        "840 of 2,000 accounts (42.0%) vs 760 of 2,000 (38.0%)"
    )


def test_the_simulator_reads_its_unless_rule_and_the_share_with_an_event() -> None:
    spoilable = metric(event="solved", unless={"event": "ticket", "within": "10m"})
    assert KIND.unless_of(spoilable) == Unless(event="ticket", within=timedelta(minutes=10))
    assert KIND.expected_value(spoilable, 1.5, 0.3, None, "control") == 0.3
    assert not KIND.needs_values(spoilable)
    assert KIND.event_fields(spoilable) == {"event": "solved", "unless.event": "ticket"}
