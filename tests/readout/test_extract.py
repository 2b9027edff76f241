"""The units table matches an independent per-unit computation of the metric semantics."""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from ab_pipeline.core.config import ExperimentConfig, parse_config
from ab_pipeline.readout.extract import (
    ExtractPlan,
    analysed_tables,
    build_units_sql,
    build_units_table,
    grouped_expressions,
    partitions_for,
    several_rows_sql,
    units_table_name,
)
from ab_pipeline.stats.quantiles import bucket_sql
from ab_pipeline.warehouse import Warehouse, quote_ident
from ab_pipeline.warehouse.run_tables import EXPOSURE_DAY, StepTables
from tests.warehouse_fixtures import (
    Event,
    Exposure,
    create_contract_tables,
    experiment_data,
    insert_rows,
    rows_by_unit,
    split_metric_pass,
)

START, END = date(2026, 5, 4), date(2026, 5, 31)
KEY = "extract-check"


def make_config(schema: str = "", **overrides: Any) -> ExperimentConfig:
    metrics = {
        "solved": {
            "type": "proportion",
            "event": "solved",
            "window": "1d",
            "unless": {"event": "ticket", "within": "10m"},
        },
        "clicks": {"type": "mean", "event": "click", "window": "2d", "aggregate": "count"},
        "revenue": {"type": "mean", "event": "purchase", "window": "3d"},
        "ever_bought": {"type": "proportion", "event": "purchase"},
        "latency": {"type": "quantile", "event": "served", "quantile": 0.95},
    }
    data = experiment_data(KEY, metrics, "solved", schema, unit="account", start=START, end=END)
    return parse_config(data | overrides)


def random_data(seed: int, units: int = 300) -> tuple[list[Exposure], list[Event]]:
    rng = random.Random(seed)
    unknown = random.Random(-seed)  # its own stream: the data of `rng` stays as it was
    base = datetime(2026, 5, 4)
    exposures: list[Exposure] = []
    events: list[Event] = []
    for i in range(units):
        unit = f"u{i:04d}"
        arm = rng.choice(["control", "treatment"])
        if unknown.random() < 0.03:  # no configured arm: the enrolled step flags such units
            arm = "holdout"
        first = base + timedelta(minutes=rng.randrange(0, 30 * 24 * 60))  # some after END
        internal, bot = rng.random() < 0.05, rng.random() < 0.05
        for k in range(rng.choice([1, 1, 2, 3])):
            exposures.append(
                (KEY, unit, arm, first + timedelta(hours=5 * k), internal and k == 1, bot, None)
            )
        crossed = rng.random()
        if crossed < 0.1:  # also seen in another arm: later, or at the very same instant
            other = "treatment" if arm == "control" else "control"
            if unknown.random() < 0.3:
                other = "holdout" if arm != "holdout" else "treatment"
            at = first if crossed < 0.05 else first + timedelta(minutes=30)
            exposures.append((KEY, unit, other, at, False, False, None))
        exposures.append(("other-exp", unit, "x", first, False, False, None))
        for _ in range(rng.randrange(0, 8)):
            name = rng.choice(["solved", "ticket", "click", "purchase", "served", "noise"])
            at = first + timedelta(minutes=rng.randrange(-600, 4 * 24 * 60))
            value = round(rng.uniform(1, 100), 2) if name in ("purchase", "served") else None
            events.append((unit, name, at, value, KEY))
            if name == "solved" and rng.random() < 0.4:  # a ticket just inside or outside 10m
                gap = timedelta(minutes=rng.choice([0, 5, 10, 11, 30]))
                events.append((unit, "ticket", at + gap, None, KEY))
    return exposures, events


