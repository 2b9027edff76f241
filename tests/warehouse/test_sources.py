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


# --- every reader of a source ----------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
REFUND = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
REFUND_SCENARIO = REPO / "simulations" / "refund-query-rewrite.yaml"
FINAL = date(2026, 5, 31)
# Hashed arms and a first event: the assignment gate's both queries read the sources too.
HASHED = {"assignment": "hash", "assignment_check": {"first_event": "page_viewed"}}
QUERIES = {
    "exposures": {
        "sql": "SELECT experiment_key, unit_id, arm, exposed_at, is_internal, is_bot, "
        "properties FROM exposures WHERE experiment_key IS NOT NULL"
    },
    "events": {
        "sql": "SELECT unit_id, event_name, occurred_at, value, experiment_key FROM events "
        "WHERE event_name IS NOT NULL"
    },
}


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


def test_an_engine_whose_result_types_are_not_read_yet_says_so_naming_the_field() -> None:
    warehouse = Warehouse("snowflake://user:pw@account/db/schema")
    source = Source(events={"sql": "SELECT * FROM app_log"})
    with pytest.raises(SourceQueryError, match=r"^source\.events\.sql: .* not read on snowflake"):
        source_columns(warehouse, source, "events")
