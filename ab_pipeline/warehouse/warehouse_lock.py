"""One embedded DuckDB file, many processes: a connection waits for the file instead of failing.

DuckDB lets one process at a time open a database file for writing (any number may open it
read-only when nobody writes). Under a parallel scheduler (LocalExecutor, several gate tasks,
several experiments, a concurrent `ab-pipeline decide`) the second process used to fail at once
with "Could not set lock on file ... Conflicting lock is held".

Here every DuckDB connection made through SQLAlchemy (the pipeline's engines, Great
Expectations' engine, any other) first takes an advisory `flock` on `<database file>.lock`:
exclusive for a read-write connection, shared for a read-only one, held from just before DuckDB
opens the file until just after the connection is closed. Waiting processes poll with a short
backoff up to `$AB_PIPELINE_WAREHOUSE_LOCK_TIMEOUT` seconds (default 1800: a large extract takes
minutes), then raise `WarehouseLockTimeout` naming the file and its last writer. A DuckDB lock
error that still happens (a process that does not use this lock, such as the DuckDB CLI or
`ab-pipeline simulate`'s bulk writer) is retried within the same deadline.

Within one process the lock is re-entrant: a nested connection (an inspector inside an open
transaction, a GX engine's pooled connection next to a query) counts up instead of waiting on
itself, and a read-only request while the process holds the file for writing opens it
read-write (DuckDB refuses two configurations of one file in one process). A child forked
while the lock is held does not inherit the bookkeeping.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LOCK_TIMEOUT_ENV = "AB_PIPELINE_WAREHOUSE_LOCK_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 1800.0
_LOG_WAITS_OVER = 0.2  # seconds: shorter waits are not worth a log line


class WarehouseLockTimeout(TimeoutError):
    """The warehouse file stayed locked by another process for longer than the timeout."""

    def __init__(self, database: str, waited: float, holder: str) -> None:
        super().__init__(
            f"timed out after {waited:.0f} s waiting for the DuckDB warehouse {database} "
            f"(lock file {lock_file(database)}; last writer: {holder or 'unknown'}); "
            f"raise ${LOCK_TIMEOUT_ENV} or find the process that keeps the file open"
        )
        self.database = database


class WarehouseMissing(FileNotFoundError):
    """The DuckDB file's folder does not exist (a typo in the warehouse URL)."""


@dataclass
class _Held:
    fd: int
    shared: bool
    count: int


_held: dict[str, _Held] = {}
_guard = threading.RLock()


def lock_file(database: str) -> str:
    return f"{database}.lock"


def lock_timeout() -> float:
    value = os.environ.get(LOCK_TIMEOUT_ENV)
    if not value:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"${LOCK_TIMEOUT_ENV} must be seconds, not {value!r}") from None


def acquire(database: str, shared: bool, deadline: float) -> bool:
    """Hold the file's lock (re-entrant in this process); returns whether it is held shared."""
    with _guard:
        held = _held.get(database)
        if held is not None:
            if held.shared and not shared:
                raise RuntimeError(
                    f"{database} is open read-only in this process; close that connection "
                    "before writing"
                )
            held.count += 1
            return held.shared
        folder = os.path.dirname(os.path.abspath(database))
        if not os.path.isdir(folder):
            # DuckDB would say "Cannot open file"; say which part of the path is wrong.
            raise WarehouseMissing(
                f"cannot open the DuckDB warehouse {database}: its folder {folder} does not exist"
            )
        fd = os.open(lock_file(database), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            waited = _wait_for_flock(fd, database, shared, deadline)
        except BaseException:
            os.close(fd)
            raise
        if not shared:
            _note_writer(fd)
        _held[database] = _Held(fd, shared, 1)
    if waited > _LOG_WAITS_OVER:
        log.info("waited %.1f s for the warehouse lock on %s", waited, database)
    return shared


def release(database: str) -> None:
    with _guard:
        held = _held.get(database)
        if held is None:
            return
        held.count -= 1
        if held.count == 0:
            del _held[database]
            os.close(held.fd)  # closing the descriptor drops the flock


def holds(database: str) -> bool:
    with _guard:
        return database in _held


def _wait_for_flock(fd: int, database: str, shared: bool, deadline: float) -> float:
    began = time.monotonic()
    pause = 0.02
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    while True:
        try:
            fcntl.flock(fd, mode)
            return time.monotonic() - began
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise WarehouseLockTimeout(
                    database, time.monotonic() - began, _last_writer(fd)
                ) from None
            time.sleep(pause)
            pause = min(pause * 1.5, 0.5)


def _note_writer(fd: int) -> None:
    """Leave the writer's pid in the lock file, for the timeout message of whoever waits."""
    note = f"pid {os.getpid()} ({os.path.basename(sys.argv[0]) if sys.argv else 'python'})"
    os.ftruncate(fd, 0)
    os.pwrite(fd, note.encode(), 0)


def _last_writer(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _forget_after_fork() -> None:
    """A forked child did not open these connections: it must neither count nor drop them."""
    global _guard
    _guard = threading.RLock()
    for held in _held.values():
        os.close(held.fd)  # the parent's descriptor stays open: its lock is unaffected
    _held.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


class LockedConnection:
    """A DuckDB DBAPI connection that gives the file lock back once it is really closed."""

    def __init__(self, inner: Any, database: str) -> None:
        self._inner = inner
        self._database = database
        self._released = False

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._give_back()

    def _give_back(self) -> None:
        if not self._released:
            self._released = True
            release(self._database)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __del__(self) -> None:
        # A connection dropped without close(): DuckDB closes the file as the object goes.
        self._give_back()


def _is_lock_conflict(error: BaseException) -> bool:
    return "Could not set lock" in str(error) or "Conflicting lock" in str(error)


def connect_waiting(dialect: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
    """The `do_connect` hook: wait for the file's lock, then connect (None: not a file)."""
    database = cparams.get("database") or (cargs[0] if cargs else None)
    if not isinstance(database, str) or database in ("", ":memory:") or ":" in database[:5]:
        return None  # in-memory or remote (md:, s3:): nothing on this machine to share
    database = os.path.abspath(database)
    deadline = time.monotonic() + lock_timeout()
    began = time.monotonic()
    shared = acquire(database, bool(cparams.get("read_only")), deadline)
    params = {**cparams, "read_only": shared}
    try:
        inner = _connect_retrying(dialect, cargs, params, database, deadline, began)
    except BaseException:
        release(database)
        raise
    return LockedConnection(inner, database)


def _connect_retrying(
    dialect: Any, cargs: list[Any], params: dict[str, Any], database: str, deadline: float,
    began: float,
) -> Any:  # fmt: skip
    """Connect; a DuckDB lock conflict (a process outside this lock) is retried until deadline."""
    while True:
        try:
            return dialect.connect(*cargs, **params)
        except Exception as error:  # duckdb.IOException
            if not _is_lock_conflict(error):
                raise
            if time.monotonic() >= deadline:
                waited = time.monotonic() - began
                raise WarehouseLockTimeout(database, waited, "") from error
            time.sleep(0.2)


_installed = False


def install() -> None:
    """Route every DuckDB connection made through SQLAlchemy in this process via the lock."""
    global _installed
    with _guard:
        if _installed:
            return
        import duckdb_engine
        from sqlalchemy import event

        def do_connect(dialect: Any, record: Any, cargs: list[Any], cparams: dict) -> Any:
            return connect_waiting(dialect, cargs, cparams)

        event.listen(duckdb_engine.Dialect, "do_connect", do_connect)
        _installed = True
