"""Extraction in the warehouse: exposures and events -> one row per enrolled unit.

A few statements build the run's units table (each step a temporary table, the last joins
them): `unit_id`, `arm`, `first_exposed_at`, `exposures`, `several_arms` (1 when the unit was
exposed to more than one arm), one `m_<metric>` column per unit-level metric (two for a
ratio), `n_<metric>` per quantile metric (its events with a value: N_i of the clustered
variance; with `x_<metric>`, its largest or smallest value, where the engine reads quantiles
by an edge) and `c_<metric>` per CUPED covariate. Raw events never leave the warehouse; the SQL is
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

import contextlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from typing import TYPE_CHECKING, Any

from ab_pipeline.core.config import ExperimentConfig, QuantileMetric
from ab_pipeline.metrics import KINDS, in_column_order, kind_of

# SQL pieces shared with the metric kinds; the units table's column names (`x as x`) are
# re-exported for the extract's readers.
from ab_pipeline.metrics.base import (
    METRIC_PASS_STEP,
    conditional_aggregate,
    quantile_extreme_column,
)
from ab_pipeline.metrics.base import SqlParams as _Params
from ab_pipeline.metrics.base import before_window_end as _before_window_end
from ab_pipeline.metrics.base import covariate_column as covariate_column
from ab_pipeline.metrics.base import interval as _interval
from ab_pipeline.metrics.base import metric_column as metric_column
from ab_pipeline.metrics.base import quantile_count_column as quantile_count_column
from ab_pipeline.metrics.base import ratio_columns as ratio_columns
from ab_pipeline.metrics.base import seconds as _seconds
from ab_pipeline.metrics.quantile import quantile_events_sql as quantile_events_sql
from ab_pipeline.stats.quantiles import bucket_sql, histogram_sql
from ab_pipeline.warehouse import Warehouse, embedded, quote_ident
from ab_pipeline.warehouse.dialects import dialect_named
from ab_pipeline.warehouse.run_tables import EXPOSURE_DAY, StepTables, _run_table_stem
from ab_pipeline.warehouse.run_tables import RunWindow as RunWindow
from ab_pipeline.warehouse.run_tables import (
    quantile_histogram_table_name as quantile_histogram_table_name,
)
from ab_pipeline.warehouse.run_tables import units_table_name as units_table_name
from ab_pipeline.warehouse.sources import source_relation

if TYPE_CHECKING:
    from ab_pipeline.warehouse.dialects.base import Session

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
    keep = kept_run_tables() if keep is None else keep
    schema = config.source.units_schema
    names = warehouse.table_names(schema)
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


def _event_metrics(config: ExperimentConfig) -> dict[str, Any]:
    """Metrics whose per-unit value is an aggregate of one event (what CUPED can adjust)."""
    return {
        name: metric
        for name, metric in config.metrics.items()
        if kind_of(metric).per_unit_how(metric) is not None
    }


def _cuped_sources(config: ExperimentConfig) -> dict[str, Any]:
    """{metric with CUPED: the metric whose event defines its covariate}."""
    sources = {}
    for name, metric in _event_metrics(config).items():
        cuped = kind_of(metric).cuped_of(metric)
        if cuped is None:
            continue
        covariate = cuped.covariate
        sources[name] = metric if covariate == "same" else config.metrics[covariate]
    return sources


def _covariate_aggregate(name: str, target: Any, metric: Any, params: _Params) -> str:
    """The covariate: the source metric's aggregate over the target's pre-exposure window.

    The source's `unless` rule is not applied before exposure (it is a conversion detail, and
    CUPED needs only a covariate correlated with the outcome, not an identical definition).
    """
    cuped = kind_of(target).cuped_of(target)
    assert cuped is not None
    how = kind_of(metric).per_unit_how(metric)
    assert how is not None
    match = (
        f"pe.event_name = {params.bind(metric.event)}"
        f" AND pe.occurred_at >= pe.first_exposed_at - {_interval(cuped.lookback)}"
        f" AND pe.occurred_at < pe.first_exposed_at - INTERVAL '{-_seconds(cuped.until)} seconds'"
    )
    agg = conditional_aggregate(how, match, "pe.value")
    return f",\n      {agg} AS {quote_ident(covariate_column(name))}"


# The extract's steps, each a table (`StepTables`) dropped when the units table is built.
# (The `unless` step is the proportion kind's: metrics.proportion.UNLESS_STEP.)
ENROLLED, METRIC_AGGREGATES, COVARIATES = ("enrolled", METRIC_PASS_STEP, "covariates")


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
      (DuckDB's `rowid`: an integer, cheaper to group and join than a unit id string);
    - `dialect`: the engine's name, whose `hash_bucket` splits units into partitions;
    - `steps`: where the steps' tables live (session-local, or beside the units table where
      the dialect asks for `shared_step_tables`);
    - `stores_histograms`: False where the dialect `quantiles_by_edge` (the analysis then
      finds each quantile's order statistics without a histogram: `metrics.quantile`);
    - `unless_in_pass`: a proportion with `unless` decided by the metric pass where it can
      be, its ordered pass only for the units left undecided (`metrics.proportion`).
    All seven come from the engine's dialect module (`Dialect`).
    """

    histograms_in_pass: bool = True
    partitions: int = 1
    unit_key: str = "unit_id"
    dialect: str = "duckdb"
    steps: StepTables = StepTables()
    stores_histograms: bool = True
    unless_in_pass: bool = True

    def partition_filter(self, part: int, *aliases: str) -> str:
        """` AND <hash bucket of alias.unit_id> = part` per alias, or nothing unpartitioned."""
        if self.partitions == 1:
            return ""
        bucket = dialect_named(self.dialect).hash_bucket
        return "".join(
            f" AND {bucket(f'{alias}.unit_id', self.partitions)} = {part}" for alias in aliases
        )

    @classmethod
    def for_warehouse(
        cls, warehouse: Warehouse, config: ExperimentConfig, run_date: date
    ) -> ExtractPlan:
        dialect = warehouse.sql_dialect
        plan = cls(
            histograms_in_pass=dialect.histograms_in_pass,
            unit_key=dialect.unit_key,
            dialect=dialect.name,
            steps=StepTables(units_table_name(config, run_date))
            if dialect.shared_step_tables
            else StepTables(),
            stores_histograms=not dialect.quantiles_by_edge,
            unless_in_pass=dialect.unless_in_pass,
        )
        if dialect.memory_limit_sql is None:
            return plan
        window = RunWindow.of(config, run_date)
        exposures = warehouse.query(
            f"SELECT COUNT(*) AS n, {dialect.memory_limit_sql} AS memory_limit "
            f"FROM {source_relation(config.source, 'exposures', warehouse.dialect)} AS x "
            "WHERE experiment_key = :key "
            "AND exposed_at >= :start AND exposed_at < :end",
            {
                "key": config.key,
                "start": window.start,
                "end": min(window.end_exclusive, window.run_end),
            },
        )[0]
        partitions = partitions_for(int(exposures["n"]), str(exposures["memory_limit"]))
        return replace(plan, partitions=partitions)


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


