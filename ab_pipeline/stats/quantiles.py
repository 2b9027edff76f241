"""Exact sample quantiles of a metric's events, per arm, in bounded memory.

`percentile_cont` / `percentile_disc` over raw events are holistic aggregates: the engine keeps
every value of a group in memory to sort it, and DuckDB cannot spill them (at 10M units, ~70M
latency events, it runs out of memory). The same order statistics come from two cheap steps:

1. one pass over the events: per arm, a histogram over order-preserving logarithmic buckets
   (count, smallest and largest value per bucket); at most a few thousand groups per arm. The
   extract computes it in its own pass and stores it (`stored_histograms`); `histograms`
   computes it alone;
2. the buckets that hold the wanted ranks, read from the cumulative counts; then one narrow
   pass reads only the values inside those buckets (a value range the engine applies while
   scanning, before the join) and numbers them.

The result is the order statistic itself, not an approximation: the tests compare it with
`percentile_cont`, `percentile_disc` and numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ab_pipeline.warehouse import Warehouse, quote_ident

BUCKETS_PER_NEPER = 256  # buckets per unit of ln(1 + |value|): ~0.4% wide for large values


def bucket_sql(column: str) -> str:
    """An order-preserving bucket index: value <= value' implies bucket <= bucket'."""
    return f"SIGN({column}) * FLOOR(LN(1 + ABS({column})) * {BUCKETS_PER_NEPER})"


@dataclass(frozen=True)
class Bucket:
    """`count` values, the smallest `low` and the largest `high`; NaN bounds: values whose range
    was not read (`metrics.quantile` counts the values beyond the side it read so)."""

    count: int
    low: float
    high: float

    @property
    def known(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))


@dataclass(frozen=True)
class RankSpan:
    """Ranks `first`..`last` (1-based, inclusive) of an arm's values and where they lie: every
    value in [`low`, `high`] belongs to the buckets holding them, and `before` values of the
    arm are smaller than `low` (the rank of a value in the range is `before` + its number
    among the range's values in value order)."""

    first: int
    last: int
    low: float
    high: float
    before: int


@dataclass(frozen=True)
class Histogram:
    """One arm's buckets in value order."""

    buckets: tuple[Bucket, ...]

    @property
    def n(self) -> int:
        return sum(b.count for b in self.buckets)

    def locate(self, rank: int) -> tuple[int, int]:
        """(index of the bucket holding the 1-based `rank`, values in the buckets before it)."""
        if not 1 <= rank <= self.n:
            raise ValueError(f"rank {rank} outside 1..{self.n}")
        before = 0
        for index, bucket in enumerate(self.buckets):
            if rank <= before + bucket.count:
                return index, before
            before += bucket.count
        raise AssertionError("unreachable: rank checked against n")

    def known(self, rank: int) -> bool:
        """Whether the bucket holding `rank` has a recorded value range (its values can be read)."""
        return self.buckets[self.locate(rank)[0]].known

    def span(self, first: int, last: int) -> RankSpan:
        """The value range of the buckets holding ranks `first`..`last`, clipped to 1..n and to
        the ranks of buckets with a known range (`first`, `last` themselves must be in one)."""
        before, lowest, highest = 0, self.n + 1, 0
        for bucket in self.buckets:
            if bucket.known and bucket.count:
                lowest, highest = min(lowest, before + 1), before + bucket.count
            before += bucket.count
        first, last = max(1, lowest, first), min(self.n, highest, last)
        (start, before), (end, _) = self.locate(first), self.locate(last)
        return RankSpan(first, last, self.buckets[start].low, self.buckets[end].high, before)


def cont_ranks(q: float, n: int) -> tuple[int, int, float]:
    """`percentile_cont(q)`: 1-based ranks around position (n - 1) q, and the fraction between."""
    position = (n - 1) * q
    below = math.floor(position)
    return below + 1, math.ceil(position) + 1, position - below


def disc_rank(p: float, n: int) -> int:
    """`percentile_disc(p)`: the first value whose cumulative share reaches p."""
    return min(max(1, math.ceil(p * n)), n)


def histogram_sql(body: str) -> str:
    """Per arm and bucket of `e.value` over `body` (a FROM clause joining the units table as
    `u`): `arm, bucket, n, low, high`."""
    bucket = bucket_sql("e.value")
    return f"""SELECT u.arm AS arm, {bucket} AS bucket, COUNT(*) AS n,
                   MIN(e.value) AS low, MAX(e.value) AS high
            {body} GROUP BY u.arm, {bucket}"""


def histograms(warehouse: Warehouse, body: str, params: dict[str, Any]) -> dict[str, Histogram]:
    """Per arm, the bucket histogram of `e.value` over `body`, in one pass."""
    return _by_arm(warehouse.query(f"{histogram_sql(body)} ORDER BY 1, 2", params))


def value_histograms(
    warehouse: Warehouse,
    relation: str,
    where: str,
    params: dict[str, Any],
    group: str = "event_name",
    value: str = "value",
) -> dict[str, Histogram]:
    """Per `group` (an event's name, an arm), the bucket histogram of the column `value` over
    the rows of `relation` (aliased `s`) matching `where`: one scan, no join."""
    bucket = bucket_sql(value)
    rows = warehouse.query(
        f"""SELECT {group} AS arm, {bucket} AS bucket, COUNT(*) AS n,
                   MIN({value}) AS low, MAX({value}) AS high
            FROM {relation} AS s WHERE {where} AND {value} IS NOT NULL
            GROUP BY {group}, {bucket} ORDER BY 1, 2""",
        params,
    )
    return _by_arm(rows)


def stored_histograms(warehouse: Warehouse, table: str, metric: str) -> dict[str, Histogram]:
    """Per arm, the metric's histogram as the extract stored it (`arm, bucket, n, low, high`
    rows of `table`, computed in the extract's pass over the joined events)."""
    rows = warehouse.query(
        f"""SELECT arm, bucket, n, low, high FROM {quote_ident(table)}
            WHERE metric = :metric ORDER BY arm, bucket""",
        {"metric": metric},
    )
    return _by_arm(rows)


def _by_arm(rows: list[dict[str, Any]]) -> dict[str, Histogram]:
    grouped: dict[str, list[Bucket]] = {}
    for row in rows:
        grouped.setdefault(str(row["arm"]), []).append(
            Bucket(int(row["n"]), float(row["low"]), float(row["high"]))
        )
    return {arm: Histogram(tuple(buckets)) for arm, buckets in grouped.items()}


def order_statistics(
    warehouse: Warehouse,
    narrowed: Callable[[str], str],
    params: dict[str, Any],
    hists: dict[str, Histogram],
    ranks: dict[str, set[int]],
) -> dict[str, dict[int, float]]:
    """The values at the given 1-based ranks, per arm, in one narrow pass.

    A rank in a bucket whose values are all equal needs no reading. Otherwise the arm's values
    in the contiguous bucket range holding its ranks are numbered in value order; only that
    range is read (`low <= value <= high`: buckets preserve order, so the range holds exactly
    those buckets' values). `narrowed(predicate)` is the events body restricted to values
    satisfying a predicate on `{v}`. (The ranks around a quantile's estimate, with its
    variance's sums, come from `metrics.quantile.quantile_reading`; this reads what that pass
    did not.)
    """
    found: dict[str, dict[int, float]] = {arm: {} for arm in ranks}
    ranges: list[tuple[str, float, float, int, set[int]]] = []
    for arm, wanted in ranks.items():
        hist = hists[arm]
        to_read = []
        for rank in sorted(wanted):
            index, _ = hist.locate(rank)
            bucket = hist.buckets[index]
            if not bucket.known:
                raise ValueError(f"rank {rank} of arm {arm} lies where no value range is known")
            if bucket.low == bucket.high:
                found[arm][rank] = bucket.low
            else:
                to_read.append((rank, index))
        if to_read:
            first, last = to_read[0][1], to_read[-1][1]
            before = sum(b.count for b in hist.buckets[:first])
            low, high = hist.buckets[first].low, hist.buckets[last].high
            ranges.append((arm, low, high, before, {rank - before for rank, _ in to_read}))
    if ranges:
        _read_ranks(warehouse, narrowed, params, ranges, found)
    for arm, wanted in ranks.items():
        missing = wanted - set(found[arm])
        if missing:
            raise RuntimeError(f"order statistics {sorted(missing)} of arm {arm} not read")
    return found


def _read_ranks(
    warehouse: Warehouse,
    narrowed: Callable[[str], str],
    params: dict[str, Any],
    ranges: list[tuple[str, float, float, int, set[int]]],
    found: dict[str, dict[int, float]],
) -> None:
    """One pass: per arm, its values in [low, high] numbered in value order; the wanted
    numbers are stored at rank `before + number`."""
    bound = dict(params)
    in_range, wanted_rows = [], []
    for i, (arm, low, high, _, numbers) in enumerate(ranges):
        bound |= {f"oa{i}": arm, f"ol{i}": low, f"oh{i}": high}
        in_range.append(f"(u.arm = :oa{i} AND e.value >= :ol{i} AND e.value <= :oh{i})")
        names = []
        for j, number in enumerate(sorted(numbers)):
            bound[f"or{i}_{j}"] = number
            names.append(f":or{i}_{j}")
        wanted_rows.append(f"(arm = :oa{i} AND rn IN ({', '.join(names)}))")
    bound |= {"olow": min(r[1] for r in ranges), "ohigh": max(r[2] for r in ranges)}
    body = narrowed("{v} >= :olow AND {v} <= :ohigh")
    rows = warehouse.query(
        f"""SELECT arm, rn, v FROM (
              SELECT u.arm AS arm, e.value AS v,
                     ROW_NUMBER() OVER (PARTITION BY u.arm ORDER BY e.value) AS rn
              {body} AND ({" OR ".join(in_range)})
            ) s WHERE {" OR ".join(wanted_rows)}""",
        bound,
    )
    before_of = {arm: before for arm, _, _, before, _ in ranges}
    for row in rows:
        arm = str(row["arm"])
        found[arm][before_of[arm] + int(row["rn"])] = float(row["v"])
