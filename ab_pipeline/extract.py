"""Extraction in the warehouse: exposures and events -> one row per enrolled unit.

A few statements build the run's units table (each step a temporary table, the last joins
them): `unit_id`, `arm`, `first_exposed_at`, `exposures`, `several_arms` (1 when the unit was
exposed to more than one arm), one `m_<metric>` column per unit-level metric (two for a
ratio), `n_<metric>` per quantile metric (its events with a value: N_i of the clustered
variance) and `c_<metric>` per CUPED covariate. Raw events never leave the warehouse; the SQL is
plain enough for DuckDB and PostgreSQL alike (bound parameters, `INTERVAL 'N seconds'`,
window functions).

Metric semantics (docs/warehouse.md):
- enrollment = first exposure in [start, end] up to the run date; arm = that exposure's arm;
  a unit with any internal/bot exposure is excluded (when the audience says so);
- proportion: 1 when a matching event falls in [first exposure, first exposure + window), and
  (with `unless`) no `unless` event follows it within `within`; 0 otherwise;
- mean: per-unit sum (or count) of matching events' `value` in the window, 0 when none;
- a windowed metric is NULL for a unit whose window has not fully elapsed by the run date, so
  interim readouts never count half-observed windows as failures.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from ab_pipeline.config import (
    ExperimentConfig,
    MeanMetric,
    ProportionMetric,
    QuantileMetric,
    RatioMetric,
)
from ab_pipeline.dates import midnight
from ab_pipeline.quantiles import bucket_sql, histogram_sql
from ab_pipeline.warehouse import Warehouse, quote_ident

M = TypeVar("M")


@dataclass(frozen=True)
class RunWindow:
    """The data a run may see: exposures in [start, end], nothing after the run date."""

    start: datetime
    end_exclusive: datetime
    run_end: datetime

    @classmethod
    def of(cls, config: ExperimentConfig, run_date: date) -> RunWindow:
        return cls(
            start=midnight(config.start),
            end_exclusive=midnight(config.end) + timedelta(days=1),
            run_end=midnight(run_date) + timedelta(days=1),
        )


def units_table_name(config: ExperimentConfig, run_date: date) -> str:
    """`[schema.]ab_units__<key>__<yyyymmdd>`, shortened with a hash to fit PostgreSQL's 63
    characters; the schema is `source.work_schema`, else the exposures table's schema."""
    return _run_table_name("ab_units", config, run_date)


def quantile_histogram_table_name(config: ExperimentConfig, run_date: date) -> str:
    """`[schema.]ab_qhist__<key>__<yyyymmdd>`: the run's quantile histograms (see
    `build_units_sql`), next to its units table."""
    return _run_table_name("ab_qhist", config, run_date)


def _run_table_name(prefix: str, config: ExperimentConfig, run_date: date) -> str:
    name = f"{_run_table_stem(prefix, config)}__{run_date:%Y%m%d}"
    schema = config.source.units_schema
    return f"{schema}.{name}" if schema else name


def _run_table_stem(prefix: str, config: ExperimentConfig) -> str:
    stem = f"{prefix}__{config.key.replace('-', '_')}"
    if len(stem) + len("__yyyymmdd") > 63:
        digest = hashlib.sha256(config.key.encode()).hexdigest()[:8]
        stem = f"{stem[: 63 - len('__yyyymmdd') - 9]}_{digest}"
    return stem


RUN_TABLE_PREFIXES = ("ab_units", "ab_qhist")
KEEP_RUN_TABLES_ENV = "AB_PIPELINE_KEEP_RUN_TABLES"
DEFAULT_KEEP_RUN_TABLES = 3


def kept_run_tables() -> int:
    """Run dates per experiment whose scratch tables stay ($AB_PIPELINE_KEEP_RUN_TABLES)."""
    import os

    value = os.environ.get(KEEP_RUN_TABLES_ENV, str(DEFAULT_KEEP_RUN_TABLES))
    if not value.isdigit():
        raise ValueError(f"${KEEP_RUN_TABLES_ENV} must be a whole number >= 0, not {value!r}")
    return int(value)


