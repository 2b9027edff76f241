"""What a metric kind provides, and the SQL pieces the kinds build their columns from.

A kind (one class per `type:` of the config's metrics, `ab_pipeline.metrics.registry`) owns
everything that differs between metric types: the per-unit columns the extract's metric pass
aggregates, the sufficient statistics the analysis reads from the units table, the per-arm
summary and its comparison (through `ab_pipeline.stats.statistics`), how its values and differences
read in the brief and the decision, and what the simulator and the pre-period plan need to know
about it. The pipeline's modules loop over kinds and never branch on a metric's type.

Kinds are stateless; every method takes the metric's config model (and its name where a column
is named after it).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, TypeVar

from pydantic import BaseModel

from ab_pipeline.core.formatting import fmt_count, fmt_num
from ab_pipeline.stats.statistics import MeanSummary
from ab_pipeline.warehouse import Warehouse, quote_ident
from ab_pipeline.warehouse.run_tables import EXPOSURE_DAY, StepTables

if TYPE_CHECKING:
    from ab_pipeline.core.config import Cuped, ExperimentConfig, Unless
    from ab_pipeline.stats.statistics import Comparison

M = TypeVar("M", bound=BaseModel)

# ---- SQL pieces ---------------------------------------------------------------------------------


def metric_column(name: str) -> str:
    """A unit-level metric's column. Generated column names keep the metric's case: SQL text
    always writes them through `quote_ident` (PostgreSQL folds unquoted names to lowercase)."""
    return f"m_{name}"


def ratio_columns(name: str) -> tuple[str, str]:
    """A ratio metric's per-unit numerator and denominator columns."""
    return f"m_{name}__num", f"m_{name}__den"


def quantile_count_column(name: str) -> str:
    """A quantile metric's per-unit count of events with a value."""
    return f"n_{name}"


def quantile_extreme_column(name: str) -> str:
    """A quantile metric's per-unit largest value (smallest for q < 0.5), where the extract
    stores no histogram: it bounds where the quantile's side of the values begins."""
    return f"x_{name}"


def covariate_column(name: str) -> str:
    """A CUPED metric's pre-exposure covariate column."""
    return f"c_{name}"


def seconds(delta: timedelta) -> int:
    return int(delta.total_seconds())


def interval(delta: timedelta) -> str:
    return f"INTERVAL '{seconds(delta)} seconds'"


class SqlParams:
    """Collects bound parameters so every value from a config reaches SQL as a parameter."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f":{name}"


def before_window_end(window: timedelta | None, event: str = "ev", unit: str = "ev") -> str:
    """` AND <event>.occurred_at < <unit>.first_exposed_at + window`, or nothing without one."""
    if window is None:
        return ""
    return f" AND {event}.occurred_at < {unit}.first_exposed_at + {interval(window)}"


def window_complete(window: timedelta | None) -> str:
    """True for a unit (alias `u`) whose window has fully elapsed by the run date."""
    if window is None:
        return "TRUE"
    return f"u.first_exposed_at + {interval(window)} <= :run_end"


def windowed_column(window: timedelta | None, value: str, column: str) -> str:
    """`,\n  <value> AS <column>` for a unit whose window has fully elapsed by the run date,
    NULL before it has (`window_complete`)."""
    return f",\n  CASE WHEN {window_complete(window)} THEN {value} END AS {column}"


def conditional_aggregate(how: str, match: str, value: str = "ev.value") -> str:
    """Per unit, over rows matching `match`: any (0/1), count, or sum of `value` (0 when none)."""
    if how == "any":
        return f"MAX(CASE WHEN {match} THEN 1 ELSE 0 END)"
    if how == "count":
        return f"SUM(CASE WHEN {match} THEN 1 ELSE 0 END)"
    return f"SUM(CASE WHEN {match} THEN COALESCE({value}, 0) ELSE 0 END)"


# The metric pass's table (`StepTables`), which a side step that `settles` reads.
METRIC_PASS_STEP = "metrics"


class SideStep(NamedTuple):
    """A step of the extract of its own (a temporary table joined onto the units), for metrics
    whose aggregate cannot be one more column of the shared metric pass.

    With `settles`, the metrics stay in the pass, whose column is NULL for a unit its
    aggregates cannot decide; the step computes them for those units only, and the kind's
    `unit_columns` takes the step's value where the pass left NULL."""

    statement: str
    table: str
    alias: str
    metrics: tuple[str, ...]
    settles: bool = False


# Enrolled units' events with the given names (a SELECT giving unit_key, event_name,
# occurred_at, value, first_exposed_at), as the extract reads them for a step.
EventsOfEnrolled = Callable[[list[str]], str]


