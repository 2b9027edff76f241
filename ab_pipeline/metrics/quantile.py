"""Quantile: a quantile of `value` over all matching events of enrolled units (e.g. p95
latency). The extract counts each unit's events with a value (N_i of the clustered variance)
and stores a histogram of their values (or, where the engine reads quantiles by an edge, each
unit's extreme value); the analysis reads exact order statistics through it
(`quantile_summaries`, below). Compared by the Deng-Knoblich-Lu clustered
interval; said in the metric's own unit."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, ClassVar

from ab_pipeline.core.config import QuantileMetric
from ab_pipeline.core.formatting import fmt_count, fmt_num
from ab_pipeline.metrics.base import (
    MetricKind,
    SqlParams,
    before_window_end,
    quantile_count_column,
    quantile_extreme_column,
)
from ab_pipeline.stats.quantiles import (
    Bucket,
    Histogram,
    cont_ranks,
    disc_rank,
    histograms,
    order_statistics,
    stored_histograms,
    value_histograms,
)
from ab_pipeline.stats.statistics import (
    Comparison,
    QuantileClusterSums,
    QuantileSummary,
    clustered_quantile_bracket,
    compare_quantiles,
)
from ab_pipeline.warehouse import Warehouse, quote_ident
from ab_pipeline.warehouse.dialects import dialect_named
from ab_pipeline.warehouse.run_tables import (
    RunWindow,
    quantile_histogram_table_name,
    scratch_table_name,
)
from ab_pipeline.warehouse.sources import source_relation

if TYPE_CHECKING:
    from ab_pipeline.core.config import ExperimentConfig


class QuantileKind(MetricKind[QuantileMetric]):
    name = "quantile"
    config_type = QuantileMetric
    column_order: ClassVar[int] = 2
    stores_histogram: ClassVar[bool] = True

    # ---- extract ----------------------------------------------------------------------------

    def events(self, metric: QuantileMetric) -> list[str]:
        return [metric.event]

    def event_fields(self, metric: QuantileMetric) -> dict[str, str]:
        return {"event": metric.event}

    def pass_aggregates(self, name: str, metric: QuantileMetric, params: SqlParams) -> str:
        """Per unit: the metric's events with a value (N_i of the clustered variance)."""
        window = before_window_end(metric.window)
        match = f"ev.event_name = {params.bind(metric.event)} AND ev.value IS NOT NULL{window}"
        column = quote_ident(quantile_count_column(name))
        return f",\n      SUM(CASE WHEN {match} THEN 1 ELSE 0 END) AS {column}"

    def unit_columns(self, name: str, metric: QuantileMetric, alias: str) -> str:
        column = quote_ident(quantile_count_column(name))
        return f",\n  COALESCE({alias}.{column}, 0) AS {column}"

    # ---- analysis ---------------------------------------------------------------------------

    def read_per_arm(
        self,
        warehouse: Warehouse,
        config: ExperimentConfig,
        name: str,
        metric: QuantileMetric,
        units_table: str,
        run_date: date,
    ) -> dict[str, QuantileSummary]:
        return quantile_summaries(warehouse, config, name, metric, units_table, run_date)

    def arm_entry(self, summary: QuantileSummary) -> dict[str, Any]:
        return {"events": summary.n, "value": summary.estimate}

    def compare(
        self, control: QuantileSummary, treated: QuantileSummary, alpha: float
    ) -> Comparison:
        return compare_quantiles(control, treated, alpha)

    # ---- text -------------------------------------------------------------------------------

    def plain_sentence(
        self, treated: Mapping[str, Any], control: Mapping[str, Any], units: str
    ) -> str:
        return (
            f"{fmt_num(treated['value'])} over {fmt_count(treated['events'])} events vs "
            f"{fmt_num(control['value'])} over {fmt_count(control['events'])} events"
        )

    # ---- simulation -------------------------------------------------------------------------

    def simulated_event(self, metric: QuantileMetric) -> str | None:
        return metric.event

    def needs_values(self, metric: QuantileMetric) -> bool:
        return True

    def expected_value(
        self, metric: QuantileMetric, count: float, any_event: float, value: Any, arm: str
    ) -> float:
        return float(value.quantile(arm, metric.quantile))


