"""One DuckDB file, several processes: connections wait for the file instead of failing.

Every holder here is a real second process (DuckDB's own lock is per process), started with a
script that opens the file the way the named mode says and reports when it holds it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ab_pipeline.warehouse import Warehouse, dispose_all, engine_url, warehouse_lock
from ab_pipeline.warehouse.warehouse_lock import WarehouseLockTimeout

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
mode, path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
if mode == "raw":  # a process outside the lock (the DuckDB CLI, a bulk loader)
    import duckdb
    con = duckdb.connect(path)
else:
    from sqlalchemy import text
    from ab_pipeline.warehouse import Warehouse
    con = Warehouse(f"duckdb:///{path}").engine(read_only=mode == "read").connect()
    con.execute(text("SELECT 1"))
print("holding", flush=True)
time.sleep(seconds)
con.close()
"""


@contextmanager
def holder(mode: str, path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, mode, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "holding"
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def warehouse(duckdb_warehouse: Warehouse) -> Warehouse:
    duckdb_warehouse.execute(["CREATE TABLE t (i INTEGER)", "INSERT INTO t VALUES (1)"])
    return duckdb_warehouse


def database(warehouse: Warehouse) -> Path:
    return Path(warehouse.url.removeprefix("duckdb:///"))


def test_a_writer_waits_for_another_process_writing(warehouse: Warehouse) -> None:
    with holder("write", database(warehouse), 2.0):
        began = time.monotonic()
        warehouse.execute("INSERT INTO t VALUES (2)")
        waited = time.monotonic() - began
    assert waited > 1.0  # it waited for the holder's connection to close, then wrote
    assert warehouse.query("SELECT COUNT(*) AS n FROM t") == [{"n": 2}]


def test_a_wait_that_times_out_names_the_file_and_its_writer(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(warehouse_lock.LOCK_TIMEOUT_ENV, "0.5")
    path = database(warehouse)
    with holder("write", path, 30) as process, pytest.raises(WarehouseLockTimeout) as caught:
        warehouse.query("SELECT COUNT(*) AS n FROM t")
    message = str(caught.value)
    assert str(path) in message and f"pid {process.pid}" in message
    assert warehouse_lock.LOCK_TIMEOUT_ENV in message
    assert not warehouse_lock.holds(str(path))  # nothing left half-acquired


def test_readers_share_the_file(warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(warehouse_lock.LOCK_TIMEOUT_ENV, "3")
    with holder("read", database(warehouse), 30):
        assert warehouse.query("SELECT COUNT(*) AS n FROM t") == [{"n": 1}]
        assert warehouse.table_exists("t")
        with pytest.raises(WarehouseLockTimeout):  # a writer waits for the reader
            warehouse.execute("INSERT INTO t VALUES (3)")


def test_a_process_outside_the_lock_is_waited_for(warehouse: Warehouse) -> None:
    with holder("raw", database(warehouse), 1.5):
        warehouse.execute("INSERT INTO t VALUES (4)")  # DuckDB's lock error is retried
    assert warehouse.query("SELECT MAX(i) AS i FROM t") == [{"i": 4}]


def test_any_engine_on_the_file_holds_the_lock_while_its_pool_keeps_it_open(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Great Expectations builds its own pooled engine from the URL: it must lock like ours."""
    warehouse_lock.install()
    dispose_all()
    pooled = create_engine(engine_url(warehouse.url))  # QueuePool, as GX makes it
    with pooled.connect() as connection:
        connection.execute(text("INSERT INTO t VALUES (5)"))
        connection.commit()
    # Returned to the pool, the DuckDB file is still open in this process: others must wait.
    done = subprocess.run(
        [sys.executable, "-c", HOLDER, "write", str(database(warehouse)), "0"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), warehouse_lock.LOCK_TIMEOUT_ENV: "0.5"},
        timeout=60,
    )
    assert done.returncode != 0 and "WarehouseLockTimeout" in done.stderr
    pooled.dispose()
    with holder("write", database(warehouse), 0):
        pass  # after dispose the other process gets the file