def drop_old_run_tables(
    warehouse: Warehouse, config: ExperimentConfig, keep: int | None = None
) -> list[str]:
    """Drop the experiment's per-run scratch tables (`ab_units__*`, `ab_qhist__*`) except those
    of its `keep` latest run dates; returns the dropped names.

    The brief stage calls this once the readout is stored: no later stage reads them, and the
    latest few stay for whoever wants to look at a recent readout's units.
    """
    from sqlalchemy import inspect

    keep = kept_run_tables() if keep is None else keep
    schema = config.source.units_schema
    with warehouse.connect() as connection:
        names = inspect(connection).get_table_names(schema=schema)
    by_date: dict[str, list[str]] = {}
    for prefix in RUN_TABLE_PREFIXES:
        pattern = re.compile(rf"{re.escape(_run_table_stem(prefix, config))}__(\d{{8}})")
        for name in names:
            if found := pattern.fullmatch(name):
                by_date.setdefault(found.group(1), []).append(name)
    old = sorted(by_date, reverse=True)[keep:]
    dropped = sorted(f"{schema}.{n}" if schema else n for day in old for n in by_date[day])
    if dropped:
        warehouse.execute([f"DROP TABLE IF EXISTS {quote_ident(name)}" for name in dropped])
    return dropped


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


def covariate_column(name: str) -> str:
    """A CUPED metric's pre-exposure covariate column."""
    return f"c_{name}"


def _seconds(delta: timedelta) -> int:
    return int(delta.total_seconds())


def _interval(delta: timedelta) -> str:
    return f"INTERVAL '{_seconds(delta)} seconds'"


class _Params:
    """Collects bound parameters so every value from a config reaches SQL as a parameter."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f":{name}"


def _event_metrics(config: ExperimentConfig) -> dict[str, ProportionMetric | MeanMetric]:
    return {
        name: metric
        for name, metric in config.metrics.items()
        if isinstance(metric, ProportionMetric | MeanMetric) and metric.event is not None
    }


def _before_window_end(window: timedelta | None, event: str = "ev", unit: str = "ev") -> str:
    """` AND <event>.occurred_at < <unit>.first_exposed_at + window`, or nothing without one."""
    if window is None:
        return ""
    return f" AND {event}.occurred_at < {unit}.first_exposed_at + {_interval(window)}"


def _aggregate(
    metric: ProportionMetric | MeanMetric, params: _Params, unless_col: str | None
) -> str:
    match = f"ev.event_name = {params.bind(metric.event)}{_before_window_end(metric.window)}"
    if isinstance(metric, ProportionMetric):
        if metric.unless is not None and unless_col is not None:
            spoiled = f"ev.{unless_col} <= ev.occurred_at + {_interval(metric.unless.within)}"
            match += f" AND NOT COALESCE({spoiled}, FALSE)"
        return f"MAX(CASE WHEN {match} THEN 1 ELSE 0 END)"
    if metric.aggregate == "count":
        return f"SUM(CASE WHEN {match} THEN 1 ELSE 0 END)"
    return f"SUM(CASE WHEN {match} THEN COALESCE(ev.value, 0) ELSE 0 END)"


def _unless_column(metric: ProportionMetric | MeanMetric, columns: dict[str, str]) -> str | None:
    if isinstance(metric, ProportionMetric) and metric.unless is not None:
        return columns[metric.unless.event]
    return None


def _metrics_of(config: ExperimentConfig, kind: type[M]) -> dict[str, M]:
    return {n: m for n, m in config.metrics.items() if isinstance(m, kind)}


def _ratio_aggregates(name: str, metric: RatioMetric, params: _Params) -> str:
    """SUMs of the numerator and denominator events in the window, per unit."""
    window = _before_window_end(metric.window)
    parts = []
    for part, column in zip(
        (metric.numerator, metric.denominator), ratio_columns(name), strict=True
    ):
        value = "1" if part.aggregate == "count" else "COALESCE(ev.value, 0)"
        match = f"ev.event_name = {params.bind(part.event)}{window}"
        parts.append(
            f",\n      SUM(CASE WHEN {match} THEN {value} ELSE 0 END) AS {quote_ident(column)}"
        )
    return "".join(parts)


def _cuped_sources(config: ExperimentConfig) -> dict[str, ProportionMetric | MeanMetric]:
    """{metric with CUPED: the metric whose event defines its covariate}."""
    sources = {}
    for name, metric in _event_metrics(config).items():
        if metric.cuped is None:
            continue
        covariate = metric.cuped.covariate
        source = metric if covariate == "same" else config.metrics[covariate]
        assert isinstance(source, ProportionMetric | MeanMetric)
        sources[name] = source
    return sources


def _covariate_aggregate(
    name: str,
    target: ProportionMetric | MeanMetric,
    metric: ProportionMetric | MeanMetric,
    params: _Params,
) -> str:
    """The covariate: the source metric's aggregate over the target's pre-exposure window.

    The source's `unless` rule is not applied before exposure (it is a conversion detail, and
    CUPED needs only a covariate correlated with the outcome, not an identical definition).
    """
    cuped = target.cuped
    assert cuped is not None
    match = (
        f"pe.event_name = {params.bind(metric.event)}"
        f" AND pe.occurred_at >= pe.first_exposed_at - {_interval(cuped.lookback)}"
        f" AND pe.occurred_at < pe.first_exposed_at - INTERVAL '{-_seconds(cuped.until)} seconds'"
    )
    if isinstance(metric, ProportionMetric):
        agg = f"MAX(CASE WHEN {match} THEN 1 ELSE 0 END)"
    elif metric.aggregate == "count":
        agg = f"SUM(CASE WHEN {match} THEN 1 ELSE 0 END)"
    else:
        agg = f"SUM(CASE WHEN {match} THEN COALESCE(pe.value, 0) ELSE 0 END)"
    return f",\n      {agg} AS {quote_ident(covariate_column(name))}"


def _window_complete(metric: ProportionMetric | MeanMetric | RatioMetric) -> str:
    if metric.window is None:
        return "TRUE"
    return f"u.first_exposed_at + {_interval(metric.window)} <= :run_end"


def _quantile_count(name: str, metric: QuantileMetric, params: _Params) -> str:
    """Per unit: the quantile metric's events with a value (N_i of the clustered variance)."""
    window = _before_window_end(metric.window)
    match = f"ev.event_name = {params.bind(metric.event)} AND ev.value IS NOT NULL{window}"
    column = quote_ident(quantile_count_column(name))
    return f",\n      SUM(CASE WHEN {match} THEN 1 ELSE 0 END) AS {column}"


