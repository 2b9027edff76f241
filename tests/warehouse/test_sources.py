"""A source in generated SQL (`source_relation`) and a source query's result types
(`source_columns`), on a real DuckDB file and the real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import ExperimentConfig, Source, SqlSource, load_config
from ab_pipeline.devtools.lint import exposure_property_names, lint_config, observed_enrolment
from ab_pipeline.devtools.simulate import parse_scenario, simulate
from ab_pipeline.gates.srm_diagnosis import srm_diagnosis
from ab_pipeline.orchestration.backfill import latest_data_date
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.readout.extract import units_table_name
from ab_pipeline.readout.progress import pre_period_moments
from ab_pipeline.warehouse import Warehouse, embedded
from ab_pipeline.warehouse.sources import SourceQueryError, source_columns, source_relation
from tests.test_postgres_parity import QUERY_SOURCES

EVENTS_QUERY = (
    "SELECT CAST(user_key AS TEXT) AS unit_id, action AS event_name, logged_at AS occurred_at, "
    "CAST(amount AS DOUBLE PRECISION) AS value, 'exp:1' AS experiment_key FROM app_log"
)
# Spark SQL names the types STRING and DOUBLE (the user's SQL is in the warehouse's dialect).
SPARK_EVENTS_QUERY = (
    "SELECT CAST(user_key AS STRING) AS unit_id, action AS event_name, logged_at AS occurred_at, "
    "CAST(amount AS DOUBLE) AS value, 'exp:1' AS experiment_key FROM app_log"
)
# The query's result types, as each engine's information_schema names them (Spark, which has
# none: as its tables' schemas do).
RESULT_TYPES = {
    "duckdb": ("VARCHAR", "TIMESTAMP", "DOUBLE"),
    "postgresql": ("TEXT", "TIMESTAMP WITHOUT TIME ZONE", "DOUBLE PRECISION"),
    "snowflake": ("TEXT", "TIMESTAMP_NTZ", "FLOAT"),
    "spark": ("STRING", "TIMESTAMP_NTZ", "DOUBLE"),
}


def events_query(warehouse: Warehouse) -> str:
    return SPARK_EVENTS_QUERY if warehouse.dialect == "spark" else EVENTS_QUERY


@pytest.fixture(
    params=["duckdb", "postgres", "snowflake", pytest.param("spark", marks=pytest.mark.slow)]
)
def warehouse(request: pytest.FixtureRequest) -> Iterator[Warehouse]:
    """A warehouse holding a team's own table, `app_log`, in its default schema (Spark's
    server lives for the test session: the table is made afresh)."""
    if request.param == "duckdb":
        found: Warehouse = request.getfixturevalue("duckdb_warehouse")
    elif request.param == "snowflake":
        found = request.getfixturevalue("snowflake_warehouse")
    elif request.param == "spark":
        found = Warehouse(request.getfixturevalue("spark_url"))
        found.execute(["DROP TABLE IF EXISTS app_log", "DROP TABLE IF EXISTS made"])
    else:
        admin, schema = request.getfixturevalue("postgres_schema")
        found = Warehouse(f"{admin.url}?options=-csearch_path%3D{schema}")
    found.execute(
        [
            "CREATE TABLE app_log (user_key INTEGER, action TEXT, logged_at TIMESTAMP, "
            "amount INTEGER)",
            "INSERT INTO app_log VALUES (7, 'purchase', TIMESTAMP '2026-06-01 09:00:00', 42)",
        ]
    )
    yield found


def table_types(warehouse: Warehouse, table: str) -> dict[str, str]:
    """{column: TYPE} of a table as the contract check lists it: information_schema's, upper
    case (Spark: the table's schema, `column_types_sql`)."""
    if warehouse.dialect == "spark":
        from ab_pipeline.warehouse.dialects.spark import ConnectSession

        return dict(ConnectSession(warehouse.url).column_types(table))
    rows = warehouse.query(
        "SELECT LOWER(column_name) AS c, UPPER(data_type) AS t FROM information_schema.columns "
        "WHERE table_name = :table AND table_schema = current_schema()",
        {"table": warehouse.sql_dialect.stored_name(table)},
    )
    return {r["c"]: r["t"] for r in rows}


def test_a_table_source_is_its_quoted_name() -> None:
    assert source_relation(Source(events="raw.events"), "events") == '"raw"."events"'


def test_a_query_source_renders_as_the_checked_query_in_parentheses() -> None:
    relation = source_relation(Source(events={"sql": "SELECT a -- note\nFROM t"}), "events")
    rendered = Warehouse("duckdb:///unused.duckdb").render(f"SELECT * FROM {relation} AS e")
    assert rendered == "SELECT * FROM (\nSELECT a FROM t\n) AS e"
    # What runs is sqlglot's rendering of what was checked (the comment is gone).


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_parquet('x')",  # a config the validation was bypassed for
        "SELECT * FROM 'events.parquet'",  # an identifier to BigQuery, a file to DuckDB
    ],
)
def test_the_query_is_checked_again_in_the_warehouse_dialect(sql: str) -> None:
    unchecked = SqlSource.model_construct(sql=sql)
    source = Source.model_construct(exposures="exposures", events=unchecked)
    with pytest.raises(SourceQueryError, match=r"^source\.events\.sql: not one read-only"):
        source_relation(source, "events", "duckdb")


