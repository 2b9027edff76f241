"""Make Great Expectations' SQL datasource work on DuckDB (GX Core 1.24.1, pinned).

The problem: `SqlAlchemyExecutionEngine.execute_query` runs the query inside
`with self.get_connection() as connection:` and returns the cursor result *after* that block
has closed the connection. PostgreSQL's driver has already buffered the rows client-side, so
that works there; DuckDB drops a result whose connection closed, every metric query comes back
empty and each expectation errors with `IndexError` in `resolve_metric_bundle`.

The fix: buffer rows-returning results while the connection is still open. GX runs every query
through the static helper `_execute_query_with_recovery(connection, query)`, called inside that
block by both `execute_query` and `execute_query_in_transaction`; wrapping it to return
`result.freeze()()` (SQLAlchemy's frozen, fully fetched copy, replayed as a result) is the
smallest change that reaches inside the block. Only DuckDB connections are touched, so a
PostgreSQL validation in the same process runs GX's code unchanged.

Buffering fetches the whole result. GX's metric queries are aggregates or carry a LIMIT; the
gate's own `UnexpectedRowsExpectation` queries are shaped to return at most a few rows (see
`data_quality`), so nothing large is ever held in memory.

Locking: see `prepare_gx_for` and `ab_pipeline.warehouse.warehouse_lock`.

`tests/gates/test_gx_sql.py` checks both directions on every GX upgrade: DuckDB validation must
still fail without the adapter (else the adapter can go) and pass with it.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
from typing import Any

from ab_pipeline.warehouse import dialect_of

_TARGET = "_execute_query_with_recovery"
_MARK = "_ab_pipeline_duckdb_adapter"
# The staticmethod object the adapter replaced, kept so tests can put it back.
_original: Any = None


def _engine_class() -> type:
    # Imported here: great_expectations costs seconds to import and this module is cheap.
    from great_expectations.execution_engine.sqlalchemy_execution_engine import (
        SqlAlchemyExecutionEngine,
    )

    if _TARGET not in vars(SqlAlchemyExecutionEngine):
        # A GX upgrade moved the internals this adapter relies on: fail loudly, not silently.
        raise RuntimeError(
            f"great_expectations {_gx_version()} has no SqlAlchemyExecutionEngine.{_TARGET}; "
            "the DuckDB adapter in ab_pipeline/gates/gx_sql.py needs updating"
        )
    return SqlAlchemyExecutionEngine


def _gx_version() -> str:
    import great_expectations

    return str(great_expectations.__version__)


def _buffering(original: Any) -> Any:
    """Wrap GX's query helper so DuckDB results are fetched before the connection closes."""

    @functools.wraps(original)
    def execute(connection: Any, query: Any) -> Any:
        result = original(connection, query)
        if connection.dialect.name == "duckdb" and result.returns_rows:
            return result.freeze()()
        return result

    setattr(execute, _MARK, True)
    return staticmethod(execute)


def duckdb_adapter_installed() -> bool:
    return bool(getattr(getattr(_engine_class(), _TARGET), _MARK, False))


def install_duckdb_adapter() -> None:
    """Patch GX once per process; calling it again is a no-op."""
    global _original
    engine_class = _engine_class()
    if duckdb_adapter_installed():
        return
    _original = vars(engine_class)[_TARGET]
    setattr(engine_class, _TARGET, _buffering(_original.__func__))


def uninstall_duckdb_adapter() -> None:
    """Restore GX's own helper (tests use it to show the adapter is still needed)."""
    global _original
    if _original is not None and duckdb_adapter_installed():
        setattr(_engine_class(), _TARGET, _original)
        _original = None


def prepare_gx_for(url: str) -> None:
    """Install the adapter if, and only if, `url` is a DuckDB warehouse.

    GX builds its own engine (with a connection pool) from the URL; the warehouse lock hook
    makes that engine's connections wait for the DuckDB file like the pipeline's own, and hold
    its lock until the pool is disposed (`data_quality` disposes it after each validation).
    """
    if dialect_of(url) == "duckdb":
        from ab_pipeline.warehouse import warehouse_lock

        warehouse_lock.install()
        install_duckdb_adapter()
        mute_teardown_leak_report()


@functools.cache
def mute_teardown_leak_report() -> None:
    """Send stderr to /dev/null once the interpreter starts tearing down.

    With GX and duckdb_engine both loaded, or after `gc.freeze()` (the `ab-pipeline` command),
    DuckDB's nanobind bindings print pages of "leaked instance" lines while modules are
    finalised (`python -c "import great_expectations, duckdb_engine"` shows it). They are
    harmless, but they bury a process's last real lines (pytest's summary, a task's log).
    atexit handlers run before that finalisation and after every line the program itself
    writes.
    """

    def _mute() -> None:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)

    atexit.register(_mute)