# Session-local (temporary) tables of the extract's steps; dropped when the units table is built.
ENROLLED, METRIC_AGGREGATES, UNLESS_AGGREGATES, COVARIATES = (
    "ab_tmp_enrolled",
    "ab_tmp_metrics",
    "ab_tmp_unless",
    "ab_tmp_covariates",
)


# Rows of the experiment's exposures (about 1.45 per unit) one hash partition of the metric pass
# may hold per GiB of DuckDB's memory limit: chosen from runs at 1 GB (953.6 MiB) with one, two,
# three and four passes (docs/benchmarks.md, "The metric pass runs in hash partitions").
EXPOSURES_PER_PARTITION_GIB = 10_000_000


@dataclass(frozen=True)
class ExtractPlan:
    """How the extract's steps run on one engine (the SQL they compute is the same).

    - `histograms_in_pass`: quantile histograms as a second grouping set of the metric pass,
      else a pass of their own (PostgreSQL sorts grouping sets on disk instead of hashing);
    - `partitions`: the metric pass runs once per hash partition of the units, so each
      partition's join and per-unit aggregate fit in DuckDB's memory limit instead of spilling;
    - `unit_key`: the enrolled table's column the steps' tables carry and are joined back on
      (DuckDB's `rowid`: an integer, cheaper to group and join than a unit id string).
    """

    histograms_in_pass: bool = True
    partitions: int = 1
    unit_key: str = "unit_id"

    def partition_filter(self, part: int, *aliases: str) -> str:
        """` AND hash(<alias>.unit_id) % partitions = part` per alias, or nothing unpartitioned."""
        if self.partitions == 1:
            return ""
        return "".join(
            f" AND hash({alias}.unit_id) % {self.partitions} = {part}" for alias in aliases
        )

    @classmethod
    def for_warehouse(
        cls, warehouse: Warehouse, config: ExperimentConfig, run_date: date
    ) -> ExtractPlan:
        if warehouse.dialect == "postgresql":
            return cls(histograms_in_pass=False)
        if warehouse.dialect != "duckdb":
            return cls()
        window = RunWindow.of(config, run_date)
        exposures = warehouse.query(
            f"SELECT COUNT(*) AS n, current_setting('memory_limit') AS memory_limit "
            f"FROM {quote_ident(config.source.exposures)} WHERE experiment_key = :key "
            "AND exposed_at >= :start AND exposed_at < :end",
            {
                "key": config.key,
                "start": window.start,
                "end": min(window.end_exclusive, window.run_end),
            },
        )[0]
        return cls(
            partitions=partitions_for(int(exposures["n"]), str(exposures["memory_limit"])),
            unit_key="rowid",
        )