def test_a_query_source_reads_in_generated_sql_with_an_alias(warehouse: Warehouse) -> None:
    source = Source(events={"sql": events_query(warehouse)})
    relation = source_relation(source, "events", warehouse.dialect)
    rows = warehouse.query(
        f"SELECT e.unit_id, e.value, e.experiment_key FROM {relation} AS e "
        "WHERE e.event_name = :name",
        {"name": "purchase"},
    )
    # The colon in the query's literal is text, not a bound parameter.
    assert rows == [{"unit_id": "7", "value": 42.0, "experiment_key": "exp:1"}]


def test_source_columns_are_the_query_result_types_as_information_schema_names_them(
    warehouse: Warehouse,
) -> None:
    query = events_query(warehouse)
    columns = source_columns(warehouse, Source(events={"sql": query}), "events")
    text, timestamp, double = RESULT_TYPES[warehouse.dialect]
    assert columns == {
        "unit_id": text,
        "event_name": text,
        "occurred_at": timestamp,
        "value": double,
        "experiment_key": text,
    }
    # The same types the contract check lists for a table made from the query.
    warehouse.execute(f"CREATE TABLE made AS {embedded(query)}")
    assert table_types(warehouse, "made") == columns


@pytest.mark.parametrize(
    ("engine", "cast", "listed"),
    [
        ("snowflake", "CAST(amount AS INTEGER)", "NUMBER"),
        ("snowflake", "CAST(logged_at AS TIMESTAMP_TZ)", "TIMESTAMP_TZ"),
        ("snowflake", "PARSE_JSON('{}')", "VARIANT"),
        pytest.param("spark", "amount", "INTEGER", marks=pytest.mark.slow),
        pytest.param(
            "spark", "CAST(amount AS DECIMAL(10, 2))", "DECIMAL(10,2)", marks=pytest.mark.slow
        ),
        pytest.param(
            "spark", "CAST(logged_at AS TIMESTAMP_LTZ)", "TIMESTAMP", marks=pytest.mark.slow
        ),
    ],
)
def test_result_types_of_snowflake_and_spark_are_named_as_the_contract_check_compares_them(
    engine: str, cast: str, listed: str, request: pytest.FixtureRequest
) -> None:
    """An integer, a decimal, timestamps with a time zone and JSON: each named as the contract
    check names the same type of a table's column, so both fall in the same type family."""
    if engine == "spark":
        warehouse = Warehouse(request.getfixturevalue("spark_url"))
        warehouse.execute("DROP TABLE IF EXISTS typed")
    else:
        warehouse = request.getfixturevalue("snowflake_warehouse")
    warehouse.execute(
        "CREATE TABLE app_log (user_key INTEGER, logged_at TIMESTAMP, amount INTEGER)"
        if engine == "snowflake"
        else "CREATE TABLE IF NOT EXISTS app_log (user_key INTEGER, logged_at TIMESTAMP, "
        "amount INTEGER)"
    )
    query = f"SELECT {cast} AS c FROM app_log"
    assert source_columns(warehouse, Source(events={"sql": query}), "events") == {"c": listed}
    warehouse.execute(f"CREATE TABLE typed AS {embedded(query)}")
    assert table_types(warehouse, "typed") == {"c": listed}


