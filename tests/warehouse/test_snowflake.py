"""Snowflake: URLs, name case in rendering, and the connector dialect against a fakesnow server."""

from __future__ import annotations

from pathlib import Path

import pytest

from ab_pipeline.warehouse import (
    Warehouse,
    engine_url,
    url_from_connection_fields,
)
from ab_pipeline.warehouse.dialects import dialect_named

SNOWFLAKE = dialect_named("snowflake")


def test_lower_case_quoted_names_are_sent_as_snowflake_upper_case_names() -> None:
    rendered = SNOWFLAKE.render('SELECT "value", x.unit_id FROM "exposures" AS x')
    assert rendered == 'SELECT "VALUE", x.unit_id FROM "EXPOSURES" AS x'


def test_a_capitalised_name_keeps_its_case() -> None:
    assert SNOWFLAKE.render('SELECT "Revenue" FROM "Raw"."Events"') == (
        'SELECT "Revenue" FROM "Raw"."Events"'
    )


def test_stored_names_are_upper_case_unless_capitalised() -> None:
    assert SNOWFLAKE.stored_name("exposures") == "EXPOSURES"
    assert SNOWFLAKE.stored_name("Exposures") == "Exposures"
    assert dialect_named("postgresql").stored_name("exposures") == "exposures"


def test_a_snowflake_url_selects_the_connector_dialect() -> None:
    url = "snowflake://u:p@acct/DB/SCH?warehouse=WH&host=127.0.0.1&port=8080&protocol=http"
    assert engine_url(url) == (
        "snowflake+ab_connector://u:p@acct/DB/SCH"
        "?warehouse=WH&host=127.0.0.1&port=8080&protocol=http"
    )
    from sqlalchemy.engine import make_url

    sa_url = make_url(engine_url(url))
    _, args = sa_url.get_dialect()().create_connect_args(sa_url)
    assert args["account"] == "acct" and args["database"] == "DB" and args["schema"] == "SCH"
    assert args["port"] == 8080 and args["protocol"] == "http" and args["warehouse"] == "WH"
    assert args["autocommit"] is False


def test_an_airflow_snowflake_connection_becomes_a_url() -> None:
    extra = {"account": "myorg-acct", "database": "ANALYTICS", "warehouse": "WH", "role": "R"}
    url = url_from_connection_fields("snowflake", None, "me", "p@ss", None, "PUBLIC", extra)
    assert url == "snowflake://me:p%40ss@myorg-acct/ANALYTICS/PUBLIC?warehouse=WH&role=R"


def test_a_snowflake_connection_without_account_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match=r"extra\.account and extra\.database"):
        url_from_connection_fields("snowflake", None, "me", "p", None, "PUBLIC", {})


def test_the_connector_writes_reads_and_finds_tables_on_fakesnow(fakesnow_url: str) -> None:
    warehouse = Warehouse(fakesnow_url)
    warehouse.execute(
        [
            'CREATE TABLE "probe" (unit_id TEXT, "value" DOUBLE PRECISION, seen_at TIMESTAMP)',
            "INSERT INTO \"probe\" VALUES ('u1', 1.5, TIMESTAMP '2026-05-04 10:00:00')",
        ]
    )
    rows = warehouse.query('SELECT unit_id, "value" FROM "probe" WHERE unit_id = :u', {"u": "u1"})
    assert rows == [{"unit_id": "u1", "value": 1.5}]
    assert warehouse.table_exists("probe") and not warehouse.table_exists("absent")
    stored = warehouse.query(
        "SELECT table_name FROM information_schema.tables WHERE table_name = 'PROBE'"
    )
    assert stored == [{"table_name": "PROBE"}]


def test_a_failed_statement_rolls_back_the_whole_transaction(fakesnow_url: str) -> None:
    warehouse = Warehouse(fakesnow_url)
    warehouse.execute('CREATE TABLE "tx" (n INTEGER)')
    with pytest.raises(Exception, match="no_such_table|does not exist"):
        warehouse.execute(['INSERT INTO "tx" VALUES (1)', 'INSERT INTO "no_such_table" VALUES (2)'])
    assert warehouse.query('SELECT COUNT(*) AS n FROM "tx"') == [{"n": 0}]


def test_simulate_loads_a_scenario_into_fakesnow(fakesnow_url: str) -> None:
    from ab_pipeline.devtools.simulate import main_simulate

    repo = Path(__file__).resolve().parents[2]
    scenario = repo / "simulations" / "refund-query-rewrite.yaml"
    assert main_simulate(["--warehouse", fakesnow_url, "--units", "2000", str(scenario)]) == 0
    warehouse = Warehouse(fakesnow_url)
    [row] = warehouse.query(
        "SELECT COUNT(DISTINCT unit_id) AS units, COUNT(properties) AS with_properties, "
        "COUNT(*) AS n FROM exposures"
    )
    assert 1900 <= row["units"] <= 2000 and row["with_properties"] == row["n"]
    [events] = warehouse.query("SELECT COUNT(*) AS n, COUNT(value) AS v FROM events")
    assert events["n"] > 5000 and 0 < events["v"] < events["n"]


def test_exposure_property_names_are_listed_on_snowflake(fakesnow_url: str) -> None:
    """The canonical set-returning `unnest(json_keys(...))` is transpiled into a FLATTEN."""
    from ab_pipeline.core.config import load_config
    from ab_pipeline.devtools.lint import exposure_property_names
    from ab_pipeline.devtools.simulate import main_simulate

    repo = Path(__file__).resolve().parents[2]
    scenario = repo / "simulations" / "refund-query-rewrite.yaml"
    assert main_simulate(["--warehouse", fakesnow_url, "--units", "500", str(scenario)]) == 0
    config = load_config(repo / "dags" / "experiments" / "refund-query-rewrite.yaml")
    names = exposure_property_names(Warehouse(fakesnow_url), config)
    assert {"decoder", "generator", "index"} <= set(names)
    assert all(not name.startswith('"') for name in names)