def partitions_for(exposure_rows: int, memory_limit: str) -> int:
    """Hash partitions for the metric pass: enough that each holds at most
    EXPOSURES_PER_PARTITION_GIB exposure rows per GiB of DuckDB's `memory_limit` setting
    (as DuckDB prints it: '953.6 MiB'); 1 when the setting cannot be read."""
    units = {"bytes": 0, "KiB": 1, "MiB": 2, "GiB": 3, "TiB": 4, "PiB": 5}
    match = re.fullmatch(r"([0-9.]+) ?(bytes|[KMGTP]iB)", memory_limit.strip())
    if match is None:
        return 1
    gib = float(match[1]) * 1024.0 ** (units[match[2]] - 3)
    capacity = max(1.0, EXPOSURES_PER_PARTITION_GIB * gib)
    return max(1, math.ceil(exposure_rows / capacity))


def _enrolled_sql(exposures: str) -> str:
    """Enrolled units from the experiment's exposures in one GROUP BY over them.

    The arm is the first exposure's (ties on the timestamp: the smallest arm): `MIN(arm)` for
    a unit seen in one arm. Units seen in several arms get their first exposure's arm in a
    second step (`_first_arm_sql`), so this aggregate stays a cheap one (no arg_min over a
    composite key, no join of every unit).
    """
    return f"""SELECT unit_id, MIN(exposed_at) AS first_exposed_at, COUNT(*) AS exposures,
       MIN(arm) AS arm, CASE WHEN MIN(arm) = MAX(arm) THEN 0 ELSE 1 END AS several_arms
FROM {exposures}
WHERE experiment_key = :key
  AND exposed_at >= :start AND exposed_at < :end_exclusive AND exposed_at < :run_end
GROUP BY unit_id
HAVING NOT (:exclude_internal AND MAX(CASE WHEN is_internal THEN 1 ELSE 0 END) = 1)
   AND NOT (:exclude_bots AND MAX(CASE WHEN is_bot THEN 1 ELSE 0 END) = 1)"""


def _first_arm_sql(exposures: str) -> str:
    """Units seen in several arms: the arm of their first exposure (ties: the smallest arm)."""
    return f"""UPDATE {ENROLLED} SET arm = f.arm
FROM (
  SELECT p.unit_id, MIN(x.arm) AS arm
  FROM {ENROLLED} p
  JOIN {exposures} x ON x.unit_id = p.unit_id AND x.exposed_at = p.first_exposed_at
  WHERE p.several_arms = 1 AND x.experiment_key = :key
  GROUP BY p.unit_id
) f
WHERE f.unit_id = {ENROLLED}.unit_id"""


def _events_of_enrolled(
    events: str,
    names: list[str],
    params: _Params,
    plan: ExtractPlan,
    with_arm: bool = False,
    part: int | None = None,
) -> str:
    """Enrolled units' events with the given names, from first exposure up to the run date,
    each with its unit's `unit_key`; only the units of hash partition `part` when given."""
    arm = ", u.arm" if with_arm else ""
    return f"""SELECT u.{plan.unit_key} AS unit_key, e.event_name, e.occurred_at, e.value, \
u.first_exposed_at{arm}
  FROM {events} e
  JOIN {ENROLLED} u ON u.unit_id = e.unit_id
  WHERE e.event_name IN ({", ".join(params.bind(n) for n in names)})
    AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < :run_end\
{"" if part is None else plan.partition_filter(part, "e", "u")}"""


