"""Exact order statistics through bucket histograms (ab_pipeline/stats/quantiles.py), checked
against
numpy's sort and the engines' own percentile_cont / percentile_disc, on DuckDB and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from ab_pipeline.core.config import QuantileMetric, parse_config
from ab_pipeline.metrics import quantile as quantile_kind
from ab_pipeline.metrics.quantile import quantile_reading, quantile_summaries
from ab_pipeline.readout import analysis
from ab_pipeline.readout.extract import (
    build_units_table,
    quantile_count_column,
    quantile_events_sql,
    quantile_histogram_table_name,
)
from ab_pipeline.stats.quantiles import (
    cont_ranks,
    disc_rank,
    histograms,
    order_statistics,
    stored_histograms,
)
from ab_pipeline.stats.statistics import clustered_quantile_bracket
from ab_pipeline.warehouse import Warehouse
from tests.warehouse_fixtures import (
    create_contract_tables,
    experiment_data,
    insert_rows,
    split_metric_pass,
)

RUN = date(2026, 5, 31)
START = datetime(2026, 5, 4, 9)
BODY = "FROM {s}qv e JOIN {s}qu u ON u.unit_id = e.unit_id WHERE e.value IS NOT NULL"

# How a scratch table is created (PostgreSQL's are UNLOGGED: `Dialect.scratch_table`).
SCRATCH_TABLES = ("CREATE TABLE", "CREATE UNLOGGED TABLE")


def narrowing(body: str) -> Any:
    return lambda values: f"{body} AND {values.format(v='e.value')}"


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse_and_prefix(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Warehouse, str]]:
    if request.param == "duckdb":
        yield request.getfixturevalue("duckdb_warehouse"), ""
    else:
        warehouse, schema = request.getfixturevalue("postgres_schema")
        yield warehouse, f"{schema}."


def awkward_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Heavy tails, negatives, zeros, an atom at 250 and near-duplicates: every bucket shape."""
    parts = [
        rng.lognormal(6.8, 0.9, n // 2),
        -rng.lognormal(1.0, 2.0, n // 8),
        np.zeros(n // 8),
        np.full(n // 8, 250.0),
        250.0 + rng.integers(0, 3, n - n // 2 - 3 * (n // 8)) * 1e-9,
    ]
    return rng.permutation(np.concatenate(parts))


def load_values(warehouse: Warehouse, prefix: str, by_arm: dict[str, np.ndarray]) -> None:
    from sqlalchemy import text

    warehouse.execute(
        [
            f"CREATE TABLE {prefix}qu (unit_id TEXT, arm TEXT)",
            f"CREATE TABLE {prefix}qv (unit_id TEXT, value DOUBLE PRECISION)",
        ]
    )
    units, values = [], []
    for arm, array in by_arm.items():
        for i, value in enumerate(array.tolist()):
            unit = f"{arm}-{i // 3}"  # three events per unit
            if i % 3 == 0:
                units.append({"u": unit, "a": arm})
            values.append({"u": unit, "v": value})
    with warehouse.connect() as connection:
        connection.execute(text(f"INSERT INTO {prefix}qu VALUES (:u, :a)"), units)
        connection.execute(text(f"INSERT INTO {prefix}qv VALUES (:u, :v)"), values)


def test_order_statistics_equal_the_sorted_values_at_any_rank(
    warehouse_and_prefix: tuple[Warehouse, str],
) -> None:
    warehouse, prefix = warehouse_and_prefix
    rng = np.random.default_rng(20261202)
    by_arm = {"control": awkward_values(rng, 3000), "treatment": awkward_values(rng, 2200)}
    by_arm["tiny"] = np.array([5.0, -1.0, 5.0, 2.5])
    load_values(warehouse, prefix, by_arm)
    body = BODY.format(s=prefix)
    hists = histograms(warehouse, body, {})
    assert {arm: h.n for arm, h in hists.items()} == {arm: len(v) for arm, v in by_arm.items()}
    assert len(hists["control"].buckets) < len(by_arm["control"]) / 2  # values were grouped
    ranks: dict[str, set[int]] = {}
    for arm, array in by_arm.items():
        n = len(array)
        picked = {1, n, disc_rank(0.5, n), disc_rank(0.95, n)}
        picked |= {int(r) for r in rng.integers(1, n + 1, 25)}
        ranks[arm] = picked
    found = order_statistics(warehouse, narrowing(body), {}, hists, ranks)
    for arm, array in by_arm.items():
        ordered = np.sort(array)
        assert found[arm] == {rank: float(ordered[rank - 1]) for rank in ranks[arm]}, arm


def test_rank_helpers_reproduce_the_engines_percentile_functions(
    warehouse_and_prefix: tuple[Warehouse, str],
) -> None:
    warehouse, prefix = warehouse_and_prefix
    rng = np.random.default_rng(7)
    array = rng.lognormal(7.0, 0.4, 997)
    load_values(warehouse, prefix, {"control": array})
    body = BODY.format(s=prefix)
    hist = histograms(warehouse, body, {})["control"]
    for p in (0.0, 0.05, 0.5, 0.9497701549647996, 0.95, 1.0):
        [row] = warehouse.query(
            f"SELECT percentile_cont({p!r}) WITHIN GROUP (ORDER BY e.value) AS c, "
            f"percentile_disc({p!r}) WITHIN GROUP (ORDER BY e.value) AS d {body}"
        )
        below, above, fraction = cont_ranks(p, hist.n)
        disc = disc_rank(p, hist.n)
        got = order_statistics(
            warehouse, narrowing(body), {}, {"control": hist}, {"control": {below, above, disc}}
        )
        low, high = got["control"][below], got["control"][above]
        assert low + fraction * (high - low) == pytest.approx(float(row["c"]), rel=1e-12)
        assert low + fraction * (high - low) == pytest.approx(
            float(np.quantile(array, p)), rel=1e-12
        )
        assert got["control"][disc] == float(row["d"])


@pytest.mark.parametrize(
    ("one_pass", "step_tables", "event_joins"),
    [(True, False, 1), (False, False, 2), (False, True, 1)],
    ids=["one pass", "two passes", "two passes over a scratch table"],
)
def test_the_narrow_reading_gives_the_ranks_around_the_estimate_and_the_variance_sums(
    warehouse_and_prefix: tuple[Warehouse, str],
    one_pass: bool,
    step_tables: bool,
    event_joins: int,
    monkeypatch: pytest.MonkeyPatch,
    executed_statements: list[str],
) -> None:
    """On every bucket shape (ties at the quantile included), the reading returns exactly the
    sorted values at the ranks within `bracket_margin` of the estimate, the estimate of
    numpy's quantile, and the per-unit sums counted against that estimate: in one pass (an
    engine that evaluates a MATERIALIZED CTE once), in two (BigQuery, Snowflake), and in two
    that read one scratch table of the joined rows (Spark: step tables are tables)."""
    warehouse, prefix = warehouse_and_prefix
    monkeypatch.setattr(type(warehouse.sql_dialect), "materialized", one_pass)
    monkeypatch.setattr(type(warehouse.sql_dialect), "shared_step_tables", step_tables)
    queries = executed_statements  # the statements run, and (below) the queries
    real_query = Warehouse.query

    def recorded(self: Warehouse, sql: str, *args: Any, **kwargs: Any) -> Any:
        queries.append(sql)
        return real_query(self, sql, *args, **kwargs)

    monkeypatch.setattr(Warehouse, "query", recorded)
    rng = np.random.default_rng(20261203)
    by_arm = {"control": awkward_values(rng, 3000), "treatment": awkward_values(rng, 2200)}
    load_values(warehouse, prefix, by_arm)  # unit i // 3 of each arm holds values i
    warehouse.execute(
        f"CREATE TABLE {prefix}qn AS SELECT u.unit_id, u.arm, COUNT(*) AS n_x "
        f"FROM {prefix}qu u JOIN {prefix}qv e ON e.unit_id = u.unit_id GROUP BY u.unit_id, u.arm"
    )
    body = f"FROM {prefix}qv e JOIN {prefix}qn u ON u.unit_id = e.unit_id WHERE e.value IS NOT NULL"
    hists = histograms(warehouse, body, {})
    for q in (0.95, 0.5, 0.1):
        queries.clear()
        values, estimates, sums = quantile_reading(
            warehouse, narrowing(body), {}, hists, q, f"{prefix}qn", "n_x"
        )
        event_passes = [sql for sql in queries if f"{prefix}qv" in sql]
        assert len(event_passes) == event_joins
        scratch = [sql for sql in queries if "ab_qside_" in sql]
        assert len(scratch) == (5 if step_tables else 0)  # drop, create, two reads, drop
        assert not [t for t in warehouse.table_names(prefix.rstrip(".") or None) if "qside" in t]
        for arm, array in by_arm.items():
            ordered, n = np.sort(array), len(array)
            assert estimates[arm] == pytest.approx(float(np.quantile(array, q)), rel=1e-12)
            below, above, _ = cont_ranks(q, n)
            margin = quantile_kind.bracket_margin(n)
            span = range(max(1, below - margin), min(n, above + margin) + 1)
            assert values[arm] == {rank: float(ordered[rank - 1]) for rank in span}, (arm, q)
            units = [array[i : i + 3] for i in range(0, n, 3)]
            counted = [(len(u), int(np.sum(u <= estimates[arm]))) for u in units]
            got = sums[arm]
            assert (got.units, got.events) == (len(units), n)
            assert got.below == sum(i for _, i in counted), (arm, q)
            assert got.below_sq == sum(i * i for _, i in counted), (arm, q)
            assert got.cross == sum(i * n_i for n_i, i in counted), (arm, q)
            assert got.events_sq == sum(n_i * n_i for n_i, _ in counted)


def clustered_config(quantile: float, prefix: str) -> Any:
    latency = {"type": "quantile", "event": "served", "quantile": quantile, "window": "1d"}
    metrics = {"solved": {"type": "proportion", "event": "solved"}, "latency": latency}
    data = experiment_data("quantile-check", metrics, "solved", prefix.rstrip("."))
    return parse_config(data | {"plan": {"baseline": 0.38, "mde": 0.02}})


def load_clustered(
    warehouse: Warehouse, prefix: str, outliers: bool = True
) -> dict[str, dict[str, list[float]]]:
    """Units with 0-6 latency events each in the metric's window; a unit-level effect makes
    events within a unit correlate (what the clustered variance is for); events before
    exposure or after the window (huge values, unless `outliers` is False) must be ignored.
    Returns {arm: {unit: values}}."""
    rng = np.random.default_rng(11)
    create_contract_tables(warehouse, prefix.rstrip("."))
    exposures, events = [], []
    truth: dict[str, dict[str, list[float]]] = {"control": {}, "treatment": {}}
    for i in range(400):
        arm = "treatment" if i % 2 else "control"
        unit, first = f"u{i}", START + timedelta(minutes=37 * i)
        exposures.append(("quantile-check", unit, arm, first, False, False, None))
        level = rng.normal(0.0, 0.5)
        values = [round(float(rng.lognormal(6.8 + level, 0.3)), 1) for _ in range(i % 7)]
        truth[arm][unit] = values
        for k, value in enumerate(values):
            events.append((unit, "served", first + timedelta(minutes=k + 1), value, None))
        if not outliers:
            continue
        events.append((unit, "served", first - timedelta(minutes=5), 1e6, None))  # before
        if i % 5 == 0:  # after the metric's 1-day window: neither counted nor ranked
            events.append((unit, "served", first + timedelta(days=2), 5e5, None))
    insert_rows(warehouse, exposures, events, prefix.rstrip("."))
    return truth


@pytest.mark.parametrize(("quantile", "margin"), [(0.95, None), (0.1, None), (0.95, 0)])
def test_clustered_quantile_sums_and_summaries_match_a_brute_force_computation(
    warehouse_and_prefix: tuple[Warehouse, str],
    quantile: float,
    margin: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Margin None: the bracket is read with the estimate; 0: by a pass of its own."""
    if margin is not None:
        monkeypatch.setattr(quantile_kind, "bracket_margin", lambda n: margin)
    warehouse, prefix = warehouse_and_prefix
    truth = load_clustered(warehouse, prefix)
    config = clustered_config(quantile, prefix)
    metric = config.metrics["latency"]
    assert isinstance(metric, QuantileMetric)
    table = build_units_table(warehouse, config, RUN)
    calls: list[dict[str, set[int]]] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[4])
        return order_statistics(*args, **kwargs)

    monkeypatch.setattr(quantile_kind, "order_statistics", counted)
    summaries = quantile_summaries(warehouse, config, "latency", metric, table, RUN)
    assert len(calls) == (1 if margin == 0 else 0)  # the bracket's own pass, or none
    params = quantile_events_sql(config, metric, table, RUN)[1]
    estimates = {arm: s.estimate for arm, s in summaries.items()}

    def narrowed(values: str) -> str:
        return quantile_events_sql(config, metric, table, RUN, values)[0]

    hists = histograms(warehouse, quantile_events_sql(config, metric, table, RUN)[0], params)
    _, read_estimates, sums = quantile_reading(
        warehouse, narrowed, params, hists, quantile, table, quantile_count_column("latency")
    )
    assert read_estimates == estimates
    for arm, units in truth.items():
        values = np.array([v for vs in units.values() for v in vs])
        x = float(np.quantile(values, quantile))
        assert summaries[arm].estimate == pytest.approx(x, rel=1e-12)
        clustered = [(len(vs), sum(v <= estimates[arm] for v in vs)) for vs in units.values() if vs]
        got = sums[arm]
        assert got.units == len(clustered)
        assert got.events == sum(n for n, _ in clustered)
        assert got.below == sum(i for _, i in clustered)
        assert got.events_sq == sum(n * n for n, _ in clustered)
        assert got.below_sq == sum(i * i for _, i in clustered)
        assert got.cross == sum(i * n for n, i in clustered)
        low, high, _ = clustered_quantile_bracket(quantile, got)
        ordered = np.sort(values)
        assert summaries[arm].lower == ordered[disc_rank(low, len(values)) - 1]
        assert summaries[arm].upper == ordered[disc_rank(high, len(values)) - 1]
        assert summaries[arm].lower <= summaries[arm].estimate <= summaries[arm].upper


def test_the_extract_stores_each_quantile_metrics_histogram_as_one_pass_computes_it(
    warehouse_and_prefix: tuple[Warehouse, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two quantile metrics on the same event (with and without a window) get their own
    histograms from the extract's grouping sets (DuckDB) or pass (PostgreSQL, as a dialect that
    stored histograms would); the analysis without them (a units table built before
    histograms were stored) computes the same summaries in a pass of its own."""
    warehouse, prefix = warehouse_and_prefix
    monkeypatch.setattr(type(warehouse.sql_dialect), "quantiles_by_edge", False)
    assert_stored_histograms_match_one_pass(warehouse, prefix)


def test_a_metric_pass_split_in_hash_partitions_adds_its_histograms_up(
    duckdb_warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each partition of a split metric pass leaves partial (arm, bucket) rows; stored, they
    are the histograms one pass computes."""
    split_metric_pass(monkeypatch, 3)
    assert_stored_histograms_match_one_pass(duckdb_warehouse, "")


def histogram_passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The bodies of the analysis's full histogram passes (`stats.quantiles.histograms`)."""
    calls: list[str] = []

    def recorded(warehouse: Warehouse, body: str, params: dict[str, Any]) -> Any:
        calls.append(body)
        return histograms(warehouse, body, params)

    monkeypatch.setattr(quantile_kind, "histograms", recorded)
    return calls


def summaries_of(warehouse: Warehouse, config: Any, table: str) -> Any:
    metric = config.metrics["latency"]
    assert isinstance(metric, QuantileMetric)
    return quantile_summaries(warehouse, config, "latency", metric, table, RUN)


def stored_then_by_edge(
    warehouse: Warehouse, config: Any, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """The summaries from a stored histogram; then the engine set to read beyond an edge."""
    monkeypatch.setattr(type(warehouse.sql_dialect), "quantiles_by_edge", False)
    expected = summaries_of(warehouse, config, build_units_table(warehouse, config, RUN))
    assert warehouse.table_exists(quantile_histogram_table_name(config, RUN))
    monkeypatch.setattr(type(warehouse.sql_dialect), "quantiles_by_edge", True)
    return dict(expected)


@pytest.mark.parametrize(
    ("quantile", "guessed"), [(0.95, False), (0.05, False), (0.1, True), (0.5, True)], ids=str
)
def test_the_side_read_from_an_edge_gives_what_a_stored_histogram_gives(
    warehouse_and_prefix: tuple[Warehouse, str],
    quantile: float,
    guessed: bool,
    monkeypatch: pytest.MonkeyPatch,
    executed_statements: list[str],
) -> None:
    """Where the engine stores no quantile histogram (Spark), the analysis joins the values
    from an edge outwards into a scratch table, and reads from it the same order statistics
    and sums as from a stored histogram, with no pass of a histogram over the joined events;
    the scratch table is dropped. The edge comes from the units' extreme values where as
    many units reach it as the tail needs ranks (a p95 or a p5 over ~3 events per unit);
    for a p10 or a median, which need more ranks than there are units, from one scan of the
    event."""
    warehouse, prefix = warehouse_and_prefix
    load_clustered(warehouse, prefix, outliers=False)
    config = clustered_config(quantile, prefix)
    expected = stored_then_by_edge(warehouse, config, monkeypatch)
    passes = histogram_passes(monkeypatch)
    guesses: list[float | None] = []

    def guessed_edge(*args: Any) -> float | None:
        guesses.append(real_guess(*args))
        return guesses[-1]

    real_guess = quantile_kind.guessed_edge
    monkeypatch.setattr(quantile_kind, "guessed_edge", guessed_edge)
    table = build_units_table(warehouse, config, RUN)
    assert not warehouse.table_exists(quantile_histogram_table_name(config, RUN))
    executed_statements.clear()
    assert summaries_of(warehouse, config, table) == expected
    assert passes == []
    assert len(guesses) == guessed
    created = [s for s in executed_statements if s.startswith(SCRATCH_TABLES)]
    assert len(created) == 1 and "ab_qside_" in created[0], created
    assert not [t for t in warehouse.table_names(prefix.rstrip(".") or None) if "qside" in t]
    if warehouse.dialect == "postgresql":
        # Written without the write-ahead log; the events read inline, so that the join runs
        # in parallel workers (a MATERIALIZED CTE is read by the leader alone).
        assert created[0].startswith("CREATE UNLOGGED TABLE")
        assert "MATERIALIZED" not in created[0]


@pytest.mark.parametrize(
    ("quantile", "miss"),
    [(0.95, "estimates"), (0.1, "estimates"), (0.95, "intervals"), (0.1, "intervals")],
)
def test_a_guessed_edge_that_misses_an_arms_ranks_costs_a_histogram_pass_not_a_wrong_number(
    warehouse_and_prefix: tuple[Warehouse, str],
    quantile: float,
    miss: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A guessed edge past every value (`estimates`), or one that holds the estimates but not
    an interval's ranks (`intervals`): the analysis reads a histogram once and gives the
    stored histogram's numbers."""
    warehouse, prefix = warehouse_and_prefix
    truth = load_clustered(warehouse, prefix)
    config = clustered_config(quantile, prefix)
    expected = stored_then_by_edge(warehouse, config, monkeypatch)
    above = quantile >= 0.5
    edge = 1e9 if above else -1e9
    if miss == "intervals":  # the estimates' values nearest the interval's far end
        needed = []
        for units in truth.values():
            ordered = np.sort([v for vs in units.values() for v in vs])
            below, beyond, _ = cont_ranks(quantile, len(ordered))
            needed.append(float(ordered[below - 1] if above else ordered[beyond - 1]))
        edge = min(needed) if above else max(needed)
        assert any(s.lower < edge if above else s.upper > edge for s in expected.values())
    monkeypatch.setattr(quantile_kind, "_sure_edge", lambda *args: None)  # many events per unit
    monkeypatch.setattr(quantile_kind, "guessed_edge", lambda *args: edge)
    passes = histogram_passes(monkeypatch)
    read_with: list[bool] = []  # per reading: whether its histograms had a bucket not read
    real_reading = quantile_kind.quantile_reading

    def reading(*args: Any) -> Any:
        read_with.append(any(not b.known for h in args[3].values() for b in h.buckets))
        return real_reading(*args)

    monkeypatch.setattr(quantile_kind, "quantile_reading", reading)
    table = build_units_table(warehouse, config, RUN)
    assert summaries_of(warehouse, config, table) == expected
    assert len(passes) == 1
    # The estimates were read from the side when it held them, else after the pass.
    assert read_with == [miss == "intervals"]


def assert_stored_histograms_match_one_pass(warehouse: Warehouse, prefix: str) -> None:
    load_clustered(warehouse, prefix)
    config = clustered_config(0.95, prefix)
    everything = {"type": "quantile", "event": "served", "quantile": 0.5}
    config = parse_config(
        config.model_dump(mode="json")
        | {"metrics": {**config.model_dump(mode="json")["metrics"], "latency_all": everything}}
    )
    table = build_units_table(warehouse, config, RUN)
    stored = quantile_histogram_table_name(config, RUN)
    summaries = {}
    for name in ("latency", "latency_all"):
        metric = config.metrics[name]
        assert isinstance(metric, QuantileMetric)
        body, params = quantile_events_sql(config, metric, table, RUN)
        direct = histograms(warehouse, body, params)
        assert stored_histograms(warehouse, stored, name) == direct, name
        summaries[name] = quantile_summaries(warehouse, config, name, metric, table, RUN)
    n_all = sum(h.n for h in stored_histograms(warehouse, stored, "latency_all").values())
    n_windowed = sum(h.n for h in stored_histograms(warehouse, stored, "latency").values())
    assert n_all > n_windowed  # the events after the 1-day window count only without one
    warehouse.execute(f"DROP TABLE {stored}")
    for name, before in summaries.items():
        metric = config.metrics[name]
        assert isinstance(metric, QuantileMetric)
        assert quantile_summaries(warehouse, config, name, metric, table, RUN) == before


def test_metrics_named_with_capitals_are_analysed_on_every_engine(
    warehouse_and_prefix: tuple[Warehouse, str],
) -> None:
    """Generated column names keep the metric's case (`n_Latency_P95`): PostgreSQL folds
    unquoted names, so every generated identifier must be quoted wherever it is written."""
    from ab_pipeline.readout.analysis import analyse

    warehouse, prefix = warehouse_and_prefix
    truth = load_clustered(warehouse, prefix)
    latency = {"type": "quantile", "event": "served", "quantile": 0.95, "window": "1d"}
    metrics = {"Solved_Rate": {"type": "proportion", "event": "solved"}, "Latency_P95": latency}
    config = parse_config(
        experiment_data("quantile-check", metrics, "Solved_Rate", prefix.rstrip("."))
    )
    table = build_units_table(warehouse, config, RUN)
    results = analyse(warehouse, config, table, RUN)
    for arm, units in truth.items():
        values = np.array([v for vs in units.values() for v in vs])
        got = results["Latency_P95"]["arms"][arm]["value"]
        assert got == pytest.approx(float(np.quantile(values, 0.95)), rel=1e-12)
    assert results["Solved_Rate"]["arms"]["control"]["units"] == 200


def load_tied(warehouse: Warehouse, prefix: str, tie: float) -> None:
    """Latencies whose p95 sits on an atom: 10% of events are exactly `tie` ms (a timeout
    or a rounded value), 87% below it and 3% above, in 800 units of 1-6 events."""
    rng = np.random.default_rng(21)
    create_contract_tables(warehouse, prefix.rstrip("."))
    exposures, events = [], []
    for i in range(800):
        arm = "treatment" if i % 2 else "control"
        unit, first = f"u{i}", START + timedelta(minutes=11 * i)
        exposures.append(("quantile-check", unit, arm, first, False, False, None))
        for k in range(1 + i % 6):
            draw = rng.random()
            value = (
                float(rng.uniform(10, tie - 1))
                if draw < 0.87
                else tie
                if draw < 0.97
                else float(rng.uniform(tie + 1, 400))
            )
            events.append((unit, "served", first + timedelta(minutes=k + 1), value, None))
    insert_rows(warehouse, exposures, events, prefix.rstrip("."))


def test_a_quantile_on_tied_values_is_flagged_discrete_without_se_or_p_value(
    duckdb_warehouse: Warehouse,
) -> None:
    load_tied(duckdb_warehouse, "", 80.0)
    config = clustered_config(0.95, "")
    table = build_units_table(duckdb_warehouse, config, RUN)
    latency = analysis.analyse(duckdb_warehouse, config, table, RUN)["latency"]
    comparison = latency["comparisons"]["treatment"]
    assert {a["value"] for a in latency["arms"].values()} == {80.0}
    assert comparison["discrete"] is True and "discrete values" in comparison["note"]
    assert comparison["se"] is None and comparison["p_value"] is None
    assert comparison["ci"] == [0.0, 0.0]  # both arms' intervals are the atom itself
    assert comparison["one_sided"]["absolute"] == [0.0, 0.0]