def test_a_source_query_that_does_not_run_names_the_field(warehouse: Warehouse) -> None:
    source = Source(exposures={"sql": "SELECT * FROM no_such_table"})
    with pytest.raises(SourceQueryError, match=r"^source\.exposures\.sql does not run in the"):
        source_columns(warehouse, source, "exposures")


# --- every reader of a source ----------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
REFUND = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
REFUND_SCENARIO = REPO / "simulations" / "refund-query-rewrite.yaml"
FINAL = date(2026, 5, 31)
# Hashed arms and a first event: the assignment gate's both queries read the sources too.
HASHED = {"assignment": "hash", "assignment_check": {"first_event": "page_viewed"}}
QUERIES = QUERY_SOURCES  # the same two queries the parity tests read through


def refund_config(folder: Path, source: dict[str, Any]) -> Path:
    data = {**yaml.safe_load(REFUND.read_text()), **HASHED, "source": source}
    folder.mkdir(parents=True)
    path = folder / "refund-query-rewrite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def readers(url: str, config: ExperimentConfig, results: dict[str, Any]) -> dict[str, Any]:
    """What every reader of the sources outside the run's own stages finds."""
    warehouse = Warehouse(url)
    units = units_table_name(config, FINAL)
    return {
        "results": {k: results[k] for k in ("decision", "decision_reason", "checks", "metrics")},
        # Data-quality sentences name the clock (the future cutoff); the checks' findings stay.
        "gates": {
            **results["gates"],
            "data_quality": [
                {k: v for k, v in check.items() if k != "detail"}
                for check in results["gates"]["data_quality"]["checks"]
            ],
        },
        "srm_diagnosis": srm_diagnosis(warehouse, config, units, failed=True),
        "latest_data_date": latest_data_date(warehouse, config),
        "pre_period": pre_period_moments(warehouse, config, date(2026, 5, 20), 14),
        "enrolment": observed_enrolment(warehouse, config),
        "properties": exposure_property_names(warehouse, config),
        "lint": lint_config(config, warehouse),
    }


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_every_reader_of_a_source_reads_a_query_as_it_reads_the_table(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The readout (extract, every gate, quantile and the rest) and the other readers, with
    the sources as tables and as queries over them: the same findings. On PostgreSQL this is
    also the proof that every use aliases the subquery."""
    if engine == "duckdb":
        url, schema = request.getfixturevalue("duckdb_warehouse").url, None
    else:
        admin, schema = request.getfixturevalue("postgres_schema")
        url = f"{admin.url}?options=-csearch_path%3D{schema}"
    tables = refund_config(tmp_path / "tables", {"exposures": "exposures", "events": "events"})
    queries = refund_config(tmp_path / "queries", QUERIES)
    data = yaml.safe_load(REFUND_SCENARIO.read_text())
    data.pop("assignment")
    scenario = parse_scenario({**data, "first_event": {"event": "page_viewed"}}).with_units(3000)
    simulate(load_config(tables), scenario, url, schema=schema)
    found = []
    for path in (tables, queries):
        ctx = RunContext(path, FINAL, url, tmp_path / "out" / path.parent.name)
        run_pipeline(ctx, deliver=False)
        results = json.loads((ctx.run_dir / "results.json").read_text())
        found.append(readers(url, load_config(path), results))
    through_tables, through_queries = found
    assert through_tables["gates"]["assignment"]["units"] > 1000
    assert through_tables["gates"]["receipt"]["passed"]
    assert "p95_latency_ms" in through_tables["results"]["metrics"]
    assert through_tables["srm_diagnosis"]["by_property"]
    assert through_queries == through_tables


def test_an_engine_whose_result_types_are_not_read_yet_says_so_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every engine here reads them; a new dialect starts without (`reads_result_types`)."""
    from ab_pipeline.warehouse.dialects.bigquery import BigQuery

    monkeypatch.setattr(BigQuery, "reads_result_types", False)
    warehouse = Warehouse("bigquery://project/dataset")
    source = Source(events={"sql": "SELECT * FROM app_log"})
    with pytest.raises(SourceQueryError, match=r"^source\.events\.sql: .* not read on bigquery"):
        source_columns(warehouse, source, "events")