def _unless_sql(
    metrics: dict[str, ProportionMetric | MeanMetric],
    events: str,
    params: _Params,
    plan: ExtractPlan,
) -> tuple[str, dict[str, str]]:
    """The step for proportions with an `unless` rule, apart from the other metrics: the window
    function (next `unless` event after each event, per unit) sorts only these events.
    Returns the statement (empty when no metric has `unless`) and {metric: its table alias}."""
    spoilable = {
        name: m for name, m in metrics.items() if isinstance(m, ProportionMetric) and m.unless
    }
    if not spoilable:
        return "", {}
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
        f",\n      {_aggregate(m, params, _unless_column(m, unless_cols))}"
        f" AS {quote_ident(metric_column(name))}"
        for name, m in spoilable.items()
    )
    statement = f"""CREATE TEMP TABLE {UNLESS_AGGREGATES} AS
WITH uev AS (
  {_events_of_enrolled(events, names, params, plan)}
),
useq AS (
  SELECT ev.*{next_unless}
  FROM uev ev
)
SELECT ev.unit_key{aggregates}
FROM useq ev GROUP BY ev.unit_key"""
    return statement, {name: "ua" for name in spoilable}


def build_units_sql(
    config: ExperimentConfig, run_date: date, table: str, plan: ExtractPlan | None = None
) -> tuple[list[str], dict[str, Any]]:
    """Statements and parameters that (re)build the units table, in steps.

    Reads: the experiment's exposures once (one GROUP BY per unit); the metric events once
    (one join to the enrolled units, one GROUP BY per unit: every metric, ratio part and
    quantile event count is a conditional aggregate of that pass), or once per hash partition
    of the units when `plan.partitions` > 1; the events of `unless` rules in a second, narrow
    pass; pre-exposure events once when a metric uses CUPED.

    Each step writes a temporary table and the last joins them: one plan per step keeps each
    join's and aggregate's memory to itself: at 10M units under DuckDB's 1 GB cap, faster than
    one statement with the same steps as CTEs (docs/benchmarks.md).

    Quantile metrics' histograms are stored too: with `plan.histograms_in_pass`, as a second
    grouping set of the metric pass (`_quantile_histograms`); otherwise by a pass of their own
    over the events joined to the new units table (`_histogram_pass`). `plan` defaults to one
    unpartitioned pass joined on `unit_id`, SQL that runs on any engine.
    """
    plan = plan or ExtractPlan()
    window = RunWindow.of(config, run_date)
    params = _Params()
    params.values.update(
        key=config.key,
        start=window.start,
        end_exclusive=window.end_exclusive,
        run_end=window.run_end,
        exclude_internal=config.audience.exclude_internal,
        exclude_bots=config.audience.exclude_bots,
    )
    exposures = quote_ident(config.source.exposures)
    events = quote_ident(config.source.events)
    steps = [
        f"CREATE TEMP TABLE {ENROLLED} AS {_enrolled_sql(exposures)}",
        _first_arm_sql(exposures),
    ]
    joins = ""
    metrics = _event_metrics(config)
    unless_step, unless_source = _unless_sql(metrics, events, params, plan)
    plain = {name: m for name, m in metrics.items() if name not in unless_source}
    ratios = _metrics_of(config, RatioMetric)
    quantiles = _metrics_of(config, QuantileMetric)
    wanted = sorted(
        {m.event for m in plain.values() if m.event}
        | {p.event for m in ratios.values() for p in (m.numerator, m.denominator)}
        | {m.event for m in quantiles.values()}
    )
    histogram = ""
    if wanted:
        aggregates = (
            "".join(
                f",\n      {_aggregate(m, params, None)} AS {quote_ident(metric_column(name))}"
                for name, m in plain.items()
            )
            + "".join(_ratio_aggregates(name, m, params) for name, m in ratios.items())
            + "".join(_quantile_count(name, m, params) for name, m in quantiles.items())
        )
        if plan.histograms_in_pass:
            grouping, histogram = _quantile_histograms(config, run_date, quantiles, params)
        else:
            grouping = "\nFROM ev GROUP BY ev.unit_key"
            histogram = _histogram_pass(config, run_date, quantiles, table, params)
        with_arm = plan.histograms_in_pass and bool(quantiles)
        for part in range(plan.partitions):
            into = "INSERT INTO" if part else "CREATE TEMP TABLE"
            step_events = _events_of_enrolled(events, wanted, params, plan, with_arm, part)
            steps.append(
                f"""{into} {METRIC_AGGREGATES}{"" if part else " AS"}
WITH ev AS (
  {step_events}
)
SELECT ev.unit_key{aggregates}{grouping}"""
            )
        joins += f"\nLEFT JOIN {METRIC_AGGREGATES} a ON a.unit_key = u.{plan.unit_key}"
    if unless_step:
        steps.append(unless_step)
        joins += f"\nLEFT JOIN {UNLESS_AGGREGATES} ua ON ua.unit_key = u.{plan.unit_key}"
    columns = (
        "".join(
            f",\n  CASE WHEN {_window_complete(m)} THEN "
            f"COALESCE({'ua' if name in unless_source else 'a'}.{quote_ident(metric_column(name))}"
            f", 0) END AS {quote_ident(metric_column(name))}"
            for name, m in metrics.items()
        )
        + "".join(
            f",\n  CASE WHEN {_window_complete(m)} THEN COALESCE(a.{column}, 0) END AS {column}"
            for name, m in ratios.items()
            for column in map(quote_ident, ratio_columns(name))
        )
        + "".join(
            f",\n  COALESCE(a.{column}, 0) AS {column}"
            for column in (quote_ident(quantile_count_column(name)) for name in quantiles)
        )
    )
    pre_step, pre_columns = _pre_exposure_sql(config, events, params, plan)
    if pre_step:
        steps.append(pre_step)
        joins += f"\nLEFT JOIN {COVARIATES} c ON c.unit_key = u.{plan.unit_key}"
    target = quote_ident(table)
    units = f"""CREATE TABLE {target} AS
SELECT u.unit_id, u.arm, u.first_exposed_at, u.exposures, u.several_arms{columns}{pre_columns}
FROM {ENROLLED} u{joins}"""
    hist_table = quote_ident(quantile_histogram_table_name(config, run_date))
    statements = [f"DROP TABLE IF EXISTS {target}", f"DROP TABLE IF EXISTS {hist_table}"]
    statements += [*steps, units, *([histogram] if histogram else [])]
    temporary = [step.split()[3] for step in steps if step.startswith("CREATE TEMP TABLE")]
    return statements + [f"DROP TABLE {name}" for name in temporary], params.values