def _enrolled_sql(exposures: str, arms: list[str], params: _Params) -> str:
    """Enrolled units from the experiment's exposures in one GROUP BY over them.

    The arms are compared by their position among the configured arms (an integer: no string
    kept per unit while the units are grouped, which PostgreSQL copies for every unit and Spark
    cannot hold in a hash aggregate's buffer). A unit seen in one configured arm gets it here;
    a unit seen in several arms, or in an arm not configured (or in none: a null arm), is
    flagged `several_arms` and settled by a second, exact step (`_first_arm_sql`), so this
    aggregate stays a cheap one (no arg_min over a composite key, no join of every unit).
    """
    names = [params.bind(arm) for arm in arms]
    # The arm's position; -1 for an arm not configured, NULL for a null arm (ignored, as MIN
    # and MAX of the names would ignore it). Compared as text: an integer arm column still
    # reaches the data-quality gate, whose contract check names it.
    known = " ".join(f"WHEN CAST(arm AS TEXT) = {n} THEN {i}" for i, n in enumerate(names))
    code = f"CASE {known} WHEN arm IS NOT NULL THEN -1 END"
    first = f"MIN({code})"
    named = " ".join(f"WHEN {i} THEN {n}" for i, n in enumerate(names))
    return f"""SELECT unit_id, MIN(exposed_at) AS first_exposed_at, COUNT(*) AS exposures,
       CASE {first} {named} END AS arm,
       CASE WHEN {first} = MAX({code}) AND {first} >= 0 THEN 0 ELSE 1 END AS several_arms
FROM {exposures} AS x
WHERE experiment_key = :key
  AND exposed_at >= :start AND exposed_at < :end_exclusive AND exposed_at < :run_end
GROUP BY unit_id
HAVING NOT (:exclude_internal AND MAX(CASE WHEN is_internal THEN 1 ELSE 0 END) = 1)
   AND NOT (:exclude_bots AND MAX(CASE WHEN is_bot THEN 1 ELSE 0 END) = 1)"""