def expected_units(
    exposures: list[Exposure], events: list[Event], run_date: date
) -> dict[str, dict[str, Any]]:
    """The metric semantics of docs/warehouse.md, computed row by row in Python."""
    run_end = datetime(run_date.year, run_date.month, run_date.day) + timedelta(days=1)
    end_excl = datetime(END.year, END.month, END.day) + timedelta(days=1)
    mine = [
        e
        for e in exposures
        if e[0] == KEY
        and START.isoformat() <= e[3].isoformat()
        and e[3] < end_excl
        and e[3] < run_end
    ]
    units: dict[str, dict[str, Any]] = {}
    for _, unit, arm, at, internal, bot, _ in sorted(mine, key=lambda e: (e[3], e[2])):
        # first exposure's arm; on a tie of timestamps the smallest arm name (sorted above)
        entry = units.setdefault(unit, {"arm": arm, "first": at, "excluded": False, "arms": set()})
        entry["excluded"] |= internal or bot
        entry["arms"].add(arm)
    result = {}
    for unit, entry in units.items():
        if entry["excluded"]:
            continue
        first = entry["first"]
        own = [e for e in events if e[0] == unit and first <= e[2] < run_end]

        def within(
            name: str, days: int | None, own: list[Event] = own, first: datetime = first
        ) -> list[Event]:
            return [
                e
                for e in own
                if e[1] == name and (days is None or e[2] < first + timedelta(days=days))
            ]

        def complete(days: int, first: datetime = first) -> bool:
            return first + timedelta(days=days) <= run_end

        tickets = [e[2] for e in own if e[1] == "ticket"]
        solved = any(
            not any(s[2] <= t <= s[2] + timedelta(minutes=10) for t in tickets)
            for s in within("solved", 1)
        )
        result[unit] = {
            "arm": entry["arm"],
            "m_solved": int(solved) if complete(1) else None,
            "m_clicks": len(within("click", 2)) if complete(2) else None,
            "m_revenue": sum(e[3] or 0 for e in within("purchase", 3)) if complete(3) else None,
            "m_ever_bought": int(bool(within("purchase", None))),
            "several_arms": int(len(entry["arms"]) > 1),
            "n_latency": sum(1 for e in within("served", None) if e[3] is not None),
        }
    return result


def assert_units_match(
    warehouse: Warehouse, table: str, expected: dict[str, dict[str, Any]]
) -> None:
    actual = rows_by_unit(warehouse.query(f"SELECT * FROM {quote_ident(table)}"))
    assert set(actual) == set(expected)
    for unit, want in expected.items():
        got = actual[unit]
        assert got["arm"] == want["arm"], unit
        for column in ("m_solved", "m_clicks", "m_ever_bought", "several_arms", "n_latency"):
            assert (None if got[column] is None else int(got[column])) == want[column], (
                unit,
                column,
            )
        if want["m_revenue"] is None:
            assert got["m_revenue"] is None, unit
        else:
            assert float(got["m_revenue"]) == pytest.approx(want["m_revenue"]), unit


@pytest.mark.parametrize("run_date", [date(2026, 5, 10), END])
def test_units_table_matches_independent_computation_on_duckdb(
    duckdb_warehouse: Warehouse, run_date: date
) -> None:
    exposures, events = random_data(seed=7)
    create_contract_tables(duckdb_warehouse)
    insert_rows(duckdb_warehouse, exposures, events)
    table = build_units_table(duckdb_warehouse, make_config(), run_date)
    assert table == units_table_name(make_config(), run_date)
    assert_units_match(duckdb_warehouse, table, expected_units(exposures, events, run_date))


# The `unless` rule's cases (solved within 1d, unless a ticket follows within 10m, both ends
# included), as minutes after the unit's first exposure: (solves, tickets, resolved). The
# metric pass decides most from each unit's first and last solve and ticket; the ones it
# cannot decide (several tickets around the solves) are settled by the `unless` step.
UNLESS_CASES = [
    ([60], [], 1),
    ([60], [60], 0),  # a ticket at the same instant spoils
    ([60], [70], 0),  # ... and one exactly `within` later
    ([60], [70.5], 1),
    ([60], [59], 1),  # a ticket before the solve does not spoil it
    ([60], [-30, 65], 0),  # nor one before the first exposure (not read)
    ([60, 65], [70], 0),  # one ticket spoiling both solves
    ([60], [65, 65], 0),  # two tickets at one instant
    ([60, 180], [120], 1),  # the last solve follows every ticket
    ([60, 120], [65, 125], 0),  # undecided by the pass: each solve spoiled by its own ticket
    ([60, 120], [65, 180], 1),  # undecided: the second solve is not spoiled
    ([60], [30, 60], 0),  # undecided: the last ticket, at the solve's instant, spoils it
    ([60], [65, 300], 0),  # undecided: the first ticket spoils the only solve
    ([1500], [], 0),  # solved after the 1d window
    ([], [60], 0),
]


