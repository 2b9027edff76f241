"""Shared fixtures: real DuckDB files and a throwaway schema on the machine's PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.warehouse import Warehouse, dispose_all

REPO_ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("AB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# `make test` runs the suite on two pytest-xdist workers (`--dist loadgroup`). Every test that
# uses one of a group's session fixtures runs on the same worker, so a Spark server, a fakesnow
# server, the parity baseline, the real pipeline runs or Chromium is started or made once; every
# other test stays with its module, whose module fixtures are then made once too.
SHARED_SESSION_GROUPS = (
    ("warehouse-servers", frozenset({"spark_url", "fakesnow_url", "duckdb_parity_baseline"})),
    ("real-runs", frozenset({"real_pipeline_runs", "chromium"})),
)


def worker_group(item: pytest.Item) -> str:
    """The xdist group of a test: the first shared-session group whose fixtures it uses, else
    its module."""
    used = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "spark" in callspec.params.values():
        used.add("spark_url")  # an engine-parametrized target asks for the server itself
    for group, fixtures in SHARED_SESSION_GROUPS:
        if used & fixtures:
            return group
    return item.nodeid.split("::")[0]


def pytest_itemcollected(item: pytest.Item) -> None:
    # Marked as it is collected: xdist reads the marks in its own collection hook.
    item.add_marker(pytest.mark.xdist_group(worker_group(item)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The shared-session groups are the longest: handed out first, so that neither worker
    # starts one when the other has nearly finished (the sort is stable; within a group, and
    # among the modules, collection order stays).
    rank = {group: index for index, (group, _) in enumerate(SHARED_SESSION_GROUPS)}

    def order(item: pytest.Item) -> int:
        mark = item.get_closest_marker("xdist_group")
        return rank.get(mark.args[0] if mark else "", len(rank))

    items.sort(key=order)


@pytest.fixture
def executed_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement `Warehouse.execute` runs during the test, in order (and run as usual)."""
    statements: list[str] = []
    execute = Warehouse.execute

    def recording(self: Warehouse, sql: Any, *args: Any, **kwargs: Any) -> None:
        statements.extend([sql] if isinstance(sql, str) else sql)
        execute(self, sql, *args, **kwargs)

    monkeypatch.setattr(Warehouse, "execute", recording)
    return statements


@pytest.fixture
def duckdb_warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    yield Warehouse(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    dispose_all()


@pytest.fixture(scope="session")
def fakesnow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fakesnow server (Snowflake's API over DuckDB, tests/snowflake_server.py) for the
    session, its URL naming the PUBLIC schema; `snowflake_warehouse` gives a test a schema
    of its own."""
    from tests.snowflake_server import serving_fakesnow

    with serving_fakesnow(tmp_path_factory.mktemp("fakesnow")) as url:
        yield url
        dispose_all()


@pytest.fixture
def snowflake_warehouse(fakesnow_url: str) -> Iterator[Warehouse]:
    """A fresh schema on the fakesnow server (created when the connection names it)."""
    schema = f"AB_TEST_{uuid.uuid4().hex[:10].upper()}"
    yield Warehouse(fakesnow_url.replace("/PUBLIC?", f"/{schema}?"))
    dispose_all()


@pytest.fixture
def postgres_schema() -> Iterator[tuple[Warehouse, str]]:
    """A fresh schema in the real PostgreSQL, dropped afterwards."""
    warehouse = Warehouse(POSTGRES_URL)
    schema = f"ab_test_{uuid.uuid4().hex[:10]}"
    warehouse.execute(f"CREATE SCHEMA {schema}")
    try:
        yield warehouse, schema
    finally:
        warehouse.execute(f"DROP SCHEMA {schema} CASCADE")
        dispose_all()


@pytest.fixture(scope="session")
def real_pipeline_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Real pipeline outputs of every decision kind (tests/browser/real_runs.py), run once for
    the session: the brief's tests read them as text and in Chromium. Tests only read them."""
    from tests.browser.real_runs import real_results

    root = tmp_path_factory.mktemp("real")
    return root, real_results(root)


@pytest.fixture(scope="session")
def duckdb_parity_baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The engines' parity baseline, made once for the session: every sample scenario simulated
    into one DuckDB file and every sample config (plus onboarding-checklist with a ratio and a
    CUPED metric) read out on it in-process (tests/test_postgres_parity.py, `run_all`). The
    PostgreSQL and Snowflake parity modules compare their engine's readouts of the same seeded
    data with these. Tests only read them; `url` may be read out again (another config)."""
    from ab_pipeline.devtools.simulate import main_simulate
    from tests.test_postgres_parity import run_all, with_ratio_and_cuped

    root = tmp_path_factory.mktemp("duckdb_parity")
    url = f"duckdb:///{root / 'warehouse.duckdb'}"
    assert main_simulate(["--warehouse", url]) == 0
    variant = with_ratio_and_cuped(root / "variant")
    return {"url": url, "variant": variant, "runs": run_all(url, root / "runs", variant)}


@pytest.fixture(scope="session")
def spark_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Spark Connect server (local[2], 1 GB driver), started once per test session and
    only when a test asks for it (~20-40 s); its URL `sc://127.0.0.1:<port>`."""
    from ab_pipeline.devtools.spark_server import SparkConnectServer

    server = SparkConnectServer(tmp_path_factory.mktemp("spark-connect"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def spark_database(spark_url: str) -> Iterator[str]:
    """A database of the test's own on the session's Spark server, dropped afterwards."""
    warehouse = Warehouse(spark_url)
    database = f"ab_test_{uuid.uuid4().hex[:10]}"
    warehouse.execute(f"CREATE DATABASE {database}")
    try:
        yield database
    finally:
        warehouse.execute(f"DROP DATABASE {database} CASCADE")