def _first_arm_sql(exposures: str, enrolled: str) -> str:
    """The units the enrolled step flagged: the arm of their first exposure (ties: the smallest
    arm) and whether they were seen in more than one arm, from their exposures in the period
    (few units: those seen in several arms or in an arm not configured)."""
    return f"""UPDATE {enrolled} SET arm = f.arm, several_arms = f.several_arms
FROM (
  SELECT p.unit_id, MIN(CASE WHEN x.exposed_at = p.first_exposed_at THEN x.arm END) AS arm,
         CASE WHEN MIN(x.arm) = MAX(x.arm) THEN 0 ELSE 1 END AS several_arms
  FROM {enrolled} p
  JOIN {exposures} x ON x.unit_id = p.unit_id
  WHERE p.several_arms = 1 AND x.experiment_key = :key
    AND x.exposed_at >= :start AND x.exposed_at < :end_exclusive AND x.exposed_at < :run_end
  GROUP BY p.unit_id
) f
WHERE f.unit_id = {enrolled}.unit_id"""


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
  JOIN {plan.steps.ref(ENROLLED)} u ON u.unit_id = e.unit_id
  WHERE e.event_name IN ({", ".join(params.bind(n) for n in names)})
    AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < :run_end\
{"" if part is None else plan.partition_filter(part, "e", "u")}"""


def build_units_sql(
    config: ExperimentConfig, run_date: date, table: str, plan: ExtractPlan | None = None
) -> tuple[list[str], dict[str, Any]]:
    """Statements and parameters that (re)build the units table, in steps.

    Reads: the experiment's exposures once (one GROUP BY per unit); the metric events once
    (one join to the enrolled units, one GROUP BY per unit: every metric, ratio part and
    quantile event count is a conditional aggregate of that pass), or once per hash partition
    of the units when `plan.partitions` > 1 (with `plan.unless_in_pass`, a proportion with
    `unless` too, decided from each unit's first and last events and `unless` events where that
    settles it); the events of `unless` rules in a second, narrow pass that orders them (only
    the undecided units' then, none read when no unit is left); pre-exposure events once when a
    metric uses CUPED. `sql:` metrics' values are read before the build into SQL_METRIC_VALUES
    (`_sql_metric_reads`); the units table joins them.

    Each step writes a temporary table and the last joins them: one plan per step keeps each
    join's and aggregate's memory to itself: at 10M units under DuckDB's 1 GB cap, faster than
    one statement with the same steps as CTEs (docs/benchmarks.md).

    Quantile metrics' histograms are stored too (unless `plan.stores_histograms` is False):
    with `plan.histograms_in_pass`, as a second grouping set of the metric pass
    (`_quantile_histograms`); otherwise by a pass of their own over the events joined to the
    new units table (`_histogram_pass`). `plan` defaults to one unpartitioned pass joined on
    `unit_id`, SQL that runs on any engine.
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
    exposures = source_relation(config.source, "exposures", plan.dialect)
    events = source_relation(config.source, "events", plan.dialect)
    tables = plan.steps
    steps = [
        f"{tables.create} {tables.ref(ENROLLED)} AS "
        + _enrolled_sql(exposures, list(config.arms), params),
        _first_arm_sql(exposures, tables.ref(ENROLLED)),
    ]
    joins = ""
    ordered = list(in_column_order(config.metrics))

    def events_of_enrolled(names: list[str]) -> str:
        return _events_of_enrolled(events, names, params, plan)

    side_steps = []
    for kind in KINDS:
        of_kind = {n: m for n, m, k in ordered if k is kind}
        if not of_kind:
            continue
        step = kind.side_step(of_kind, params, events_of_enrolled, tables, plan.unless_in_pass)
        if step is not None:
            side_steps.append(step)
    # Metrics a side step computes instead of the pass (not those it settles: they stay in it).
    aliases = {name: step.alias for step in side_steps if not step.settles for name in step.metrics}
    plain = [(n, m, k) for n, m, k in ordered if n not in aliases]
    quantiles = {n: m for n, m, k in ordered if k.stores_histogram}
    # Histograms stored, or (`quantiles_by_edge`) each unit's extreme value instead.
    histogrammed, extremes = (quantiles, {}) if plan.stores_histograms else ({}, quantiles)
    wanted = sorted({event for _, m, k in plain for event in k.pass_events(m)})
    histogram = ""
    if wanted:
        aggregates = "".join(k.pass_aggregates(n, m, params) for n, m, k in plain)
        aggregates += _quantile_extremes(extremes, params)
        if plan.histograms_in_pass:
            grouping, histogram = _quantile_histograms(
                config, run_date, histogrammed, params, tables
            )
        else:
            grouping = "\nFROM ev GROUP BY ev.unit_key"
            histogram = _histogram_pass(config, run_date, histogrammed, table, params, plan.dialect)
        with_arm = plan.histograms_in_pass and bool(histogrammed)
        for part in range(plan.partitions):
            into = "INSERT INTO" if part else tables.create
            step_events = _events_of_enrolled(events, wanted, params, plan, with_arm, part)
            steps.append(
                f"""{into} {tables.ref(METRIC_AGGREGATES)}{"" if part else " AS"}
WITH ev AS (
  {step_events}
)
SELECT ev.unit_key{aggregates}{grouping}"""
            )
        joins += f"\nLEFT JOIN {tables.ref(METRIC_AGGREGATES)} a ON a.unit_key = u.{plan.unit_key}"
    for step in side_steps:
        steps.append(step.statement)
        joins += (
            f"\nLEFT JOIN {step.table} {step.alias} ON {step.alias}.unit_key = u.{plan.unit_key}"
        )
    columns = "".join(k.unit_columns(n, m, aliases.get(n, "a")) for n, m, k in ordered)
    columns += "".join(
        f",\n  a.{c} AS {c}" for c in (quote_ident(quantile_extreme_column(n)) for n in extremes)
    )
    pre_step, pre_columns = _pre_exposure_sql(config, events, params, plan)
    if pre_step:
        steps.append(pre_step)
        joins += f"\nLEFT JOIN {tables.ref(COVARIATES)} c ON c.unit_key = u.{plan.unit_key}"
    sql_join, sql_columns = _sql_metric_join(config, params)
    target = quote_ident(table)
    units = f"""CREATE TABLE {target} AS
SELECT u.unit_id, u.arm, u.first_exposed_at, u.exposures, u.several_arms{columns}{pre_columns}\
{sql_columns}
FROM {tables.ref(ENROLLED)} u{joins}{sql_join}"""
    hist_table = quote_ident(quantile_histogram_table_name(config, run_date))
    made = _step_tables(steps, tables)
    statements = [f"DROP TABLE IF EXISTS {target}", f"DROP TABLE IF EXISTS {hist_table}"]
    if tables.units_table is not None:  # shared steps a killed build (without rollback) left
        statements += [f"DROP TABLE IF EXISTS {name}" for name in made]
    statements += [*steps, units, *([histogram] if histogram else [])]
    temporary = made + ([SQL_METRIC_VALUES] if sql_join else [])
    return statements + [f"DROP TABLE {name}" for name in temporary], params.values


def _step_tables(statements: list[str], tables: StepTables) -> list[str]:
    """The step tables, and any temporary table (the `sql:` metrics' values), the statements
    create, in order."""
    return [s.split()[3] for s in statements if s.startswith((tables.create, "CREATE TEMP"))]


def _quantile_histograms(
    config: ExperimentConfig,
    run_date: date,
    quantiles: dict[str, QuantileMetric],
    params: _Params,
    tables: StepTables,
) -> tuple[str, str]:
    """The metric aggregate's grouping, and the statement that stores quantile histograms.

    Each quantile metric's histogram (per arm and order-preserving bucket: count, smallest and
    largest value; `ab_pipeline.stats.quantiles`) is a second grouping set of the same pass over the
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
            f" FROM {tables.ref(METRIC_AGGREGATES)}"
            f" WHERE unit_key IS NULL AND {buckets[name]} IS NOT NULL"
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


def _quantile_extremes(quantiles: dict[str, QuantileMetric], params: _Params) -> str:
    """Per quantile metric, one more conditional aggregate of the metric pass where the
    extract stores no histogram: each unit's largest value (smallest for q < 0.5), NULL for a
    unit without one. A unit whose extreme lies beyond a value has at least one event beyond
    it, which is what the analysis bounds the quantile's side with (`metrics.quantile`)."""
    aggregates = ""
    for name, metric in quantiles.items():
        match = (
            f"ev.event_name = {params.bind(metric.event)} AND ev.value IS NOT NULL"
            f"{_before_window_end(metric.window)}"
        )
        extreme = "MAX" if metric.quantile >= 0.5 else "MIN"
        column = quote_ident(quantile_extreme_column(name))
        aggregates += f",\n      {extreme}(CASE WHEN {match} THEN ev.value END) AS {column}"
    return aggregates


def _histogram_pass(
    config: ExperimentConfig,
    run_date: date,
    quantiles: dict[str, QuantileMetric],
    units_table: str,
    params: _Params,
    dialect: str | None = None,
) -> str:
    """The statement that stores quantile histograms from a pass of their own over the metric
    events joined to the units table (the same rows and buckets as the grouping set)."""
    if not quantiles:
        return ""
    parts = []
    for name, metric in quantiles.items():
        body, _ = quantile_events_sql(config, metric, units_table, run_date, dialect=dialect)
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
    lookback = max(_seconds(targets[name].cuped.lookback) for name in sources)
    names = ", ".join(
        params.bind(e) for e in sorted({m.event for m in sources.values() if m.event})
    )
    aggregates = "".join(
        _covariate_aggregate(name, targets[name], source, params)
        for name, source in sources.items()
    )
    tables = plan.steps
    step = f"""{tables.create} {tables.ref(COVARIATES)} AS
WITH pre AS (
  SELECT u.{plan.unit_key} AS unit_key, e.event_name, e.occurred_at, e.value, u.first_exposed_at
  FROM {events} e
  JOIN {tables.ref(ENROLLED)} u ON u.unit_id = e.unit_id
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


# Session-local table the `sql:` metrics' values are read into (in a read-only transaction
# where the engine has one) before the build, which joins them into the units table.
SQL_METRIC_VALUES = "ab_tmp_sql_metric_values"
SQL_METRIC_TABLE = (
    f"CREATE TEMP TABLE {SQL_METRIC_VALUES} (metric TEXT, unit_id TEXT, value DOUBLE PRECISION)"
)


def _sql_metrics(config: ExperimentConfig) -> dict[str, str]:
    return {
        name: sql
        for name, metric in config.metrics.items()
        if (sql := kind_of(metric).sql_text(metric)) is not None
    }


def _sql_metric_join(config: ExperimentConfig, params: _Params) -> tuple[str, str]:
    """The units table's join of the `sql:` metrics' values (read beforehand into
    SQL_METRIC_VALUES, `_sql_metric_reads`) and its columns: one column per metric, from a
    per-unit pivot of the values; 0 for a unit the query has no row for. Empty strings when
    no metric is defined by `sql:`.

    `MAX` picks a unit's one value: the build refuses a query that returned several rows for
    an enrolled unit before this runs (`_refuse_several_rows`)."""
    names = list(_sql_metrics(config))
    if not names:
        return "", ""
    pivot, columns = "", ""
    for i, name in enumerate(names):
        params.values[f"sql_metric_{i}"] = name
        column = quote_ident(metric_column(name))
        pivot += f",\n    MAX(CASE WHEN v.metric = :sql_metric_{i} THEN v.value END) AS {column}"
        columns += f",\n  COALESCE(sv.{column}, 0) AS {column}"
    join = f"""
LEFT JOIN (
  SELECT v.unit_id{pivot}
  FROM {SQL_METRIC_VALUES} v GROUP BY v.unit_id
) sv ON sv.unit_id = u.unit_id"""
    return join, columns


def _sql_metric_reads(config: ExperimentConfig, dialect: str) -> tuple[list[str], dict[str, Any]]:
    """Statements that copy each `sql:` metric's rows (metric, unit_id, value) into
    SQL_METRIC_VALUES: where the engine has read-only transactions, one INSERT per metric into
    the table created beforehand (`SQL_METRIC_TABLE`; no CREATE runs in a read-only
    transaction); elsewhere one `CREATE TEMP TABLE ... AS` of every metric's rows (Spark's
    temporary tables are cached views, which take no INSERT).

    The user's text runs as sqlglot writes it back after `sql_safety.checked_select` (one
    SELECT, nothing else), in the warehouse's dialect: it is `embedded`, so rendering the
    statement for the engine leaves it as written (and escapes what the driver would read).
    """
    from ab_pipeline.core.sql_safety import UnsafeSQL, checked_select

    engine = dialect_named(dialect)
    selects, params = [], {}
    for i, (name, sql) in enumerate(_sql_metrics(config).items()):
        try:
            select = checked_select(sql, engine.sqlglot_name)
        except UnsafeSQL as error:
            raise ValueError(f"metrics.{name}.sql: not one read-only SELECT: {error}") from None
        params[f"sql_metric_{i}"] = name
        selects.append(
            f"SELECT :sql_metric_{i} AS metric, CAST(s.unit_id AS TEXT) AS unit_id, "
            f"CAST(s.value AS DOUBLE PRECISION) AS value FROM {embedded(select)} AS s"
        )
    if engine.read_only_transactions:
        return [f"INSERT INTO {SQL_METRIC_VALUES} {select}" for select in selects], params
    return [f"CREATE TEMP TABLE {SQL_METRIC_VALUES} AS\n" + "\nUNION ALL\n".join(selects)], params


def several_rows_sql(tables: StepTables) -> str:
    """Enrolled units a `sql:` metric's query returned more than one row for, per metric."""
    return f"""SELECT d.metric, COUNT(*) AS units, MIN(d.unit_id) AS example
FROM (
  SELECT v.metric, v.unit_id FROM {SQL_METRIC_VALUES} v
  GROUP BY v.metric, v.unit_id HAVING COUNT(*) > 1
) d
JOIN {tables.ref(ENROLLED)} u ON u.unit_id = d.unit_id
GROUP BY d.metric ORDER BY d.metric"""