def quantile_events_sql(
    config: ExperimentConfig,
    metric: QuantileMetric,
    units_table: str,
    run_date: date,
    values: str | None = None,
    dialect: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """FROM-clause body: the quantile metric's event values of enrolled units, with their arm.

    `values`, a predicate on `{v}` (the value), narrows the body to a few events (a bucket
    range, the tail above a quantile). Those events are read once into a materialized CTE, so
    the join builds its hash table from them and streams the units table past it: the
    optimizer cannot know how selective a bound range is and would otherwise hash every
    enrolled unit. (Cutting the units to those with such an event first, by a semi-join, read
    the events twice and was slower: docs/benchmarks.md, "Narrow quantile passes".) Not where
    the dialect does not `narrows_in_cte` (PostgreSQL, whose parallel workers hash the units
    faster than its leader alone reads such a CTE).
    """
    window = before_window_end(metric.window, event="e", unit="u")
    events = source_relation(config.source, "events", dialect)
    if values:
        narrow = (
            f"SELECT unit_id, event_name, occurred_at, value FROM {events} AS s "
            f"WHERE event_name = :event AND value IS NOT NULL AND {values.format(v='value')}"
        )
        in_cte = dialect is None or dialect_named(dialect).narrows_in_cte
        events = (
            f"(WITH narrow AS MATERIALIZED ({narrow}) SELECT * FROM narrow)"
            if in_cte
            else f"({narrow})"
        )
    sql = f"""
FROM {events} e
JOIN {quote_ident(units_table)} u ON u.unit_id = e.unit_id
WHERE e.event_name = :event AND e.value IS NOT NULL
  AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < :run_end{window}
"""
    return sql, {"event": metric.event, "run_end": RunWindow.of(config, run_date).run_end}


def bracket_margin(n: int) -> int:
    """Ranks read on either side of the estimate's: a 95% bracket spans about
    2 sqrt(n q (1 - q) deff) ranks; 4 sqrt(n) covers design effects up to ~16 at q = 0.5."""
    return 4 * math.isqrt(n) + 16


# How far past the pooled quantile a guessed edge lies, as a share of the values, beyond the
# ranks read around the estimate: room for an arm's quantile to differ from the pooled one (a
# treatment moving a p95 down to the pooled p93 is still read from the side).
EDGE_SPREAD = 0.02


def guessed_edge(
    warehouse: Warehouse, config: ExperimentConfig, metric: QuantileMetric, run_date: date
) -> float | None:
    """Where the side of a quantile's values that its reading needs probably begins for every
    arm (q >= 0.5: a value below each arm's estimate and the ranks read around it; q < 0.5:
    above), from one scan of the metric event's values in the experiment's period (no join:
    every unit's rows, exposed or not): the pooled values' quantile at q -/+ (`EDGE_SPREAD` +
    the reading's margin as a share of the smallest arm). None when the event has no values."""
    window = RunWindow.of(config, run_date)
    pooled = value_histograms(
        warehouse,
        source_relation(config.source, "events", warehouse.dialect),
        "event_name = :event AND occurred_at >= :start AND occurred_at < :run_end",
        {"event": metric.event, "start": window.start, "run_end": window.run_end},
    ).get(metric.event)
    if pooled is None:
        return None
    per_arm = max(1, round(pooled.n * min(config.arms.values()) / sum(config.arms.values())))
    spread = EDGE_SPREAD + bracket_margin(per_arm) / per_arm
    if metric.quantile >= 0.5:
        rank = max(1, math.floor((metric.quantile - spread) * pooled.n))
        return pooled.span(rank, rank).low
    rank = min(pooled.n, math.ceil((metric.quantile + spread) * pooled.n) + 1)
    return pooled.span(rank, rank).high


@dataclass(frozen=True)
class _Analysed:
    """One quantile metric of one readout: where its events are and how they are read."""

    warehouse: Warehouse
    config: ExperimentConfig
    name: str
    metric: QuantileMetric
    units_table: str
    run_date: date

    def events(self, values: str | None = None) -> tuple[str, dict[str, Any]]:
        return quantile_events_sql(
            self.config,
            self.metric,
            self.units_table,
            self.run_date,
            values,
            self.warehouse.dialect,
        )

    def narrowed(self, values: str) -> str:
        return self.events(values)[0]

    def full_histograms(self) -> dict[str, Histogram]:
        """Per arm with two values or more, the histogram of its values, in a pass of its own."""
        return _with_two_values(histograms(self.warehouse, *self.events()))


def _with_two_values(hists: Mapping[str, Histogram]) -> dict[str, Histogram]:
    """The arms a quantile is analysed for: those with two values or more."""
    return {arm: h for arm, h in hists.items() if h.n >= 2}


def _side_table_name(units_table: str, count_column: str) -> str:
    """The quoted scratch table a quantile's reading joins its rows into, beside the units
    table (one per metric: named after the metric's count column)."""
    digest = hashlib.sha1(count_column.encode()).hexdigest()[:6]
    return quote_ident(scratch_table_name(units_table, f"ab_qside_{digest}"))


def _unit_sums(
    warehouse: Warehouse, units_table: str, count_column: str
) -> dict[str, tuple[int, int, int]]:
    """Per arm, over its units with a value: (units, sum N_i, sum N_i^2)."""
    column = quote_ident(count_column)
    rows = warehouse.query(
        f"""SELECT arm, COUNT(*) AS units, SUM({column}) AS sn, SUM({column} * {column}) AS snn
            FROM {quote_ident(units_table)} WHERE {column} > 0 GROUP BY arm"""
    )
    return {str(r["arm"]): (int(r["units"]), int(r["sn"]), int(r["snn"])) for r in rows}


def quantile_summaries(
    warehouse: Warehouse,
    config: ExperimentConfig,
    name: str,
    metric: QuantileMetric,
    units_table: str,
    run_date: date,
) -> dict[str, QuantileSummary]:
    """Per arm: event count, the sample quantile and the order statistics bracketing it.

    Exact `percentile_cont` / `percentile_disc` values, read through a bucket histogram (stored
    by the extract's pass; `ab_pipeline.stats.quantiles`) so memory stays bounded: one narrow
    pass reads the estimate's order statistics and the clustered variance's sums together
    (`quantile_reading`); a second one only for a bracket outside the ranks it read. Where the
    engine stores no histogram (`Dialect.quantiles_by_edge`), the side of the values the
    reading needs stands in for it (`_from_the_side`), and a full histogram is read only when
    a guess about that side missed.
    """
    analysed = _Analysed(warehouse, config, name, metric, units_table, run_date)
    stored = quantile_histogram_table_name(config, run_date)
    if warehouse.table_exists(stored):
        return _summaries(analysed, _with_two_values(stored_histograms(warehouse, stored, name)))
    if warehouse.sql_dialect.quantiles_by_edge:
        summaries = _from_the_side(analysed)
        if summaries is not None:
            return summaries
    # A units table built before histograms were stored, or a guessed edge that missed.
    return _summaries(analysed, analysed.full_histograms())


def _from_the_side(analysed: _Analysed) -> dict[str, QuantileSummary] | None:
    """The summaries without a stored histogram. The metric's values from an edge outwards
    (`_sure_edge`, else `guessed_edge`), joined once into a scratch table, give per arm a
    histogram of those values; the arm's other values (its units' N_i summed, less those rows)
    are one bucket of unknown range below them (q >= 0.5; above them for q < 0.5). The reading
    then runs on that histogram and table as on a stored one. None when a guessed edge missed
    an arm's estimate (the caller reads a full histogram)."""
    warehouse, metric = analysed.warehouse, analysed.metric
    count_column = quantile_count_column(analysed.name)
    sums = _unit_sums(warehouse, analysed.units_table, count_column)
    totals = {arm: sn for arm, (_, sn, _) in sums.items()}
    if all(n < 2 for n in totals.values()):
        return {}
    edge = _sure_edge(analysed, totals)
    if edge is None:
        edge = guessed_edge(warehouse, analysed.config, metric, analysed.run_date)
    if edge is None:  # not reached: an arm with values has events in the period
        return None
    above = metric.quantile >= 0.5
    table = _side_table_name(analysed.units_table, count_column)
    beyond = ">=" if above else "<="
    # A unit whose extreme value falls short of the edge has no value beyond it: left out
    # before the join (1.0 -> 0.85 s on PostgreSQL at 1 M units: docs/benchmarks.md).
    extreme = quote_ident(quantile_extreme_column(analysed.name))
    side = analysed.narrowed(f"{{v}} {beyond} :qedge") + f"  AND u.{extreme} {beyond} :qedge\n"
    create = (
        f"{warehouse.sql_dialect.scratch_table} {table} AS "
        f"SELECT u.arm AS arm, u.unit_id AS unit_id, "
        f"u.{quote_ident(count_column)} AS n_i, e.value AS v {side}"
    )
    warehouse.execute(
        [f"DROP TABLE IF EXISTS {table}", create], analysed.events()[1] | {"qedge": edge}
    )
    try:
        read = value_histograms(warehouse, table, "TRUE", {}, group="arm", value="v")
        hists = {}
        for arm, n in totals.items():
            buckets = read[arm].buckets if arm in read else ()
            rest = (Bucket(n - sum(b.count for b in buckets), math.nan, math.nan),)
            hists[arm] = Histogram(rest + buckets if above else buckets + rest)
        hists = _with_two_values(hists)
        if not _estimates_known(hists, metric.quantile):
            return None
        return _summaries(analysed, hists, table, sums)
    finally:
        warehouse.execute(f"DROP TABLE IF EXISTS {table}")


def _sure_edge(analysed: _Analysed, totals: Mapping[str, int]) -> float | None:
    """An edge sure to leave every arm's estimate and the ranks read around it on the side,
    from the units' extreme values (`quantile_extreme_column`, the extract's): a unit whose
    largest value is at least t has an event at least t, so per arm, the largest t that as
    many units reach as the arm needs ranks from the top (q >= 0.5; for q < 0.5 the smallest
    values, from the bottom); the least extreme of the arms' edges. None when an arm needs
    more ranks than it has units with a value (many events per unit, a quantile near the
    middle): then the edge is guessed."""
    above = analysed.metric.quantile >= 0.5
    column = quote_ident(quantile_extreme_column(analysed.name))
    extremes = value_histograms(
        analysed.warehouse,
        quote_ident(analysed.units_table),
        "TRUE",
        {},
        group="arm",
        value=column,
    )
    edges = []
    for arm, n in totals.items():
        if n < 2:
            continue
        below, beyond, _ = cont_ranks(analysed.metric.quantile, n)
        margin = bracket_margin(n)
        needed = n - max(1, below - margin) + 1 if above else min(n, beyond + margin)
        buckets = extremes[arm].buckets if arm in extremes else ()
        reached = 0
        for bucket in reversed(buckets) if above else buckets:
            reached += bucket.count
            if reached >= needed:
                edges.append(bucket.low if above else bucket.high)
                break
        else:
            return None
    return min(edges) if above else max(edges)


def _summaries(
    analysed: _Analysed,
    hists: dict[str, Histogram],
    side_table: str | None = None,
    sums: dict[str, tuple[int, int, int]] | None = None,
) -> dict[str, QuantileSummary]:
    """The summaries from per-arm histograms (arms with two values or more): the reading, then
    the interval's order statistics it did not read. `side_table`, `sums`: the reading's
    scratch table and `_unit_sums`, where the caller has them already."""
    warehouse, metric = analysed.warehouse, analysed.metric
    params = analysed.events()[1]
    values, estimates, clusters = quantile_reading(
        warehouse,
        analysed.narrowed,
        params,
        hists,
        metric.quantile,
        analysed.units_table,
        quantile_count_column(analysed.name),
        side_table,
        sums,
    )
    alpha = analysed.config.decision.alpha
    brackets = {
        arm: clustered_quantile_bracket(metric.quantile, clusters[arm], alpha) for arm in hists
    }
    ranks = {
        arm: (disc_rank(brackets[arm][0], h.n), disc_rank(brackets[arm][1], h.n))
        for arm, h in hists.items()
    }
    outside = {a: set(r) - set(values[a]) for a, r in ranks.items() if set(r) - set(values[a])}
    if any(not hists[arm].known(rank) for arm, more in outside.items() for rank in more):
        hists = analysed.full_histograms()  # an interval reaches past the side read
    if outside:
        narrowed = analysed.narrowed
        for arm, more in order_statistics(warehouse, narrowed, params, hists, outside).items():
            values[arm].update(more)
    return {
        arm: QuantileSummary(
            n=h.n,
            estimate=estimates[arm],
            lower=values[arm][ranks[arm][0]],
            upper=values[arm][ranks[arm][1]],
            z=brackets[arm][2],
        )
        for arm, h in hists.items()
    }


def _estimates_known(hists: Mapping[str, Histogram], q: float) -> bool:
    """Whether every arm's `percentile_cont` ranks lie where the histogram knows the values
    (always, but where a guessed edge left them out of the side read: `_from_the_side`)."""
    return all(h.known(rank) for h in hists.values() for rank in cont_ranks(q, h.n)[:2])


def quantile_reading(
    warehouse: Warehouse,
    narrowed: Callable[[str], str],
    params: dict[str, Any],
    hists: dict[str, Histogram],
    q: float,
    units_table: str,
    count_column: str,
    side_table: str | None = None,
    per_arm: dict[str, tuple[int, int, int]] | None = None,
) -> tuple[dict[str, dict[int, float]], dict[str, float], dict[str, QuantileClusterSums]]:
    """Per arm: the order statistics within `bracket_margin` ranks of the sample quantile x_q
    (the bracket's ranks usually lie there), x_q itself (`percentile_cont`), and the sums of
    the Deng-Knoblich-Lu variance around it; in one narrow pass where the engine evaluates a
    `MATERIALIZED` CTE once, else in two.

    The variance needs, per unit, N_i (its events: a column of the units table, counted by
    the extract) and I_i (its events <= x_q). Only the smaller side of x_q is read: J_i = events
    above x_q when q >= 0.5 (then I_i = N_i - J_i), else J_i = I_i itself. That side, from the
    value range holding x_q's ranks outwards, is the pass's rows: numbered in value order
    within the range they give the order statistics, and counted per unit against x_q they
    give J_i. In one pass, SQL computes x_q from the two order statistics around it with the
    same arithmetic as here; an engine that would read the shared rows again at each reference
    (Spark, BigQuery) gets the order statistics first and x_q as a bound value in a second
    pass. Where such an engine keeps step tables as tables of the schema (Spark), the rows
    are joined once, into a scratch table both passes read. A p95 reads ~5% of the events
    past the scan. `side_table`: such a table written beforehand (its rows a superset of the
    side), which both passes read and the caller drops; `per_arm`: the units table's
    `_unit_sums`, when the caller read them already.
    """
    if not hists:
        return {}, {}, {}
    reading = _QuantileReading(hists, q, params, count_column)
    dialect = warehouse.sql_dialect
    if dialect.materialized and side_table is None:
        values, side_sums = reading.rows_read(warehouse.query(*reading.one_pass(narrowed)))
        estimates = reading.estimates(values)
    else:
        table = side_table
        if table is None and dialect.shared_step_tables:
            table = _side_table_name(units_table, count_column)
            create = f"{dialect.scratch_table} {table} AS {reading.side(narrowed)}"
            warehouse.execute([f"DROP TABLE IF EXISTS {table}", create], reading.bound)
        try:
            ranks_sql = reading.ranks_pass(narrowed, table)
            values, _ = reading.rows_read(warehouse.query(*ranks_sql))
            estimates = reading.estimates(values)
            sums_sql = reading.sums_pass(narrowed, estimates, table)
            _, side_sums = reading.rows_read(warehouse.query(*sums_sql))
        finally:
            if table and side_table is None:
                warehouse.execute(f"DROP TABLE IF EXISTS {table}")
    if per_arm is None:
        per_arm = _unit_sums(warehouse, units_table, count_column)
    sums = {}
    above = reading.above
    for arm, (n, sn, snn) in per_arm.items():
        if arm not in hists:
            continue
        sj, sjj, sjn = side_sums.get(arm, (0, 0, 0))
        si, sii, sin = (sn - sj, snn - 2 * sjn + sjj, snn - sjn) if above else (sj, sjj, sjn)
        sums[arm] = QuantileClusterSums(
            units=n,
            events=float(sn),
            below=float(si),
            events_sq=float(snn),
            below_sq=float(sii),
            cross=float(sin),
        )
    return values, estimates, sums


class _QuantileReading:
    """The SQL of `quantile_reading` for one metric's arms: per arm (`qa<i>`), the value range
    [`ql<i>`, `qh<i>`] holding the ranks read, its numbers `qs<i>`..`qe<i>` (rank minus the
    values before the range), x_q's two numbers `qb<i>`, `qc<i>` and the fraction between."""

    def __init__(
        self, hists: dict[str, Histogram], q: float, params: dict[str, Any], count_column: str
    ) -> None:
        self.above = q >= 0.5
        self.counted = ">" if self.above else "<="  # J_i: events on this side of x_q
        self.column = quote_ident(count_column)
        self.bound: dict[str, Any] = dict(params)
        self.spans, self.cont = {}, {}
        for i, (arm, hist) in enumerate(hists.items()):
            cont = self.cont[arm] = cont_ranks(q, hist.n)
            margin = bracket_margin(hist.n)
            span = self.spans[arm] = hist.span(cont[0] - margin, cont[1] + margin)
            self.bound |= {f"qa{i}": arm, f"ql{i}": span.low, f"qh{i}": span.high}
            self.bound |= {f"qs{i}": span.first - span.before, f"qe{i}": span.last - span.before}
            self.bound |= {f"qb{i}": cont[0] - span.before, f"qc{i}": cont[1] - span.before}
            self.bound[f"qf{i}"] = cont[2]
        if self.above:
            self.bound["qedge"] = min(span.low for span in self.spans.values())
        else:
            self.bound["qedge"] = max(span.high for span in self.spans.values())

    def _each_arm(self, template: str, joiner: str = " OR ") -> str:
        return joiner.join(template.format(i=i) for i in range(len(self.spans)))

    def side(
        self, narrowed: Callable[[str], str], span_only: bool = False, table: str | None = None
    ) -> str:
        """The rows read: each arm's values from its range outwards on the smaller side of
        x_q (or only those inside the range), with the unit and its N_i; from `table` when
        they were written there."""
        if table:
            where = f" WHERE {self._in_span()}" if span_only else ""
            return f"SELECT arm, unit_id, n_i, v FROM {table}{where}"
        if span_only:
            per_arm = self._in_span()
        else:
            per_arm = self._each_arm(
                f"(arm = :qa{{i}} AND v {'>= :ql' if self.above else '<= :qh'}{{i}})"
            )
        edge = "{v} " + (">=" if self.above else "<=") + " :qedge"
        return f"""SELECT arm, unit_id, n_i, v FROM (
                SELECT u.arm AS arm, u.unit_id AS unit_id, u.{self.column} AS n_i, e.value AS v
                {narrowed(edge)}
              ) s WHERE {per_arm}"""

    _RANKED = """SELECT arm, v, ROW_NUMBER() OVER (PARTITION BY arm ORDER BY v) AS rn
              FROM side WHERE {in_span}"""
    # Only units with J_i > 0 add to the sums: the rows on x_q's far side are grouped, not
    # every row read (a side read from a lower edge holds more).
    _PER_UNIT = """SELECT s.arm AS arm, s.unit_id AS unit_id, MAX(s.n_i) AS n_i, COUNT(*) AS j_i
              FROM side s{join}
              WHERE s.v {side} {x_q}
              GROUP BY s.arm, s.unit_id"""
    _SUMS = """SELECT arm, 0 AS rn, CAST(NULL AS DOUBLE PRECISION) AS v,
                   SUM(j_i) AS sj, SUM(j_i * j_i) AS sjj, SUM(j_i * n_i) AS sjn
            FROM per_unit GROUP BY arm"""

    def _in_span(self) -> str:
        return self._each_arm("(arm = :qa{i} AND v >= :ql{i} AND v <= :qh{i})")

    def _ranked(self) -> str:
        return self._RANKED.format(in_span=self._in_span())

    def _wanted_rows(self) -> str:
        return self._each_arm("(arm = :qa{i} AND rn BETWEEN :qs{i} AND :qe{i})")

    def one_pass(self, narrowed: Callable[[str], str]) -> tuple[str, dict[str, Any]]:
        """Order statistics, x_q and the sums, from rows read once."""
        wanted = self._each_arm(
            "SELECT CAST(:qa{i} AS TEXT) AS arm, CAST(:qb{i} AS BIGINT) AS below,"
            " CAST(:qc{i} AS BIGINT) AS above, CAST(:qf{i} AS DOUBLE PRECISION) AS fraction",
            " UNION ALL ",
        )
        per_unit = self._PER_UNIT.format(
            side=self.counted,
            x_q="x.low_v + x.fraction * (x.high_v - x.low_v)",
            join=" JOIN estimate x ON x.arm = s.arm",
        )
        sql = f"""WITH side AS MATERIALIZED (
              {self.side(narrowed)}
            ),
            ranked AS ({self._ranked()}),
            wanted AS ({wanted}),
            estimate AS (
              SELECT r.arm AS arm, MIN(CASE WHEN r.rn = w.below THEN r.v END) AS low_v,
                     MIN(CASE WHEN r.rn = w.above THEN r.v END) AS high_v,
                     MIN(w.fraction) AS fraction
              FROM ranked r JOIN wanted w ON w.arm = r.arm
              WHERE r.rn = w.below OR r.rn = w.above
              GROUP BY r.arm
            ),
            per_unit AS ({per_unit})
            {self._SUMS}
            UNION ALL
            SELECT arm, rn, v, NULL, NULL, NULL FROM ranked WHERE {self._wanted_rows()}"""
        return sql, self.bound

    def ranks_pass(
        self, narrowed: Callable[[str], str], table: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """The order statistics alone, from the values inside each arm's range."""
        sql = f"""WITH side AS ({self.side(narrowed, span_only=True, table=table)}),
            ranked AS ({self._ranked()})
            SELECT arm, rn, v FROM ranked WHERE {self._wanted_rows()}"""
        return sql, self.bound

    def sums_pass(
        self,
        narrowed: Callable[[str], str],
        estimates: dict[str, float],
        table: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """The sums, counted against x_q as bound values."""
        bound = self.bound | {f"qx{i}": estimates[arm] for i, arm in enumerate(self.spans)}
        x_q = f"CASE s.arm {self._each_arm('WHEN :qa{i} THEN :qx{i}', ' ')} END"
        per_unit = self._PER_UNIT.format(side=self.counted, x_q=x_q, join="")
        return (
            f"WITH side AS ({self.side(narrowed, table=table)}), per_unit AS ({per_unit})\n"
            + self._SUMS,
            bound,
        )

    def rows_read(
        self, rows: list[dict[str, Any]]
    ) -> tuple[dict[str, dict[int, float]], dict[str, tuple[int, int, int]]]:
        """{arm: {rank: value}} and {arm: (sum J, sum J^2, sum J N)} from a pass's rows (`rn`
        0: an arm's sums)."""
        values: dict[str, dict[int, float]] = {arm: {} for arm in self.spans}
        sums: dict[str, tuple[int, int, int]] = {}
        for row in rows:
            arm, number = str(row["arm"]), int(row["rn"])
            if number == 0:
                sums[arm] = (int(row["sj"]), int(row["sjj"]), int(row["sjn"]))
            else:
                values[arm][self.spans[arm].before + number] = float(row["v"])
        return values, sums

    def estimates(self, values: dict[str, dict[int, float]]) -> dict[str, float]:
        """x_q per arm (`percentile_cont`): low + fraction * (high - low)."""
        estimates = {}
        for arm, (below, above, fraction) in self.cont.items():
            low, high = values[arm][below], values[arm][above]
            estimates[arm] = low + fraction * (high - low)
        return estimates
