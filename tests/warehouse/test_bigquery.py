"""BigQuery's client side without a server: URLs, typed query parameters, the session each
job belongs to, and the contract check's catalog query. tests/test_bigquery_parity.py runs
all of it against a BigQuery emulator."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlglot

from ab_pipeline.warehouse import Warehouse
from ab_pipeline.warehouse.dialects.base import plain_value
from ab_pipeline.warehouse.dialects.bigquery import (
    BigQuerySession,
    bigquery_target,
    query_parameters,
)

URL = "bigquery://my-project/ab?api_endpoint=http://127.0.0.1:9050&location=EU"


def test_a_bigquery_url_names_project_default_dataset_and_client_settings() -> None:
    assert bigquery_target(URL) == (
        "my-project",
        "ab",
        {"api_endpoint": "http://127.0.0.1:9050", "location": "EU"},
    )
    assert bigquery_target("bigquery://my-project") == ("my-project", None, {})
    with pytest.raises(ValueError, match="PROJECT"):
        bigquery_target("bigquery:///ab")


def test_bigquery_is_reached_through_its_own_client_not_sqlalchemy() -> None:
    warehouse = Warehouse(URL)
    assert isinstance(warehouse.sql_dialect.session(URL), BigQuerySession)
    with pytest.raises(ValueError, match="not a SQLAlchemy URL"):
        warehouse.engine()


def test_only_the_parameters_a_statement_uses_are_sent_each_typed_from_its_value() -> None:
    sql = "SELECT @flag, @n, @x, @d, @at, @day, @name, @none, @names"
    params = {
        "flag": True,
        "n": 3,
        "x": 0.5,
        "d": Decimal("1.25"),
        "at": dt.datetime(2026, 4, 1, 12, 30),
        "day": dt.date(2026, 4, 1),
        "name": "control",
        "none": None,
        "names": ["a", "b"],
        "unused": 1,
    }
    sent = {p.name: p for p in query_parameters(sql, params)}
    assert set(sent) == set(params) - {"unused"}
    types = {name: getattr(p, "type_", None) for name, p in sent.items()}
    assert types == {
        "flag": "BOOL",
        "n": "INT64",
        "x": "FLOAT64",
        "d": "NUMERIC",
        "at": "TIMESTAMP",
        "day": "DATE",
        "name": "STRING",
        "none": "STRING",
        "names": None,
    }
    # A naive datetime is UTC wall-clock time, made explicit for the client.
    assert sent["at"].value == dt.datetime(2026, 4, 1, 12, 30, tzinfo=dt.UTC)
    assert sent["names"].array_type == "STRING" and sent["names"].values == ["a", "b"]


def test_values_read_back_are_the_pipelines_python() -> None:
    assert plain_value(Decimal("2.5")) == 2.5
    moment = dt.datetime(2026, 4, 1, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert plain_value(moment) == dt.datetime(2026, 4, 1, 12, 30)


def test_a_job_starts_a_session_joins_one_or_has_none() -> None:
    session = BigQuerySession(URL)
    first = session.job_config("SELECT @n", {"n": 1}, new=True)
    assert first.create_session is True and not first.connection_properties
    assert first.default_dataset.dataset_id == "ab"
    later = session.job_config("SELECT 1", {}, "session-1")
    assert not later.create_session
    assert [(p.key, p.value) for p in later.connection_properties] == [("session_id", "session-1")]
    alone = session.job_config("SELECT 1", {})
    assert not alone.create_session and not alone.connection_properties


def test_without_a_default_dataset_jobs_have_none_and_bare_names_name_no_table() -> None:
    session = BigQuerySession("bigquery://my-project?api_endpoint=http://127.0.0.1:9")
    assert session.job_config("SELECT 1", {}).default_dataset is None
    assert session.table_exists("ab_decisions") is False  # asks no server
    assert session.table_id('"ab"."exposures"') == "my-project.ab.exposures"
    with pytest.raises(ValueError, match="names no dataset"):
        session.table_id("exposures")


def test_the_contract_check_reads_each_tables_dataset_information_schema() -> None:
    dialect = Warehouse(URL).sql_dialect
    tables = {"exposures": '"exposures"', "events": '"other"."events"'}
    sql = dialect.render(str(dialect.column_types_sql(URL, tables)))
    assert "FROM `ab`.INFORMATION_SCHEMA.COLUMNS AS c WHERE c.table_name = 'exposures'" in sql
    assert "FROM `other`.INFORMATION_SCHEMA.COLUMNS AS c WHERE c.table_name = 'events'" in sql
    # BigQuery's type names as the suite spells them; DATETIME is the contract's TIMESTAMP.
    assert "WHEN 'BOOL' THEN 'BOOLEAN' WHEN 'FLOAT64' THEN 'DOUBLE'" in sql
    assert "WHEN 'DATETIME' THEN 'TIMESTAMP' " in sql
    assert "WHEN 'TIMESTAMP' THEN 'TIMESTAMP WITH TIME ZONE'" in sql
    sqlglot.parse_one(sql, read="bigquery")
    with pytest.raises(ValueError, match="names no dataset"):
        dialect.column_types_sql("bigquery://p", {"exposures": '"exposures"'})