def _refuse_several_rows(found: list[dict[str, Any]]) -> None:
    """A metric's query must give an enrolled unit one value: several rows for one unit are
    an error naming the metric and counting such units, never summed or picked from (which
    of them the user meant cannot be known; a scalar lookup of the value would fail too)."""
    if not found:
        return
    problems = "; ".join(
        f"metrics.{row['metric']}.sql returned more than one row for {int(row['units'])} "
        f"enrolled unit{'s' if int(row['units']) != 1 else ''} (for example unit_id "
        f"{row['example']!r})"
        for row in found
    )
    raise ValueError(f"{problems}: a metric's query must return one row per unit")


def _execute_with_sql_metrics(
    warehouse: Warehouse,
    config: ExperimentConfig,
    statements: list[str],
    params: dict[str, Any],
    table: str,
    tables: StepTables,
) -> None:
    """Read the `sql:` metrics, then build, on one connection (or the engine's session).

    `BEGIN TRANSACTION READ ONLY` (where the engine has it: `Dialect.read_only_transactions`)
    lets the user's SELECT write nothing but the session's temporary table: a write the parser
    could not foresee fails. The connection runs in autocommit so the explicit transactions
    are the only ones (`Dialect.autocommit`). Before the units table is created, the build
    stops if a query returned several rows for an enrolled unit (`_refuse_several_rows`).
    """
    from sqlalchemy import text

    dialect = warehouse.sql_dialect
    reads, read_params = _sql_metric_reads(config, dialect.name)
    params = {**params, **read_params}
    units = f"CREATE TABLE {quote_ident(table)}"
    at = next(i for i, statement in enumerate(statements) if statement.startswith(units))
    steps, rest = statements[:at], statements[at:]
    session = dialect.session(warehouse.url)
    if session is not None:
        _session_build(warehouse, session, [*reads, *steps], rest, params, tables)
        return
    with warehouse.engine().connect() as connection:

        def run(block: list[str]) -> None:
            for statement in block:
                connection.execute(text(warehouse.render(statement)), params)

        def build() -> None:
            run(steps)
            found = connection.execute(text(warehouse.render(several_rows_sql(tables))), params)
            _refuse_several_rows([dict(row._mapping) for row in found])
            run(rest)

        if not dialect.read_only_transactions:
            with connection.begin():
                run(reads)
                build()
            return
        connection = dialect.autocommit(connection, warehouse.render(SQL_METRIC_TABLE))
        _in_transaction(connection, "BEGIN TRANSACTION READ ONLY", lambda: run(reads))
        _in_transaction(connection, "BEGIN", build)