def _quantile_histograms(
    config: ExperimentConfig,
    run_date: date,
    quantiles: dict[str, QuantileMetric],
    params: _Params,
) -> tuple[str, str]:
    """The metric aggregate's grouping, and the statement that stores quantile histograms.

    Each quantile metric's histogram (per arm and order-preserving bucket: count, smallest and
    largest value; `ab_pipeline.quantiles`) is a second grouping set of the same pass over the
    joined events that counts N_i per unit, so its events are joined to the units once. The
    histogram rows (no unit) go to the run's histogram table; the units table joins the rest.
    A metric pass run in partitions leaves one histogram row per partition, arm and bucket:
    the statement adds them up.
    """
    if not quantiles:
        return "\nFROM ev GROUP BY ev.unit_key", ""
    buckets = {name: f"b_{i}" for i, name in enumerate(quantiles)}
    columns, sets, parts = "", ["(ev.unit_key)"], []
    for name, metric in quantiles.items():
        match = (
            f"ev.event_name = {params.bind(metric.event)} AND ev.value IS NOT NULL"
            f"{_before_window_end(metric.window)}"
        )
        columns += f",\n  CASE WHEN {match} THEN {bucket_sql('ev.value')} END AS {buckets[name]}"
        sets.append(f"(ev.arm, {buckets[name]})")
        parts.append(
            f"SELECT {params.bind(name)} AS metric, arm, {buckets[name]} AS bucket,"
            f" SUM(bucket_events) AS n, MIN(low) AS low, MAX(high) AS high"
            f" FROM {METRIC_AGGREGATES} WHERE unit_key IS NULL AND {buckets[name]} IS NOT NULL"
            f" GROUP BY arm, {buckets[name]}"
        )
    grouping = f""",
  ev.arm, {", ".join(buckets.values())},
  COUNT(*) AS bucket_events, MIN(ev.value) AS low, MAX(ev.value) AS high
FROM (SELECT ev.*{columns}
  FROM ev) ev
GROUP BY GROUPING SETS ({", ".join(sets)})"""
    table = quote_ident(quantile_histogram_table_name(config, run_date))
    return grouping, f"CREATE TABLE {table} AS\n" + "\nUNION ALL\n".join(parts)


