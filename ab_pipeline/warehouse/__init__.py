"""Warehouse access through SQLAlchemy: one code path for DuckDB and PostgreSQL.

A warehouse is named by a SQLAlchemy URL (`duckdb:///path/file.duckdb`,
`postgresql://user@host:5432/db`). Inside Airflow the URL comes from the config's connection
(`source.conn_id`); see `url_from_connection`. Secrets stay in the URL/connection and are never
logged: use `redacted(url)` for messages.

An embedded DuckDB file is shared by every task process of every experiment: each connection
to it waits for the file's lock (`ab_pipeline.warehouse.warehouse_lock`) rather than failing, and
reads
(`query`, `table_exists`) open it read-only so that they can run side by side.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote_ident(name: str) -> str:
    """Validate and return an identifier (optionally schema-qualified) for interpolation."""
    parts = name.split(".")
    if not parts or not all(_IDENT.match(p) for p in parts):
        raise ValueError(f"{name!r} is not a safe SQL identifier")
    return ".".join(f'"{p}"' for p in parts)


def redacted(url: str) -> str:
    """The URL with any password replaced, for log lines and briefs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` (psycopg2 driver), `duckdb:///file`."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def engine_url(url: str) -> str:
    """The URL an engine is built from: normalized, with DuckDB's resource defaults."""
    url = normalize_url(url)
    return _with_duckdb_defaults(url) if url.startswith("duckdb:") else url


def dialect_of(url: str) -> str:
    return normalize_url(url).split(":", 1)[0].split("+", 1)[0]


@dataclass(frozen=True)
class Warehouse:
    """A warehouse URL plus the few operations the pipeline needs."""

    url: str

    @property
    def dialect(self) -> str:
        return dialect_of(self.url)

    def engine(self, read_only: bool = False) -> Engine:
        """The process's engine for this URL; `read_only` opens a DuckDB file read-only (shared
        with other readers) when the file exists, and changes nothing on PostgreSQL."""
        url = engine_url(self.url)
        return _engine(url, read_only and self.dialect == "duckdb" and _file_exists(url))

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection inside a transaction that commits on success, rolls back on error."""
        with self.engine().begin() as connection:
            yield connection

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        from sqlalchemy import text

        with self.engine(read_only=True).begin() as connection:
            result = connection.execute(text(sql), dict(params or {}))
            return [dict(row._mapping) for row in result]

    def execute(
        self, statements: str | Sequence[str], params: Mapping[str, Any] | None = None
    ) -> None:
        """Run statements in one transaction: all of them take effect, or none."""
        from sqlalchemy import text

        if isinstance(statements, str):
            statements = [statements]
        with self.connect() as connection:
            for statement in statements:
                connection.execute(text(statement), dict(params or {}))

    def table_exists(self, name: str) -> bool:
        from sqlalchemy import inspect

        schema, _, table = name.rpartition(".")
        return inspect(self.engine(read_only=True)).has_table(table, schema=schema or None)


_ENGINES: dict[tuple[str, bool], Engine] = {}


def _engine(url: str, read_only: bool = False) -> Engine:
    """One engine per URL (and mode) per process; DuckDB connections wait for the file."""
    if (url, read_only) not in _ENGINES:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        connect_args: dict[str, Any] = {}
        if dialect_of(url) == "duckdb":
            from ab_pipeline.warehouse import warehouse_lock

            warehouse_lock.install()
            connect_args["read_only"] = read_only
        # NullPool: a connection (and the DuckDB file's lock) lasts as long as its block.
        _ENGINES[url, read_only] = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    return _ENGINES[url, read_only]


def _file_exists(url: str) -> bool:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return database not in (None, "", ":memory:") and os.path.exists(str(database))


# DuckDB runs inside the task process and by default may take 80% of the machine's RAM for its
# buffers; a cap keeps peak memory flat as events grow (joins and sorts spill to disk beyond
# it). Set in the URL (duckdb_engine passes query parameters as DuckDB config) so that every
# engine built from it, Great Expectations' included, gets it. Override per warehouse:
# duckdb:///file.duckdb?memory_limit=4GB&threads=4.
DUCKDB_DEFAULTS = {"memory_limit": "1GB"}


def _with_duckdb_defaults(url: str) -> str:
    from urllib.parse import parse_qsl, urlencode

    base, _, query = url.partition("?")
    settings = dict(parse_qsl(query))
    return f"{base}?{urlencode({**DUCKDB_DEFAULTS, **settings})}"


def dispose_all() -> None:
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def url_from_connection_fields(
    conn_type: str,
    host: str | None,
    login: str | None = None,
    password: str | None = None,
    port: int | None = None,
    schema: str | None = None,
    extra: str | Mapping[str, Any] | None = None,
) -> str:
    """Turn Airflow connection fields into a SQLAlchemy URL.

    `duckdb`: host is the database file path. `postgres`: the usual fields. Any connection may
    instead carry `{"sqlalchemy_url": "..."}` in its extra, for other dialects.
    """
    extras = json.loads(extra) if isinstance(extra, str) and extra else dict(extra or {})
    if extras.get("sqlalchemy_url"):
        return str(extras["sqlalchemy_url"])
    if conn_type == "duckdb":
        if not host:
            raise ValueError("a duckdb connection needs host = the database file path")
        return f"duckdb:///{host}"
    if conn_type in ("postgres", "postgresql"):
        from urllib.parse import quote

        auth = quote(login or "", safe="")
        if password:
            auth += ":" + quote(password, safe="")
        netloc = f"{auth}@" if auth else ""
        netloc += host or "localhost"
        if port:
            netloc += f":{port}"
        return f"postgresql://{netloc}/{schema or 'postgres'}"
    raise ValueError(
        f"connection type {conn_type!r} is not supported; use duckdb, postgres, or set "
        "extra.sqlalchemy_url"
    )


def warehouse_for_connection(conn_id: str) -> Warehouse:
    """Resolve an Airflow connection id to a Warehouse (call inside a task only)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    return Warehouse(
        url_from_connection_fields(
            conn.conn_type or "",
            conn.host,
            conn.login,
            conn.password,
            conn.port,
            conn.schema,
            conn.extra,
        )
    )


def connection_env_value(url: str) -> str:
    """The `AIRFLOW_CONN_*` value (JSON form) that makes a connection point at `url`."""
    if dialect_of(url) == "duckdb":
        path = normalize_url(url).removeprefix("duckdb:///")
        return json.dumps({"conn_type": "duckdb", "host": path})
    return json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": url}})