def _in_transaction(connection: Any, begin: str, work: Callable[[], None]) -> None:
    """`work()` between `begin` and COMMIT on an autocommit connection; ROLLBACK on error."""
    connection.exec_driver_sql(begin)
    try:
        work()
    except Exception:
        connection.exec_driver_sql("ROLLBACK")
        raise
    connection.exec_driver_sql("COMMIT")


def _session_build(
    warehouse: Warehouse,
    session: Session,
    steps: list[str],
    rest: list[str],
    params: dict[str, Any],
    tables: StepTables,
) -> None:
    """The build on an engine reached through its own session (Spark, BigQuery), in one
    `batch` (BigQuery: one session, whose temporary tables the check reads). There are no
    transactions: a failure drops the step and temporary tables made so far, so that a retry in
    the same process starts afresh (Spark's views outlive the batch; the units table is
    dropped and rebuilt by every run)."""
    with session.batch() as batch:
        try:
            batch.execute([warehouse.render(s) for s in steps], params)
            _refuse_several_rows(batch.query(warehouse.render(several_rows_sql(tables)), params))
            batch.execute([warehouse.render(s) for s in rest], params)
        except Exception:
            for name in _step_tables(steps, tables):
                with contextlib.suppress(Exception):  # the error that stopped the build matters
                    batch.execute([warehouse.render(f"DROP TABLE IF EXISTS {name}")], {})
            raise