def _histogram_pass(
    config: ExperimentConfig,
    run_date: date,
    quantiles: dict[str, QuantileMetric],
    units_table: str,
    params: _Params,
) -> str:
    """The statement that stores quantile histograms from a pass of their own over the metric
    events joined to the units table (the same rows and buckets as the grouping set)."""
    if not quantiles:
        return ""
    parts = []
    for name, metric in quantiles.items():
        body, _ = quantile_events_sql(config, metric, units_table, run_date)
        body = body.replace(":event", params.bind(metric.event))
        parts.append(f"SELECT {params.bind(name)} AS metric, h.* FROM ({histogram_sql(body)}) h")
    table = quote_ident(quantile_histogram_table_name(config, run_date))
    return f"CREATE TABLE {table} AS\n" + "\nUNION ALL\n".join(parts)


def _pre_exposure_sql(
    config: ExperimentConfig, events: str, params: _Params, plan: ExtractPlan
) -> tuple[str, str]:
    """The step and the columns for CUPED covariates (empty strings when no metric uses CUPED).

    Only events strictly before each unit's first exposure (up to its `until`) are read, so the
    treatment cannot have moved the covariate.
    """
    sources = _cuped_sources(config)
    if not sources:
        return "", ""
    targets = _event_metrics(config)
    lookback = max(_seconds(targets[name].cuped.lookback) for name in sources)  # type: ignore[union-attr]
    names = ", ".join(
        params.bind(e) for e in sorted({m.event for m in sources.values() if m.event})
    )
    aggregates = "".join(
        _covariate_aggregate(name, targets[name], source, params)
        for name, source in sources.items()
    )
    step = f"""CREATE TEMP TABLE {COVARIATES} AS
WITH pre AS (
  SELECT u.{plan.unit_key} AS unit_key, e.event_name, e.occurred_at, e.value, u.first_exposed_at
  FROM {events} e
  JOIN {ENROLLED} u ON u.unit_id = e.unit_id
  WHERE e.event_name IN ({names})
    AND e.occurred_at >= u.first_exposed_at - INTERVAL '{lookback} seconds'
    AND e.occurred_at < u.first_exposed_at
)
SELECT pe.unit_key{aggregates}
FROM pre pe GROUP BY pe.unit_key"""
    columns = "".join(
        f",\n  COALESCE(c.{column}, 0) AS {column}"
        for column in (quote_ident(covariate_column(n)) for n in sources)
    )
    return step, columns


# Session-local table the `sql:` metrics' values are read into, in a read-only transaction.
SQL_METRIC_VALUES = "ab_tmp_sql_metric_values"


def _sql_metrics(config: ExperimentConfig) -> dict[str, str]:
    return {
        name: metric.sql
        for name, metric in config.metrics.items()
        if isinstance(metric, ProportionMetric | MeanMetric) and metric.sql is not None
    }


def _sql_metric_reads(config: ExperimentConfig, dialect: str) -> tuple[list[str], dict[str, Any]]:
    """Statements that copy each `sql:` metric's rows (unit_id, value) into SQL_METRIC_VALUES.

    The user's text runs as sqlglot writes it back after `sql_safety.checked_select` (one
    SELECT, nothing else), in the warehouse's dialect; its colons are escaped so that no
    string literal of it becomes a bound parameter.
    """
    from ab_pipeline.sql_safety import UnsafeSQL, checked_select

    statements, params = [], {}
    for i, (name, sql) in enumerate(_sql_metrics(config).items()):
        try:
            select = checked_select(sql, dialect).replace(":", "\\:")
        except UnsafeSQL as error:
            raise ValueError(f"metrics.{name}.sql: not one read-only SELECT: {error}") from None
        params[f"sql_metric_{i}"] = name
        statements.append(
            f"INSERT INTO {SQL_METRIC_VALUES} SELECT :sql_metric_{i}, CAST(s.unit_id AS TEXT), "
            f"CAST(s.value AS DOUBLE PRECISION) FROM (\n{select}\n) AS s"
        )
    return statements, params


def _sql_metric_statements(config: ExperimentConfig, table: str) -> list[str]:
    """`sql:` metrics: their values (read beforehand, `_sql_metric_reads`) joined onto the
    units table; 0 for a unit the query has no row for."""
    statements = []
    target = quote_ident(table)
    for i, name in enumerate(_sql_metrics(config)):
        column = quote_ident(metric_column(name))
        statements += [
            f"ALTER TABLE {target} ADD COLUMN {column} DOUBLE PRECISION",
            f"UPDATE {target} SET {column} = COALESCE((SELECT v.value FROM {SQL_METRIC_VALUES} v "
            f"WHERE v.metric = :sql_metric_{i} AND v.unit_id = {target}.unit_id), 0)",
        ]
    return statements + ([f"DROP TABLE {SQL_METRIC_VALUES}"] if statements else [])


