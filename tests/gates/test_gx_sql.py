"""The DuckDB adapter for GX's SQL datasource (ab_pipeline/gates/gx_sql.py).

These tests pin why the adapter exists, so a GX upgrade cannot change it silently:
- `test_duckdb_validation_errors_without_the_adapter` failing means GX fixed the bug upstream:
  delete the adapter;
- `test_duckdb_validation_passes_with_the_adapter` failing means the upgrade broke the adapter.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.gates import gx_sql
from ab_pipeline.warehouse import Warehouse


@pytest.fixture(scope="module")
def gx_context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


@pytest.fixture(scope="module")
def duckdb_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("gx_sql") / "warehouse.duckdb"
    url = f"duckdb:///{path}"
    Warehouse(url).execute(
        [
            "CREATE TABLE units (unit_id TEXT, arm TEXT)",
            "INSERT INTO units SELECT 'u' || CAST(i AS TEXT), CASE WHEN i % 2 = 0 "
            "THEN 'control' ELSE 'treatment' END FROM range(100) AS r(i)",
            "INSERT INTO units VALUES ('u7', 'ctrl')",  # one duplicate id with an unknown arm
        ]
    )
    return url


@pytest.fixture
def adapter_removed() -> Iterator[None]:
    """Run a test on GX as shipped, then restore whatever state the process was in."""
    was_installed = gx_sql.duckdb_adapter_installed()
    gx_sql.uninstall_duckdb_adapter()
    try:
        yield
    finally:
        if was_installed:
            gx_sql.install_duckdb_adapter()


def validate(context: Any, url: str) -> list[Any]:
    """Four pushed-down expectations of the kinds the gate uses, on a table asset."""
    import great_expectations as gx

    name = f"w_{uuid.uuid4().hex}"
    datasource = context.data_sources.add_sql(name=name, connection_string=url)
    try:
        asset = datasource.add_table_asset(name="units", table_name="units")
        batch = asset.add_batch_definition_whole_table("whole").get_batch()
        suite = gx.ExpectationSuite(
            name="adapter",
            expectations=[
                gx.expectations.ExpectColumnValuesToNotBeNull(column="unit_id"),
                gx.expectations.ExpectColumnValuesToBeInSet(
                    column="arm", value_set={"$PARAMETER": "arms"}
                ),
                gx.expectations.ExpectColumnValuesToBeUnique(column="unit_id"),
                gx.expectations.UnexpectedRowsExpectation(
                    unexpected_rows_query="SELECT unit_id FROM {batch} WHERE arm = 'ctrl'"
                ),
            ],
        )
        outcome = batch.validate(
            suite,
            expectation_parameters={"arms": ["control", "treatment"]},
            result_format="SUMMARY",
        )
        return list(outcome.results)
    finally:
        datasource.get_execution_engine().engine.dispose()
        context.data_sources.delete(name)


def test_duckdb_validation_errors_without_the_adapter(
    adapter_removed: None, gx_context: Any, duckdb_url: str
) -> None:
    results = {r.expectation_config.type: r for r in validate(gx_context, duckdb_url)}
    raised = {kind: bool(_error(r.exception_info)) for kind, r in results.items()}
    assert all(raised.values()), (
        "GX now runs (some) expectations on DuckDB without ab_pipeline/gates/gx_sql.py: "
        f"remove the adapter if all of them do. Raised: {raised}"
    )
    # The documented symptom: the column metrics' bundle comes back empty.
    not_null = results["expect_column_values_to_not_be_null"]
    assert _error(not_null.exception_info) == "list index out of range"


def _error(info: dict[str, Any]) -> str | None:
    """The exception message GX recorded for an expectation (flat or per metric), if any."""
    if info.get("raised_exception"):
        return str(info["exception_message"])
    messages = [_error(v) for v in info.values() if isinstance(v, dict)]
    return next((m for m in messages if m), None)


def test_duckdb_validation_passes_with_the_adapter(gx_context: Any, duckdb_url: str) -> None:
    gx_sql.prepare_gx_for(duckdb_url)
    results = {r.expectation_config.type: r for r in validate(gx_context, duckdb_url)}
    assert all(_error(r.exception_info) is None for r in results.values())
    assert results["expect_column_values_to_not_be_null"].success
    in_set = results["expect_column_values_to_be_in_set"]
    assert not in_set.success and in_set.result["unexpected_count"] == 1
    assert in_set.result["partial_unexpected_list"] == ["ctrl"]
    unique = results["expect_column_values_to_be_unique"]
    assert not unique.success and unique.result["unexpected_count"] == 2
    rows = results["unexpected_rows_expectation"]
    assert not rows.success and rows.result["observed_value"] == 1


def test_install_is_idempotent_and_reversible(adapter_removed: None) -> None:
    from great_expectations.execution_engine.sqlalchemy_execution_engine import (
        SqlAlchemyExecutionEngine,
    )

    shipped = SqlAlchemyExecutionEngine.__dict__["_execute_query_with_recovery"]
    gx_sql.install_duckdb_adapter()
    gx_sql.install_duckdb_adapter()
    installed = SqlAlchemyExecutionEngine._execute_query_with_recovery
    assert gx_sql.duckdb_adapter_installed()
    assert installed.__wrapped__ is shipped.__func__  # wrapped once, not twice
    gx_sql.uninstall_duckdb_adapter()
    assert SqlAlchemyExecutionEngine.__dict__["_execute_query_with_recovery"] is shipped


def test_adapter_is_installed_only_for_duckdb_urls(adapter_removed: None) -> None:
    gx_sql.prepare_gx_for("postgresql://postgres@127.0.0.1:5432/test")
    assert not gx_sql.duckdb_adapter_installed()
    gx_sql.prepare_gx_for("duckdb:///anything.duckdb")
    assert gx_sql.duckdb_adapter_installed()


def test_only_duckdb_results_are_buffered(duckdb_url: str) -> None:
    from great_expectations.execution_engine.sqlalchemy_execution_engine import (
        SqlAlchemyExecutionEngine,
    )
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import CursorResult

    from tests.conftest import POSTGRES_URL

    gx_sql.install_duckdb_adapter()
    execute = SqlAlchemyExecutionEngine._execute_query_with_recovery
    for url, buffered in ((duckdb_url, True), (POSTGRES_URL, False)):
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
        try:
            with engine.connect() as connection:
                result = execute(connection, text("SELECT 1 AS one"))
                assert isinstance(result, CursorResult) is not buffered, url
            assert result.fetchall() == [(1,)]  # readable after the connection closed
        finally:
            engine.dispose()
