"""The dialect layer: engines found by module, canonical SQL rendered per engine, the user's
own SQL left as written, and generated identifiers quoted so their case survives."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.warehouse import Warehouse, dialect_for, embedded, engine_url, quote_ident
from ab_pipeline.warehouse.dialects import all_dialects, dialect_named
from tests.warehouse_fixtures import create_contract_tables, experiment_data, insert_rows

CANONICAL = (
    'WITH narrow AS MATERIALIZED (SELECT unit_id FROM "Events" WHERE event_name = :event) '
    "SELECT COUNT(*) AS n FROM narrow x WHERE x.unit_id <> :unit"
)


def test_every_engine_module_is_found_and_owns_its_url_schemes() -> None:
    names = [d.name for d in all_dialects()]
    assert {"duckdb", "postgresql", "snowflake", "bigquery"} <= set(names)
    schemes = [s for d in all_dialects() for s in d.schemes]
    assert len(schemes) == len(set(schemes))  # one engine per scheme
    assert dialect_for("postgres://u@h/db").name == "postgresql"
    assert dialect_for("postgresql+psycopg2://u@h/db").name == "postgresql"
    assert dialect_for("duckdb:///x.duckdb").name == "duckdb"


def test_an_unknown_url_scheme_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'mysql' is not supported \(known: .*duckdb"):
        dialect_for("mysql://u@h/db")


def test_duckdb_and_postgresql_run_canonical_sql_as_written() -> None:
    for name in ("duckdb", "postgresql"):
        assert dialect_named(name).render(CANONICAL) == CANONICAL


def test_snowflake_keeps_named_parameters_and_drops_the_materialized_hint() -> None:
    assert dialect_named("snowflake").render(CANONICAL) == (
        'WITH narrow AS (SELECT unit_id FROM "Events" WHERE event_name = :event) '
        "SELECT COUNT(*) AS n FROM narrow AS x WHERE x.unit_id <> :unit"
    )


def test_user_sql_is_embedded_as_written_not_transpiled() -> None:
    user = "SELECT unit_id, value FROM orders QUALIFY ROW_NUMBER() OVER (ORDER BY ts) = 1"
    canonical = f"SELECT COUNT(*) AS n FROM {embedded(user)} AS s WHERE s.value > :low"
    rendered = dialect_named("snowflake").render(canonical)
    assert rendered == f"SELECT COUNT(*) AS n FROM (\n{user}\n) AS s WHERE s.value > :low"


def test_a_colon_in_user_sql_stays_a_colon_on_duckdb_and_postgresql(
    duckdb_warehouse: Warehouse,
) -> None:
    user = "SELECT 'a:b' AS v, 2::INTEGER AS i"
    sql = f"SELECT v, i FROM {embedded(user)} AS s WHERE i = :two"
    expected = [{"v": "a:b", "i": 2}]
    assert duckdb_warehouse.query(sql, {"two": 2}) == expected
    assert Warehouse("postgresql://postgres@127.0.0.1:5432/test").query(sql, {"two": 2}) == expected


def test_duckdb_engine_urls_carry_the_memory_cap_unless_the_url_sets_one() -> None:
    assert engine_url("duckdb:///w.duckdb") == "duckdb:///w.duckdb?memory_limit=900MB"
    assert engine_url("duckdb:///w.duckdb?memory_limit=4GB") == (
        "duckdb:///w.duckdb?memory_limit=4GB"
    )
    assert engine_url("postgres://u@h/db") == (
        "postgresql+psycopg2://u@h/db?options=-c+work_mem%3D256MB"
    )


def test_postgresql_sessions_sort_in_memory_unless_the_url_sets_work_mem() -> None:
    url = "postgresql://postgres@127.0.0.1:5432/test"
    assert Warehouse(url).query("SHOW work_mem") == [{"work_mem": "256MB"}]
    # Options that set something else (here the search_path) keep the larger work_mem.
    searched = Warehouse(url + "?options=-csearch_path%3Dpg_catalog")
    assert searched.query("SHOW work_mem") == [{"work_mem": "256MB"}]
    assert searched.query("SHOW search_path") == [{"search_path": "pg_catalog"}]
    own = url + "?options=-c%20work_mem%3D8MB"
    assert (
        engine_url(own)
        == "postgresql+psycopg2://postgres@127.0.0.1:5432/test?options=-c+work_mem%3D8MB"
    )
    assert Warehouse(own).query("SHOW work_mem") == [{"work_mem": "8MB"}]


def test_postgresql_data_quality_sessions_price_parallel_workers_at_no_cost() -> None:
    """Great Expectations' sessions (the suites' scans of the raw tables) plan parallel
    workers at no cost; the pipeline's own sessions keep PostgreSQL's costs. A URL's own
    options (a search_path) are kept, and a cost the URL sets wins."""
    from sqlalchemy import text

    from ab_pipeline.gates.data_quality import _datasource

    url = "postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dpg_catalog"
    shown = "SELECT current_setting('parallel_tuple_cost') AS tuple_cost, " + (
        "current_setting('parallel_setup_cost') AS setup_cost, "
        "current_setting('work_mem') AS work_mem, current_setting('search_path') AS path"
    )
    with _datasource(url) as datasource:
        engine = datasource.get_execution_engine().engine
        with engine.connect() as connection:
            row = dict(connection.execute(text(shown)).one()._mapping)
    assert row == {"tuple_cost": "0", "setup_cost": "0", "work_mem": "256MB", "path": "pg_catalog"}
    own = Warehouse(url).query(shown)[0]
    assert (own["tuple_cost"], own["setup_cost"], own["work_mem"]) == ("0.1", "1000", "256MB")
    costly = url + "%20-c%20parallel_tuple_cost%3D0.5"
    with _datasource(costly) as datasource:
        engine = datasource.get_execution_engine().engine
        with engine.connect() as connection:
            kept = dict(connection.execute(text(shown)).one()._mapping)
    assert (kept["tuple_cost"], kept["setup_cost"]) == ("0.5", "0")


def test_postgresql_analyses_each_filled_table_once_and_plans_the_units_join_in_parallel() -> None:
    postgresql = dialect_named("postgresql")
    build = ["CREATE UNLOGGED TABLE s AS x", 'CREATE TABLE "u" AS y', "CREATE TABLE h AS z"]
    prepared = postgresql.prepare_build(build, {"CREATE UNLOGGED TABLE s": "s"}, "u")
    free_parallel = ["SET LOCAL parallel_setup_cost = 0", "SET LOCAL parallel_tuple_cost = 0"]
    costs_back = [
        "SET LOCAL parallel_setup_cost TO DEFAULT",
        "SET LOCAL parallel_tuple_cost TO DEFAULT",
    ]
    assert prepared == [
        "SET LOCAL enable_nestloop = off",
        build[0],
        'ANALYZE "s"',
        *free_parallel,
        build[1],
        *costs_back,
        build[2],
        'ANALYZE "u"',
    ]
    # Analysed right after it is filled (later steps join it), the units table is not again.
    analysed = {"CREATE UNLOGGED TABLE s": "s", 'CREATE TABLE "u"': "u"}
    prepared = postgresql.prepare_build(build, analysed, "u")
    assert prepared[1:] == [
        build[0],
        'ANALYZE "s"',
        *free_parallel,
        build[1],
        *costs_back,
        'ANALYZE "u"',
        build[2],
    ]


def test_identifiers_are_quoted_so_their_case_survives() -> None:
    assert quote_ident("Sales.P95Latency") == '"Sales"."P95Latency"'
    with pytest.raises(ValueError, match="not a safe SQL identifier"):
        quote_ident('x"; DROP TABLE y; --')


@pytest.mark.slow
def test_a_capitalised_quantile_metric_reads_out_on_postgresql(
    postgres_schema: tuple[Warehouse, str], tmp_path: Path
) -> None:
    """Unquoted, PostgreSQL folds `m_P95Latency` to lower case and the analysis misses it."""
    warehouse, schema = postgres_schema
    create_contract_tables(warehouse, schema)
    rng = random.Random(7)
    start = datetime(2026, 5, 4)
    exposures, events = [], []
    for i in range(400):
        unit, arm = f"u{i}", ("control", "treatment")[i % 2]
        at = start + timedelta(hours=rng.randrange(0, 24 * 20))
        exposures.append(("cap", unit, arm, at, False, False, None))
        for k in range(3):
            latency = rng.lognormvariate(5, 0.4) * (1.1 if arm == "treatment" else 1.0)
            events.append((unit, "served", at + timedelta(minutes=k + 1), latency, "cap"))
            if rng.random() < 0.3:
                events.append((unit, "Solved", at + timedelta(hours=k + 1), None, "cap"))
    insert_rows(warehouse, exposures, events, schema)
    metrics = {
        "Solved": {"type": "proportion", "event": "Solved", "window": "1d"},
        "P95Latency": {"type": "quantile", "event": "served", "quantile": 0.95},
    }
    guardrails = {"P95Latency": {"max_relative_increase": 0.5}}
    config = experiment_data("cap", metrics, "Solved", schema, guardrails=guardrails)
    path = tmp_path / "cap.yaml"
    path.write_text(yaml.safe_dump(config))
    ctx = RunContext(path, datetime(2026, 5, 31).date(), warehouse.url, tmp_path / "out")
    run_pipeline(ctx, deliver=False)
    results = json.loads((ctx.run_dir / "results.json").read_text())
    latency = results["metrics"]["P95Latency"]["comparisons"]["treatment"]
    assert latency["relative"] > 0  # the treatment's 10% slower answers are seen
    assert results["metrics"]["Solved"]["arms"]["control"]["units"] > 150