def _execute_with_sql_metrics(
    warehouse: Warehouse, config: ExperimentConfig, statements: list[str], params: dict[str, Any]
) -> None:
    """Read the `sql:` metrics in a read-only transaction, then build, on one connection.

    `BEGIN TRANSACTION READ ONLY` (DuckDB and PostgreSQL) lets the user's SELECT write nothing
    but the session's temporary table: a write the parser could not foresee fails.
    PostgreSQL's connection runs in autocommit so the explicit transactions are the only ones;
    duckdb_engine opens one on first use, which the first COMMIT closes.
    """
    from sqlalchemy import text

    reads, read_params = _sql_metric_reads(config, warehouse.dialect)
    params = {**params, **read_params}
    create = (
        f"CREATE TEMP TABLE {SQL_METRIC_VALUES} (metric TEXT, unit_id TEXT, value DOUBLE PRECISION)"
    )
    with warehouse.engine().connect() as connection:
        if warehouse.dialect == "postgresql":
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql(create)
        else:
            connection.exec_driver_sql(create)
            connection.exec_driver_sql("COMMIT")
        for begin, block in (("BEGIN TRANSACTION READ ONLY", reads), ("BEGIN", statements)):
            connection.exec_driver_sql(begin)
            try:
                for statement in block:
                    connection.execute(text(statement), params)
            except Exception:
                connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")


def build_units_table(warehouse: Warehouse, config: ExperimentConfig, run_date: date) -> str:
    """Build (or rebuild) the run's units table in one transaction; returns its name."""
    table = units_table_name(config, run_date)
    plan = ExtractPlan.for_warehouse(warehouse, config, run_date)
    statements, params = build_units_sql(config, run_date, table, plan)
    statements += _sql_metric_statements(config, table)
    params.update({f"sql_metric_{i}": name for i, name in enumerate(_sql_metrics(config))})
    if warehouse.dialect == "postgresql":
        # Freshly loaded source tables may have no planner statistics yet; PostgreSQL then
        # estimates one row per CTE and nests loops (minutes instead of milliseconds). This is
        # whole-table ETL: hash joins are always right. ANALYZE gives the later steps' joins on
        # the enrolled units, and the gates' and analysis's on the units table, real statistics.
        analysed = {f"UPDATE {ENROLLED}": ENROLLED, f"CREATE TABLE {quote_ident(table)}": table}
        prepared = ["SET LOCAL enable_nestloop = off"]
        for statement in statements:
            prepared.append(statement)
            prepared += [
                f"ANALYZE {quote_ident(n)}" for h, n in analysed.items() if statement.startswith(h)
            ]
        statements = [*prepared, f"ANALYZE {quote_ident(table)}"]
    if _sql_metrics(config):
        _execute_with_sql_metrics(warehouse, config, statements, params)
    else:
        warehouse.execute(statements, params)
    return table


def quantile_events_sql(
    config: ExperimentConfig,
    metric: QuantileMetric,
    units_table: str,
    run_date: date,
    values: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """FROM-clause body: the quantile metric's event values of enrolled units, with their arm.

    `values`, a predicate on `{v}` (the value), narrows the body to a few events (a bucket
    range, the tail above a quantile). Those events are read once into a materialized CTE, so
    the join builds its hash table from them and streams the units table past it: the
    optimizer cannot know how selective a bound range is and would otherwise hash every
    enrolled unit. (Cutting the units to those with such an event first, by a semi-join, read
    the events twice and was slower: docs/benchmarks.md, "Narrow quantile passes".)
    """
    window = _before_window_end(metric.window, event="e", unit="u")
    events = quote_ident(config.source.events)
    if values:
        events = (
            f"(WITH narrow AS MATERIALIZED (SELECT unit_id, event_name, occurred_at, value "
            f"FROM {events} WHERE event_name = :event AND value IS NOT NULL "
            f"AND {values.format(v='value')}) SELECT * FROM narrow)"
        )
    sql = f"""
FROM {events} e
JOIN {quote_ident(units_table)} u ON u.unit_id = e.unit_id
WHERE e.event_name = :event AND e.value IS NOT NULL
  AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < :run_end{window}
"""
    return sql, {"event": metric.event, "run_end": RunWindow.of(config, run_date).run_end}