def day_of(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


# ---- the kind -----------------------------------------------------------------------------------


class MetricKind(ABC, Generic[M]):
    """One metric type. Subclasses set `name` (the config's and results.json's `type`) and
    `config_type` (its pydantic model in `ab_pipeline.core.config`)."""

    name: ClassVar[str]
    config_type: ClassVar[type[BaseModel]]
    # Units-table columns come grouped by this, then in config order: per-unit values (0),
    # ratio parts (1), quantile event counts (2).
    column_order: ClassVar[int] = 0
    # Its events' values get an order-preserving histogram in the extract (quantiles).
    stores_histogram: ClassVar[bool] = False
    # Its differences are said in percentage points (a share), else in the metric's own unit.
    in_points: ClassVar[bool] = False
    # A plan of it needs a per-unit SD besides its baseline (a proportion's follows from it).
    plan_needs_sd: ClassVar[bool] = True

    # ---- extract ----------------------------------------------------------------------------

    @abstractmethod
    def events(self, metric: M) -> list[str]:
        """Every event the metric's value is read from (none for a `sql:` metric)."""

    def event_fields(self, metric: M) -> dict[str, str]:
        """{field path under the metric: event name} for every event the config names."""
        return {}

    def pass_events(self, metric: M) -> list[str]:
        """Events the shared metric pass must read for this metric."""
        return self.events(metric)

    def pass_aggregates(self, name: str, metric: M, params: SqlParams) -> str:
        """`,\\n      <aggregate> AS <column>` per column the metric pass computes for it."""
        return ""

    def side_step(
        self,
        metrics: Mapping[str, M],
        params: SqlParams,
        events_of_enrolled: EventsOfEnrolled,
        tables: StepTables,
        settle: bool = True,
    ) -> SideStep | None:
        """A step of its own for some of this kind's metrics (then left out of the pass), its
        table created and named as `tables` says; with `settle`, a step that `settles` them
        where the pass can leave them undecided (the engine's choice: `ExtractPlan`)."""
        return None

    def unit_columns(self, name: str, metric: M, alias: str) -> str:
        """`,\\n  <expression> AS <column>` per units-table column, from the step's `alias`."""
        return ""

    def sql_text(self, metric: M) -> str | None:
        """The metric's `sql:` SELECT of (unit_id, value), when it is defined by one."""
        return None

    def per_unit_how(self, metric: M) -> str | None:
        """`any`, `count` or `sum` when the metric's per-unit value is that aggregate of its one
        event (what a CUPED covariate or a pre-period plan reads); None otherwise."""
        return None

    def cuped_of(self, metric: M) -> Cuped | None:
        return None

    # ---- analysis ---------------------------------------------------------------------------

    def scan_sums(self, name: str) -> dict[str, str] | None:
        """{key: aggregate over the units table} giving its sufficient statistics per arm in the
        analysis's one scan; None when it reads its own (`read_per_arm`)."""
        return None

    def summary_from_sums(self, sums: Mapping[str, Any]) -> Any:
        """The per-arm summary from the scan's values (keys of `scan_sums`)."""
        raise NotImplementedError(f"{self.name} metrics are not read from the units scan")

    def read_per_arm(
        self,
        warehouse: Warehouse,
        config: ExperimentConfig,
        name: str,
        metric: M,
        units_table: str,
        run_date: date,
    ) -> dict[str, Any]:
        """Per-arm summaries read apart from the scan (only kinds without `scan_sums`)."""
        raise NotImplementedError(f"{self.name} metrics are read from the units scan")

    @abstractmethod
    def arm_entry(self, summary: Any) -> dict[str, Any]:
        """results.json's `arms.<arm>` entry."""

    @abstractmethod
    def compare(self, control: Any, treated: Any, alpha: float) -> Comparison:
        """Treatment vs control, by the kind's test in `ab_pipeline.stats.statistics`."""

    def cohort_stats(
        self, warehouse: Warehouse, name: str, units_table: str
    ) -> list[dict[str, Any]]:
        """Per (exposure day, arm): units `n`, the value `mean` and a per-unit variance `var`
        such that var / n is the variance of that value (the novelty view of a primary)."""
        raise ValueError(f"a {self.name} metric has no per-cohort view")

    # ---- text (brief and decision) -----------------------------------------------------------

    def format_value(self, x: float | None) -> str:
        """An arm's value."""
        return fmt_num(x)

    def format_difference(self, x: float | None, digits: int | None = None) -> str:
        """Treatment minus control (a signed difference), with `digits` decimals if given."""
        return fmt_num(x, signed=True, digits=digits)

    def format_precise(self, x: float | None, digits: int, signed: bool = True) -> str:
        """A difference shown with a comparison's precision (SEs, guardrail budgets)."""
        return fmt_num(x, signed, digits)

    def headline_digits(self, digits: int) -> int | None:
        """Decimals of the primary's row, given those its SE calls for."""
        return digits

    def table_digits(self, digits: int) -> int:
        """Decimals of the other metrics' rows, given those their SE calls for."""
        return digits

    def format_magnitude(self, x: float | None) -> str:
        """An unsigned change (a plan's minimum detectable effect)."""
        return fmt_num(x)

    def format_check(self, value: float) -> str:
        """A number in the decision's check texts."""
        return f"{value:+,.4g}"

    chart_scale: ClassVar[float] = 1.0  # chart axis units per unit of difference

    def plain_sentence(
        self, treated: Mapping[str, Any], control: Mapping[str, Any], units: str
    ) -> str:
        """The arms' values in words, treated first."""
        return (
            f"an average of {fmt_num(treated['value'])} over {fmt_count(treated['units'])} "
            f"{units} vs {fmt_num(control['value'])} over {fmt_count(control['units'])}"
        )

    # ---- simulation and planning --------------------------------------------------------------

    def simulated_event(self, metric: M) -> str | None:
        """The one event the simulator generates for the metric; None: it cannot simulate it."""
        return None

    def unless_of(self, metric: M) -> Unless | None:
        """The metric's `unless` rule, for kinds that have one."""
        return None

    def needs_values(self, metric: M) -> bool:
        """Does the metric read its events' `value`?"""
        return False

    def expected_value(
        self, metric: M, count: float, any_event: float, value: Any, arm: str
    ) -> float:
        """The true value in an arm, given the expected in-window events per unit (`count`),
        the share of units with one (`any_event`) and the value distribution (`value`)."""
        raise ValueError(f"{self.name} metrics cannot be simulated")

    def pre_period_parts(self, metric: M) -> tuple[tuple[str, str], tuple[str, str] | None] | None:
        """The (event, how) aggregates of a pre-period plan's per-unit x and y (None: y = 1);
        None when the metric has no pre-period plan."""
        how = self.per_unit_how(metric)
        events = self.events(metric)
        return ((events[0], how), None) if how is not None and events else None

    def pre_period_moments(
        self, metric: M, n: int, sx: float, sy: float, sxx: float, syy: float, sxy: float
    ) -> dict[str, Any]:
        """A plan's baseline and per-unit SD from the pre-period's per-unit sums."""
        variance = max((sxx - sx * sx / n) / (n - 1), 0.0)
        return {"type": self.name, "units": n, "baseline": sx / n, "sd": math.sqrt(variance)}


def unit_cohort_stats(warehouse: Warehouse, column: str, units_table: str) -> list[dict[str, Any]]:
    """Per (exposure day, arm): count, mean and sample variance of one per-unit column."""
    column = quote_ident(column)
    rows = warehouse.query(
        f"""
        SELECT {EXPOSURE_DAY} AS day, arm,
               COUNT({column}) AS n, AVG({column}) AS mean, VAR_SAMP({column}) AS var
        FROM {quote_ident(units_table)}
        WHERE {column} IS NOT NULL
        GROUP BY {EXPOSURE_DAY}, arm
        ORDER BY 1, 2
        """
    )
    return [
        {
            "day": day_of(row["day"]),
            "arm": str(row["arm"]),
            "n": int(row["n"]),
            "mean": float(row["mean"]),
            "var": float(row["var"] or 0.0),
        }
        for row in rows
    ]


class UnitValueKind(MetricKind[M]):
    """A kind whose metric is one value per unit, from an `event` (an aggregate in the extract's
    metric pass, NULL until the unit's window has elapsed) or from a `sql:` SELECT; summarised
    per arm by count, sum and sum of squares (proportions and means)."""

    def events(self, metric: Any) -> list[str]:
        return [metric.event] if metric.event else []

    def event_fields(self, metric: Any) -> dict[str, str]:
        return {"event": metric.event} if metric.event else {}

    def aggregate(self, metric: Any, params: SqlParams, unless_column: str | None) -> str:
        """The per-unit aggregate of the metric's event over its window, in the pass `ev`."""
        how = self.per_unit_how(metric)
        assert how is not None
        match = f"ev.event_name = {params.bind(metric.event)}{before_window_end(metric.window)}"
        return conditional_aggregate(how, match)

    def pass_aggregates(self, name: str, metric: Any, params: SqlParams) -> str:
        if metric.event is None:
            return ""
        column = quote_ident(metric_column(name))
        return f",\n      {self.aggregate(metric, params, None)} AS {column}"

    def unit_columns(self, name: str, metric: Any, alias: str) -> str:
        if metric.event is None:  # a `sql:` metric's column: the extract's join of its values
            return ""
        column = quote_ident(metric_column(name))
        return windowed_column(metric.window, f"COALESCE({alias}.{column}, 0)", column)

    def sql_text(self, metric: Any) -> str | None:
        return metric.sql  # type: ignore[no-any-return]

    def cuped_of(self, metric: Any) -> Cuped | None:
        return metric.cuped  # type: ignore[no-any-return]

    def scan_sums(self, name: str) -> dict[str, str]:
        c = quote_ident(metric_column(name))
        return {"n": f"COUNT({c})", "s": f"SUM({c})", "q": f"SUM({c} * {c})"}

    def summary_from_sums(self, sums: Mapping[str, Any]) -> MeanSummary:
        return MeanSummary(
            n=int(sums["n"] or 0),
            total=float(sums["s"] or 0.0),
            total_sq=float(sums["q"] or 0.0),
        )

    def arm_entry(self, summary: MeanSummary) -> dict[str, Any]:
        return {"units": summary.n, "value": summary.mean if summary.n else None}

    def cohort_stats(
        self, warehouse: Warehouse, name: str, units_table: str
    ) -> list[dict[str, Any]]:
        return unit_cohort_stats(warehouse, metric_column(name), units_table)

    def simulated_event(self, metric: Any) -> str | None:
        return metric.event  # type: ignore[no-any-return]