def analysed_tables(statements: list[str], steps: StepTables, table: str) -> dict[str, str]:
    """{a statement's head: the table it fills (unquoted)} for `Dialect.prepare_build`: the
    enrolled units once the UPDATE has settled their arms, every other step's table as soon
    as it is filled (the units table joins them), and the units table `table`."""
    analysed = {f"UPDATE {steps.ref(ENROLLED)}": steps.name(ENROLLED)}
    for made in _step_tables(statements, steps):
        if made != steps.ref(ENROLLED):
            analysed[f"{steps.create} {made}"] = made.replace('"', "")
    analysed[f"CREATE TABLE {quote_ident(table)}"] = table
    return analysed


def grouped_expressions(config: ExperimentConfig, plan: ExtractPlan) -> list[str]:
    """Expressions later queries group the units table by: the exposure day (per-day cohorts,
    the SRM's diagnosis) and, where quantiles are read by an edge, each quantile metric's
    bucket of its units' extreme values (`metrics.quantile`)."""
    extremes = (
        []
        if plan.stores_histograms
        else [name for name, metric in config.metrics.items() if kind_of(metric).stores_histogram]
    )
    return [EXPOSURE_DAY] + [
        bucket_sql(quote_ident(quantile_extreme_column(name))) for name in extremes
    ]


def build_units_table(warehouse: Warehouse, config: ExperimentConfig, run_date: date) -> str:
    """Build (or rebuild) the run's units table in one transaction; returns its name."""
    table = units_table_name(config, run_date)
    plan = ExtractPlan.for_warehouse(warehouse, config, run_date)
    statements, params = build_units_sql(config, run_date, table, plan)
    # Where the engine needs it (PostgreSQL: planner statistics), steps around the build.
    steps = plan.steps
    analysed = analysed_tables(statements, steps, table)
    grouped = grouped_expressions(config, plan)
    statements = warehouse.sql_dialect.prepare_build(statements, analysed, table, grouped)
    if _sql_metrics(config):
        _execute_with_sql_metrics(warehouse, config, statements, params, table, steps)
    else:
        warehouse.execute(statements, params)
    return table
