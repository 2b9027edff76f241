"""Proportion: the share of units with at least one matching event in the window.

Per unit 1 or 0 (NULL until the window has elapsed); with `unless`, an event followed by the
`unless` event within `within` does not count. Compared by the two-proportion z-test; said in
percentages, its differences in percentage points.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ab_pipeline.core.config import ProportionMetric, Unless
from ab_pipeline.core.formatting import fmt_count, fmt_pct, fmt_pp
from ab_pipeline.metrics.base import (
    METRIC_PASS_STEP,
    EventsOfEnrolled,
    SideStep,
    SqlParams,
    StepTables,
    UnitValueKind,
    before_window_end,
    conditional_aggregate,
    interval,
    metric_column,
    windowed_column,
)
from ab_pipeline.stats.statistics import Comparison, MeanSummary, compare_proportions
from ab_pipeline.warehouse import quote_ident

# The `unless` step's table (`StepTables`; dropped when the units table is built) and its alias
# in the units table's join.
UNLESS_STEP = "unless"
UNLESS_ALIAS = "ua"


class ProportionKind(UnitValueKind[ProportionMetric]):
    name = "proportion"
    config_type = ProportionMetric
    in_points = True
    plan_needs_sd = False
    chart_scale: ClassVar[float] = 100.0

    # ---- extract ----------------------------------------------------------------------------

    def event_fields(self, metric: ProportionMetric) -> dict[str, str]:
        fields = super().event_fields(metric)
        if metric.unless is not None:
            fields["unless.event"] = metric.unless.event
        return fields

    def per_unit_how(self, metric: ProportionMetric) -> str | None:
        return "any" if metric.event is not None else None

    def pass_events(self, metric: ProportionMetric) -> list[str]:
        unless = [metric.unless.event] if metric.unless is not None else []
        return [*super().pass_events(metric), *unless]

    def aggregate(
        self, metric: ProportionMetric, params: SqlParams, unless_column: str | None
    ) -> str:
        match = f"ev.event_name = {params.bind(metric.event)}{before_window_end(metric.window)}"
        if metric.unless is not None and unless_column is not None:
            spoiled = f"ev.{unless_column} <= ev.occurred_at + {interval(metric.unless.within)}"
            match += f" AND NOT COALESCE({spoiled}, FALSE)"
        return conditional_aggregate("any", match)

    def pass_aggregates(self, name: str, metric: ProportionMetric, params: SqlParams) -> str:
        if metric.unless is None:
            return super().pass_aggregates(name, metric, params)
        return f",\n      {self._decided(metric, params)} AS {quote_ident(metric_column(name))}"

    def _decided(self, metric: ProportionMetric, params: SqlParams) -> str:
        """The metric with `unless` from four timestamps per unit, in the shared pass: its
        first and last event in the window (s1, s2), its first and last `unless` event (t1,
        t2). 0 without such an event; 1 with no `unless` event, or when the last event follows
        every `unless` event (s2 > t2), or the first one precedes them all by more than `within`
        (s1 + within < t1): that event is not spoiled. 0 when every `unless` event is at one
        instant t (t1 = t2): then every event lies in [t - within, t], so each one is spoiled.
        NULL otherwise (several `unless` events around the unit's events): `side_step` settles
        such units from their ordered events."""
        assert metric.unless is not None
        event = f"ev.event_name = {params.bind(metric.event)}{before_window_end(metric.window)}"
        spoiler = f"ev.event_name = {params.bind(metric.unless.event)}"
        s1, s2 = (f"{f}(CASE WHEN {event} THEN ev.occurred_at END)" for f in ("MIN", "MAX"))
        t1, t2 = (f"{f}(CASE WHEN {spoiler} THEN ev.occurred_at END)" for f in ("MIN", "MAX"))
        within = interval(metric.unless.within)
        return (
            f"CASE WHEN {s2} IS NULL THEN 0 WHEN {t2} IS NULL THEN 1"
            f" WHEN {s2} > {t2} OR {s1} + {within} < {t1} THEN 1"
            f" WHEN {t1} = {t2} THEN 0 END"
        )

    def side_step(
        self,
        metrics: Mapping[str, ProportionMetric],
        params: SqlParams,
        events_of_enrolled: EventsOfEnrolled,
        tables: StepTables,
        settle: bool = True,
    ) -> SideStep | None:
        """Proportions with an `unless` rule: the window function (next `unless` event after
        each event, per unit) over their events apart from the pass. With `settle`, only for
        the units the pass left undecided (`_decided`; with none, the join finds no unit and
        reads no event); else for every unit, the metrics then left out of the pass."""
        spoilable = {name: m for name, m in metrics.items() if m.unless}
        if not spoilable:
            return None
        unless_events = sorted({m.unless.event for m in spoilable.values() if m.unless})
        unless_cols = {event: f"next_unless_{i}" for i, event in enumerate(unless_events)}
        names = sorted({m.event for m in spoilable.values() if m.event} | set(unless_events))
        next_unless = "".join(
            f",\n      MIN(CASE WHEN ev.event_name = {params.bind(event)} THEN ev.occurred_at END)"
            f" OVER (PARTITION BY ev.unit_key ORDER BY ev.occurred_at"
            f" RANGE BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS {col}"
            for event, col in unless_cols.items()
        )
        aggregates = "".join(
            f",\n      {self.aggregate(m, params, unless_cols[m.unless.event])}"
            f" AS {quote_ident(metric_column(name))}"
            for name, m in spoilable.items()
            if m.unless
        )
        events = events_of_enrolled(names)
        if settle:
            undecided = " OR ".join(
                f"p.{quote_ident(metric_column(name))} IS NULL" for name in spoilable
            )
            events = f"""SELECT ev.* FROM (
  {events}
  ) ev
  JOIN (SELECT p.unit_key FROM {tables.ref(METRIC_PASS_STEP)} p WHERE {undecided}) f
    ON f.unit_key = ev.unit_key"""
        statement = f"""{tables.create} {tables.ref(UNLESS_STEP)} AS
WITH uev AS (
  {events}
),
useq AS (
  SELECT ev.*{next_unless}
  FROM uev ev
)
SELECT ev.unit_key{aggregates}
FROM useq ev GROUP BY ev.unit_key"""
        return SideStep(
            statement, tables.ref(UNLESS_STEP), UNLESS_ALIAS, tuple(spoilable), settles=settle
        )

    def unit_columns(self, name: str, metric: ProportionMetric, alias: str) -> str:
        if metric.unless is None or alias == UNLESS_ALIAS:  # the step computed it alone
            return super().unit_columns(name, metric, alias)
        column = quote_ident(metric_column(name))
        value = f"COALESCE({alias}.{column}, {UNLESS_ALIAS}.{column}, 0)"
        return windowed_column(metric.window, value, column)

    # ---- analysis ---------------------------------------------------------------------------

    def arm_entry(self, summary: MeanSummary) -> dict[str, Any]:
        return super().arm_entry(summary) | {"successes": int(round(summary.total))}

    def compare(self, control: MeanSummary, treated: MeanSummary, alpha: float) -> Comparison:
        return compare_proportions(
            int(round(control.total)), control.n, int(round(treated.total)), treated.n, alpha
        )

    # ---- text -------------------------------------------------------------------------------

    def format_value(self, x: float | None) -> str:
        return fmt_pct(x)

    def format_difference(self, x: float | None, digits: int | None = None) -> str:
        return fmt_pp(x, 1 if digits is None else digits)

    def format_precise(self, x: float | None, digits: int, signed: bool = True) -> str:
        return fmt_pp(x, 2, signed)

    def headline_digits(self, digits: int) -> int | None:
        return None

    def table_digits(self, digits: int) -> int:
        return 2

    def format_magnitude(self, x: float | None) -> str:
        return fmt_pp(x, signed=False)

    def format_check(self, value: float) -> str:
        return fmt_pp(value)

    def plain_sentence(
        self, treated: Mapping[str, Any], control: Mapping[str, Any], units: str
    ) -> str:
        return (
            f"{fmt_count(treated['successes'])} of {fmt_count(treated['units'])} {units} "
            f"({fmt_pct(treated['value'])}) vs {fmt_count(control['successes'])} of "
            f"{fmt_count(control['units'])} ({fmt_pct(control['value'])})"
        )

    # ---- simulation -------------------------------------------------------------------------

    def unless_of(self, metric: ProportionMetric) -> Unless | None:
        return metric.unless

    def expected_value(
        self, metric: ProportionMetric, count: float, any_event: float, value: Any, arm: str
    ) -> float:
        return any_event
