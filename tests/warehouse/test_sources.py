"""A source in generated SQL (`source_relation`) and a source query's result types
(`source_columns`), on a real DuckDB file and the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ab_pipeline.core.config import Source, SqlSource
from ab_pipeline.warehouse import Warehouse
from ab_pipeline.warehouse.sources import SourceQueryError, source_columns, source_relation

EVENTS_QUERY = (
    "SELECT CAST(user_key AS TEXT) AS unit_id, action AS event_name, logged_at AS occurred_at, "
    "CAST(amount AS DOUBLE PRECISION) AS value, 'exp:1' AS experiment_key FROM app_log"
)


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse(request: pytest.FixtureRequest) -> Iterator[Warehouse]:
    """A warehouse holding a team's own table, `app_log`, in its default schema."""
    if request.param == "duckdb":
        found: Warehouse = request.getfixturevalue("duckdb_warehouse")
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


def test_a_table_source_is_its_quoted_name() -> None:
    assert source_relation(Source(events="raw.events"), "events") == '"raw"."events"'


def test_a_query_source_is_the_checked_query_in_parentheses() -> None:
    relation = source_relation(Source(events={"sql": "SELECT a -- note\nFROM t"}), "events")
    assert relation.startswith("(") and relation.endswith(")")
    assert "note" not in relation  # what runs is sqlglot's rendering of what was checked


def test_the_query_is_checked_again_when_it_is_written_into_sql() -> None:
    # A config the validation was bypassed for (model_construct): the run still refuses it.
    unchecked = SqlSource.model_construct(sql="SELECT * FROM read_parquet('x')")
    source = Source.model_construct(exposures="exposures", events=unchecked)
    with pytest.raises(SourceQueryError, match=r"^source\.events\.sql: not one read-only"):
        source_relation(source, "events", "duckdb")


def test_a_query_source_reads_in_generated_sql_with_an_alias(warehouse: Warehouse) -> None:
    relation = source_relation(Source(events={"sql": EVENTS_QUERY}), "events", warehouse.dialect)
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
    columns = source_columns(warehouse, Source(events={"sql": EVENTS_QUERY}), "events")
    duckdb = warehouse.dialect == "duckdb"
    assert columns == {
        "unit_id": "VARCHAR" if duckdb else "TEXT",
        "event_name": "VARCHAR" if duckdb else "TEXT",
        "occurred_at": "TIMESTAMP" if duckdb else "TIMESTAMP WITHOUT TIME ZONE",
        "value": "DOUBLE" if duckdb else "DOUBLE PRECISION",
        "experiment_key": "VARCHAR" if duckdb else "TEXT",
    }
    # The same types information_schema gives for a table made from the query.
    warehouse.execute(f"CREATE TABLE made AS {EVENTS_QUERY}")
    rows = warehouse.query(
        "SELECT column_name, UPPER(data_type) AS t FROM information_schema.columns "
        "WHERE table_name = 'made' AND table_schema = current_schema()"
    )
    assert {r["column_name"]: r["t"] for r in rows} == columns


def test_a_source_query_that_does_not_run_names_the_field(warehouse: Warehouse) -> None:
    source = Source(exposures={"sql": "SELECT * FROM no_such_table"})
    with pytest.raises(SourceQueryError, match=r"^source\.exposures\.sql does not run in the"):
        source_columns(warehouse, source, "exposures")