@pytest.mark.parametrize(
    ("engine", "in_pass"), [("duckdb", True), ("postgresql", True), ("duckdb", False)]
)
def test_the_unless_rule_is_decided_by_the_pass_or_settled_by_its_step_in_every_case(
    engine: str, in_pass: bool, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the pass where the engine decides it there (`unless_in_pass`), else (Spark's way)
    by the ordered pass over every unit's events."""
    if engine == "duckdb":
        warehouse, schema = request.getfixturevalue("duckdb_warehouse"), ""
    else:
        warehouse, schema = request.getfixturevalue("postgres_schema")
    monkeypatch.setattr(type(warehouse.sql_dialect), "unless_in_pass", in_pass)
    first = datetime(2026, 5, 5, 8)
    exposures: list[Exposure] = []
    events: list[Event] = []
    for i, (solves, tickets, _) in enumerate(UNLESS_CASES):
        unit = f"case{i:02d}"
        exposures.append((KEY, unit, "control", first, False, False, None))
        for name, minutes in [("solved", m) for m in solves] + [("ticket", m) for m in tickets]:
            events.append((unit, name, first + timedelta(minutes=minutes), None, KEY))
    create_contract_tables(warehouse, schema)
    insert_rows(warehouse, exposures, events, schema)
    config = make_config(schema)
    table = build_units_table(warehouse, config, END)
    got = rows_by_unit(warehouse.query(f"SELECT unit_id, m_solved FROM {quote_ident(table)}"))
    want = expected_units(exposures, events, END)
    for i, (solves, tickets, resolved) in enumerate(UNLESS_CASES):
        unit = f"case{i:02d}"
        assert want[unit]["m_solved"] == resolved, (solves, tickets)  # the cases' own check
        assert got[unit]["m_solved"] == resolved, (engine, solves, tickets)


@pytest.mark.parametrize("in_pass", [True, False])
def test_an_unless_rule_on_the_metrics_own_event_spoils_every_event(
    in_pass: bool, duckdb_warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each event is followed, at its own instant, by an `unless` event: itself."""
    monkeypatch.setattr(type(duckdb_warehouse.sql_dialect), "unless_in_pass", in_pass)
    metric = {"type": "proportion", "event": "solved", "window": "1d"}
    metrics = {"solved": metric | {"unless": {"event": "solved", "within": "10m"}}}
    config = parse_config(experiment_data(KEY, metrics, "solved", start=START, end=END))
    first = datetime(2026, 5, 5, 8)
    solves = {"one": [60], "two": [60, 600], "close": [60, 65], "none": []}
    exposures: list[Exposure] = [(KEY, u, "control", first, False, False, None) for u in solves]
    events: list[Event] = [
        (u, "solved", first + timedelta(minutes=m), None, KEY)
        for u, ms in solves.items()
        for m in ms
    ]
    create_contract_tables(duckdb_warehouse)
    insert_rows(duckdb_warehouse, exposures, events)
    table = build_units_table(duckdb_warehouse, config, END)
    got = rows_by_unit(
        duckdb_warehouse.query(f"SELECT unit_id, m_solved FROM {quote_ident(table)}")
    )
    assert {unit: row["m_solved"] for unit, row in got.items()} == dict.fromkeys(solves, 0)


def test_a_metric_pass_split_in_hash_partitions_gives_the_same_units_table(
    duckdb_warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    exposures, events = random_data(seed=13, units=200)
    create_contract_tables(duckdb_warehouse)
    insert_rows(duckdb_warehouse, exposures, events)
    sized_from = split_metric_pass(monkeypatch, 3)
    config = make_config()
    assert ExtractPlan.for_warehouse(duckdb_warehouse, config, END).partitions == 3
    in_window = [x for x in exposures if x[0] == KEY and x[3] < datetime(2026, 6, 1)]
    assert sized_from == [len(in_window)]
    table = build_units_table(duckdb_warehouse, config, END)
    assert_units_match(duckdb_warehouse, table, expected_units(exposures, events, END))


@pytest.mark.parametrize(
    ("rows", "limit", "partitions"),
    [
        (14_300_000, "953.6 MiB", 2),  # 10M units under the 1 GB default: two passes
        (7_200_000, "953.6 MiB", 1),
        (14_300_000, "18.8 GiB", 1),
        (30_000_000, "1.9 GiB", 2),
        (100_000, "1.4 MiB", 8),
        (0, "953.6 MiB", 1),
        (14_300_000, "unlimited", 1),  # a setting it cannot read: one pass, as before
    ],
)
def test_the_metric_pass_is_split_by_exposures_per_gib_of_the_memory_limit(
    rows: int, limit: str, partitions: int
) -> None:
    assert partitions_for(rows, limit) == partitions


def test_postgresql_plan_joins_on_row_addresses_in_one_pass_and_stores_no_histogram(
    postgres_schema: tuple[Warehouse, str],
) -> None:
    warehouse, schema = postgres_schema
    config = make_config(schema)
    plan = ExtractPlan.for_warehouse(warehouse, config, END)
    assert plan == ExtractPlan(
        histograms_in_pass=False,
        partitions=1,
        unit_key="ctid",  # the enrolled row's address: the steps group and join on it
        dialect="postgresql",
        steps=StepTables(units_table_name(config, END)),  # beside the units table, UNLOGGED
        stores_histograms=False,  # quantiles read beyond an edge (`quantiles_by_edge`)
        unless_in_pass=True,  # `unless` decided by the pass where first and last events settle it
    )


def built_from_random_data(
    warehouse: Warehouse, schema: str, seed: int, units: int
) -> tuple[ExperimentConfig, str, list[Exposure], list[Event]]:
    """The config, the units table built for END, and the random rows loaded to build it."""
    exposures, events = random_data(seed=seed, units=units)
    create_contract_tables(warehouse, schema)
    insert_rows(warehouse, exposures, events, schema)
    config = make_config(schema)
    return config, build_units_table(warehouse, config, END), exposures, events


def test_units_table_is_identical_on_postgresql(postgres_schema: tuple[Warehouse, str]) -> None:
    warehouse, schema = postgres_schema
    _, table, exposures, events = built_from_random_data(warehouse, schema, seed=11, units=150)
    assert_units_match(warehouse, table, expected_units(exposures, events, END))
    warehouse.execute(f"DROP TABLE {quote_ident(table)}")


def test_postgresql_plans_the_units_tables_per_day_and_per_bucket_groups_from_statistics(
    postgres_schema: tuple[Warehouse, str],
) -> None:
    """Each unit has its own first exposure time: without statistics of the day expression
    PostgreSQL would count about one group per unit (and aggregate in one process)."""
    warehouse, schema = postgres_schema
    config, table, _, _ = built_from_random_data(warehouse, schema, seed=5, units=400)
    assert grouped_expressions(config, ExtractPlan.for_warehouse(warehouse, config, END)) == [
        EXPOSURE_DAY,
        bucket_sql('"x_latency"'),
    ]
    kept = warehouse.query(
        "SELECT COUNT(*) AS n FROM pg_statistic_ext x JOIN pg_class c ON c.oid = x.stxrelid "
        "JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = :schema "
        "AND c.relname = :table",
        {"schema": schema, "table": table.split(".")[-1]},
    )
    assert kept[0]["n"] == 2
    days = warehouse.query(f"SELECT COUNT(DISTINCT {EXPOSURE_DAY}) AS n FROM {quote_ident(table)}")
    plan = warehouse.query(
        f"EXPLAIN SELECT {EXPOSURE_DAY}, arm, COUNT(*) FROM {quote_ident(table)} "
        f"GROUP BY {EXPOSURE_DAY}, arm"
    )
    estimate = int(re.findall(r"rows=(\d+)", next(iter(plan[0].values())))[0])
    assert estimate <= 2 * int(days[0]["n"])  # the days times the arms, not one per unit


@pytest.mark.slow
def test_units_table_is_identical_on_spark_built_through_step_tables_of_the_catalog(
    spark_url: str, spark_database: str
) -> None:
    """Spark's steps are Parquet tables beside the units table: a leftover of a killed build
    is dropped first, the UPDATE of units seen in several arms rebuilds the enrolled step as a
    view, and neither a step table nor a view is left once the units table is built."""
    from ab_pipeline.warehouse.dialects.spark import spark_session

    warehouse = Warehouse(spark_url)
    exposures, events = random_data(seed=11, units=150)
    create_contract_tables(warehouse, spark_database)
    insert_rows(warehouse, exposures, events, spark_database)
    config = make_config(spark_database)
    plan = ExtractPlan.for_warehouse(warehouse, config, END)
    assert plan.steps == StepTables(units_table_name(config, END))
    leftover = quote_ident(plan.steps.name("enrolled"))
    warehouse.execute(f"CREATE TABLE {leftover} AS SELECT 1 AS stale")
    expected = expected_units(exposures, events, END)
    assert any(u["several_arms"] for u in expected.values())  # the UPDATE has rows to change
    table = build_units_table(warehouse, config, END)
    assert_units_match(warehouse, table, expected)
    assert not [n for n in warehouse.table_names(spark_database) if n.startswith("ab_tmp_")]
    views = spark_session(spark_url).catalog.listTables()
    assert not [v.name for v in views if v.isTemporary and v.name.startswith("ab_tmp_")]


def test_shared_step_tables_are_unlogged_in_the_units_schema_and_named_per_run() -> None:
    config = make_config("sales")
    created = {}
    for day in (END, END - timedelta(days=1)):
        table = units_table_name(config, day)
        plan = ExtractPlan(histograms_in_pass=False, dialect="postgresql")
        plan = replace(plan, steps=StepTables(table))
        statements, _ = build_units_sql(config, day, table, plan)
        assert not any(s.startswith("CREATE TEMP") for s in statements)
        created[day] = [s.split()[3] for s in statements if s.startswith("CREATE UNLOGGED")]
        names = created[day]
        assert len(names) == 3  # enrolled units, the metric pass, the `unless` step
        assert all(re.fullmatch(r'"sales"\."ab_tmp_[a-z]+_[0-9a-f]{10}"', n) for n in names)
        # Every statement, and the later check of `sql:` metrics, names the steps this way.
        for sql in [*statements, several_rows_sql(plan.steps)]:
            assert re.search(r"\bab_tmp_(enrolled|metrics|unless)\b(?!_)", sql) is None, sql
        assert names[0] in several_rows_sql(plan.steps)
        assert [f"DROP TABLE {n}" for n in names] == statements[-3:]
        # Dropped first too: on Spark a killed build (no transaction) leaves them behind.
        assert [f"DROP TABLE IF EXISTS {n}" for n in names] == statements[2:5]
    assert set(created[END]).isdisjoint(created[END - timedelta(days=1)])


def test_every_step_table_is_analysed_as_soon_as_it_is_filled_and_the_units_table_too() -> None:
    """PostgreSQL plans the units table's join of the steps from their statistics
    (`prepare_build`): each step's table is named, as it is filled, under its exact name."""
    config = make_config("sales")
    table = units_table_name(config, END)
    plan = ExtractPlan(histograms_in_pass=False, dialect="postgresql", steps=StepTables(table))
    statements, _ = build_units_sql(config, END, table, plan)
    analysed = analysed_tables(statements, plan.steps, table)
    steps = {step: plan.steps.name(step) for step in ("enrolled", "metrics", "unless")}
    assert analysed == {
        f"UPDATE {quote_ident(steps['enrolled'])}": steps["enrolled"],
        f"CREATE UNLOGGED TABLE {quote_ident(steps['metrics'])}": steps["metrics"],
        f"CREATE UNLOGGED TABLE {quote_ident(steps['unless'])}": steps["unless"],
        f"CREATE TABLE {quote_ident(table)}": table,
    }
    assert all(name.startswith("sales.ab_") for name in analysed.values())
    for head in analysed:  # each names a statement of the build
        assert sum(s.startswith(head) for s in statements) == 1, head


def test_concurrent_postgresql_builds_leave_no_step_tables(
    postgres_schema: tuple[Warehouse, str],
) -> None:
    """Two run dates built at once in one schema, each through its own UNLOGGED steps: both
    units tables are right, and neither build leaves a step table behind."""
    warehouse, schema = postgres_schema
    exposures, events = random_data(seed=23, units=150)
    create_contract_tables(warehouse, schema)
    insert_rows(warehouse, exposures, events, schema)
    config = make_config(schema)
    days = [END, END - timedelta(days=3)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        tables = list(pool.map(lambda day: build_units_table(warehouse, config, day), days))
    for day, table in zip(days, tables, strict=True):
        assert_units_match(warehouse, table, expected_units(exposures, events, day))
    left = warehouse.table_names(schema)
    assert {t.split(".")[1] for t in tables} <= set(left)
    assert [name for name in left if name.startswith("ab_tmp_")] == []


def test_rebuilding_a_run_date_replaces_the_units_table(duckdb_warehouse: Warehouse) -> None:
    config = make_config()
    before = random_data(seed=3, units=40)
    create_contract_tables(duckdb_warehouse)
    insert_rows(duckdb_warehouse, *before)
    table = build_units_table(duckdb_warehouse, config, END)
    assert_units_match(duckdb_warehouse, table, expected_units(*before, END))
    # The warehouse changes (late data, a fixed pipeline): the rebuild reflects only the new rows.
    after = random_data(seed=4, units=70)
    create_contract_tables(duckdb_warehouse)
    insert_rows(duckdb_warehouse, *after)
    assert build_units_table(duckdb_warehouse, config, END) == table
    assert_units_match(duckdb_warehouse, table, expected_units(*after, END))


def test_internal_and_bot_units_are_kept_when_the_audience_says_so(
    duckdb_warehouse: Warehouse,
) -> None:
    exposures, events = random_data(seed=5, units=80)
    create_contract_tables(duckdb_warehouse)
    insert_rows(duckdb_warehouse, exposures, events)
    config = make_config(audience={"exclude_internal": False, "exclude_bots": False})
    table = build_units_table(duckdb_warehouse, config, END)
    enrolled = {e[1] for e in exposures if e[0] == KEY and e[3] < datetime(2026, 6, 1)}
    rows = duckdb_warehouse.query(f"SELECT unit_id FROM {quote_ident(table)}")
    assert {r["unit_id"] for r in rows} == enrolled


def test_long_keys_give_table_names_postgresql_accepts() -> None:
    config = make_config(key="k" * 63)
    name = units_table_name(config, END)
    assert len(name) <= 63 and name.endswith("__20260531")


# --- `sql:` metrics: one read-only SELECT ---------------------------------------------------


def sql_metric_config(schema: str, sql: str) -> ExperimentConfig:
    """A valid config with an `sql:` metric, then its text replaced without validation: the
    extract must check it again (a config object can come from anywhere)."""
    base = make_config(schema)
    data = base.model_dump(mode="json")
    data["metrics"]["Handle_Time"] = {"type": "mean", "sql": "SELECT unit_id, 1 AS value FROM t"}
    config = parse_config(data)
    metric = config.metrics["Handle_Time"].model_copy(update={"sql": sql})
    return config.model_copy(update={"metrics": {**config.metrics, "Handle_Time": metric}})


@pytest.fixture(params=["duckdb", "postgres", "snowflake"])
def loaded(request: pytest.FixtureRequest) -> tuple[Warehouse, str, list[Exposure], list[Event]]:
    if request.param == "duckdb":
        warehouse, schema = request.getfixturevalue("duckdb_warehouse"), ""
    elif request.param == "snowflake":
        warehouse, schema = request.getfixturevalue("snowflake_warehouse"), ""
    else:
        warehouse, schema = request.getfixturevalue("postgres_schema")
    exposures, events = random_data(seed=5, units=60)
    create_contract_tables(warehouse, schema)
    insert_rows(warehouse, exposures, events, schema)
    return warehouse, schema, exposures, events


def test_an_sql_metric_joins_its_values_and_keeps_colons_in_literals(
    loaded: tuple[Warehouse, str, list[Exposure], list[Event]],
) -> None:
    warehouse, schema, exposures, events = loaded
    prefix = f"{schema}." if schema else ""
    sql = (
        f"SELECT e.unit_id, COUNT(*) AS value FROM {prefix}events AS e "  # a colon in a literal
        "WHERE e.event_name = 'click' AND e.event_name <> 'a :b' GROUP BY e.unit_id"
    )
    table = build_units_table(warehouse, sql_metric_config(schema, sql), END)
    rows = rows_by_unit(warehouse.query(f"SELECT * FROM {quote_ident(table)}"))
    clicks: dict[str, int] = {}
    for unit, name, *_ in events:
        clicks[unit] = clicks.get(unit, 0) + (name == "click")
    assert rows and all(row["m_Handle_Time"] == clicks.get(unit, 0) for unit, row in rows.items())
    assert any(row["m_Handle_Time"] > 0 for row in rows.values())


def test_an_sql_metric_with_several_rows_for_an_enrolled_unit_is_an_error_naming_it(
    loaded: tuple[Warehouse, str, list[Exposure], list[Event]],
) -> None:
    """One row per click: several rows for a unit that clicked twice. The error names the
    metric and counts the enrolled units concerned (units not enrolled do not count, as they
    did not before the values were joined in the build); no units table is built."""
    warehouse, schema, exposures, events = loaded
    prefix = f"{schema}." if schema else ""
    sql = f"SELECT e.unit_id, 1 AS value FROM {prefix}events AS e WHERE e.event_name = 'click'"
    clicks: dict[str, int] = {}
    for unit, name, *_ in events:
        clicks[unit] = clicks.get(unit, 0) + (name == "click")
    enrolled = expected_units(exposures, events, END)
    twice = sorted(u for u in enrolled if clicks.get(u, 0) > 1)
    assert twice and any(n > 1 for u, n in clicks.items() if u not in enrolled)
    config = sql_metric_config(schema, sql)
    with pytest.raises(ValueError) as raised:
        build_units_table(warehouse, config, END)
    assert str(raised.value) == (
        f"metrics.Handle_Time.sql returned more than one row for {len(twice)} enrolled units "
        f"(for example unit_id {twice[0]!r}): a metric's query must return one row per unit"
    )
    assert not warehouse.table_exists(f"{prefix}{units_table_name(config, END)}")


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        (
            "SELECT unit_id, 1 AS value FROM events); DROP TABLE ab_readouts; SELECT (1",
            "does not parse",
        ),
        ("SELECT unit_id, 1 AS value FROM events; DROP TABLE ab_readouts", "exactly one SELECT"),
        ("SELECT column0 AS unit_id, 1 AS value FROM read_csv_auto('/etc/passwd')", "read_csv"),
        # (sqlglot reads the quoted path as a string on DuckDB, as a stage path on Snowflake)
        ("SELECT unit_id, 1 AS value FROM '/etc/passwd'", "(not a plain identifier|not a table)"),
        (
            "WITH d AS (DELETE FROM ab_readouts RETURNING *) SELECT 'u' AS unit_id, 1 AS value",
            "DELETE",
        ),
    ],
)
def test_an_sql_metric_that_is_not_one_select_is_refused_before_it_runs(
    loaded: tuple[Warehouse, str, list[Exposure], list[Event]], sql: str, reason: str
) -> None:
    warehouse, schema, _, _ = loaded
    readouts = f"{schema}.ab_readouts" if schema else "ab_readouts"
    warehouse.execute(f"CREATE TABLE {readouts} (decision TEXT)")
    with pytest.raises(ValueError, match=rf"metrics\.Handle_Time\.sql: .*{reason}"):
        build_units_table(warehouse, sql_metric_config(schema, sql), END)
    assert warehouse.table_exists(readouts)


def test_the_sql_metric_pass_is_read_only_on_duckdb(
    duckdb_warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB has no function that writes, so the parser admits no write to test with: put a
    write in the read-only pass itself and see the engine refuse it."""
    from ab_pipeline.readout import extract

    exposures, events = random_data(seed=5, units=20)
    create_contract_tables(duckdb_warehouse)
    insert_rows(duckdb_warehouse, exposures, events)
    monkeypatch.setattr(
        extract,
        "_sql_metric_reads",
        lambda config, dialect: (["CREATE TABLE pwned AS SELECT 1 AS x"], {}),
    )
    with pytest.raises(Exception, match="read-only"):
        build_units_table(
            duckdb_warehouse, sql_metric_config("", "SELECT unit_id, 1 AS value FROM events"), END
        )
    assert not duckdb_warehouse.table_exists("pwned")


def test_a_function_that_writes_fails_in_the_read_only_pass_on_postgresql(
    postgres_schema: tuple[Warehouse, str],
) -> None:
    """A user-defined function the parser cannot see into: PostgreSQL's read-only
    transaction refuses its write, and nothing of the run is built."""
    warehouse, schema = postgres_schema
    exposures, events = random_data(seed=5, units=20)
    create_contract_tables(warehouse, schema)
    insert_rows(warehouse, exposures, events, schema)
    warehouse.execute(
        f"CREATE FUNCTION {schema}.sneaky(u TEXT) RETURNS INT AS $$ BEGIN "
        f"CREATE TABLE IF NOT EXISTS {schema}.pwned (x INT); RETURN 1; END $$ LANGUAGE plpgsql"
    )
    sql = f"SELECT unit_id, {schema}.sneaky(unit_id) AS value FROM {schema}.events"
    config = sql_metric_config(schema, sql)
    with pytest.raises(Exception, match="read-only transaction"):
        build_units_table(warehouse, config, END)
    assert not warehouse.table_exists(f"{schema}.pwned")
    from ab_pipeline.readout.extract import units_table_name

    assert not warehouse.table_exists(units_table_name(config, END))
