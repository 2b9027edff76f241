"""Warehouse access: one code path for every engine, its differences in `dialects`.

A warehouse is named by a URL (`duckdb:///path/file.duckdb`, `postgresql://user@host:5432/db`,
`snowflake://...`, `sc://host:15002` for Spark Connect); `dialects.dialect_for(url)` is its
engine. Every statement the pipeline runs is canonical SQL, rendered for the engine by
`Warehouse.query` / `Warehouse.execute` (`Dialect.render`). Inside Airflow the URL comes from
the config's connection (`source.conn_id`); see `url_from_connection`. Secrets stay in the
URL/connection and are never logged: use `redacted(url)` for messages.

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

from ab_pipeline.warehouse.dialects import (
    Dialect,
    all_dialects,
    dialect_for,
    dialect_for_conn_type,
    embedded,
)
from ab_pipeline.warehouse.dialects.base import ConnectionFields
from ab_pipeline.warehouse.quoting import quote_ident

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["Dialect", "Warehouse", "dialect_for", "embedded", "quote_ident", "redacted"]


def redacted(url: str) -> str:
    """The URL with any password replaced, for log lines and briefs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def normalize_url(url: str) -> str:
    """The URL with the engine's default driver spelled out (`postgres://` -> psycopg2)."""
    return dialect_for(url).normalize_url(url)


def engine_url(url: str) -> str:
    """The SQLAlchemy URL an engine is built from (with DuckDB's resource defaults)."""
    dialect = dialect_for(url)
    return dialect.engine_url(dialect.normalize_url(url))


def dialect_of(url: str) -> str:
    """The engine's name: duckdb, postgresql, snowflake, bigquery, spark."""
    return dialect_for(url).name


@dataclass(frozen=True)
class Warehouse:
    """A warehouse URL plus the few operations the pipeline needs."""

    url: str

    @property
    def dialect(self) -> str:
        """The engine's name (`sql_dialect.name`)."""
        return dialect_of(self.url)

    @property
    def sql_dialect(self) -> Dialect:
        """The engine: how canonical SQL is rendered and run on it."""
        return dialect_for(self.url)

    def render(self, sql: str) -> str:
        return self.sql_dialect.render(sql)

    def engine(self, read_only: bool = False) -> Engine:
        """The process's engine for this URL; `read_only` opens a DuckDB file read-only (shared
        with other readers) when the file exists, and changes nothing on PostgreSQL."""
        url = engine_url(self.url)
        shared = read_only and not self.sql_dialect.concurrent_readers and _file_exists(url)
        return _engine(url, shared)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection inside a transaction that commits on success, rolls back on error."""
        with self.engine().begin() as connection:
            yield connection

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        from sqlalchemy import text

        session = self.sql_dialect.session(self.url)
        if session is not None:
            return session.query(self.render(sql), dict(params or {}))
        with self.engine(read_only=True).begin() as connection:
            result = connection.execute(text(self.render(sql)), dict(params or {}))
            return [dict(row._mapping) for row in result]

    def execute(
        self, statements: str | Sequence[str], params: Mapping[str, Any] | None = None
    ) -> None:
        """Run statements in one transaction: all of them take effect, or none."""
        from sqlalchemy import text

        if isinstance(statements, str):
            statements = [statements]
        rendered = [self.render(statement) for statement in statements]
        session = self.sql_dialect.session(self.url)
        if session is not None:
            session.execute(rendered, dict(params or {}))
            return
        with self.connect() as connection:
            for statement in rendered:
                connection.execute(text(statement), dict(params or {}))

    def table_names(self, schema: str | None = None) -> list[str]:
        """The tables of `schema` (default: the connection's current one)."""
        from sqlalchemy import inspect

        session = self.sql_dialect.session(self.url)
        if session is not None:
            return session.table_names(schema)
        with self.connect() as connection:
            return list(inspect(connection).get_table_names(schema=schema))

    def table_exists(self, name: str) -> bool:
        from sqlalchemy import inspect

        session = self.sql_dialect.session(self.url)
        if session is not None:
            return session.table_exists(name)

        schema, _, table = name.rpartition(".")
        return inspect(self.engine(read_only=True)).has_table(table, schema=schema or None)


_ENGINES: dict[tuple[str, bool], Engine] = {}


def _engine(url: str, read_only: bool = False) -> Engine:
    """One engine per URL (and mode) per process; DuckDB connections wait for the file."""
    if (url, read_only) not in _ENGINES:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        connect_args = dialect_for(url).connect_args(url, read_only)
        # NullPool: a connection (and the DuckDB file's lock) lasts as long as its block.
        _ENGINES[url, read_only] = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    return _ENGINES[url, read_only]


def _file_exists(url: str) -> bool:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return database not in (None, "", ":memory:") and os.path.exists(str(database))


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
    """Turn Airflow connection fields into a warehouse URL, by the engine whose dialect module
    claims the connection type (`duckdb`: host is the database file path; `postgres`: the
    usual fields; see each module). Any connection may instead carry
    `{"sqlalchemy_url": "..."}` in its extra."""
    extras = json.loads(extra) if isinstance(extra, str) and extra else dict(extra or {})
    if extras.get("sqlalchemy_url"):
        return str(extras["sqlalchemy_url"])
    dialect = dialect_for_conn_type(conn_type)
    if dialect is None:
        known = ", ".join(t for d in all_dialects() for t in d.conn_types)
        raise ValueError(
            f"connection type {conn_type!r} is not supported; use one of {known}, or set "
            "extra.sqlalchemy_url"
        )
    fields = ConnectionFields(conn_type, host, login, password, port, schema, extras)
    return dialect.url_from_connection(fields)


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
    dialect = dialect_for(url)
    return json.dumps(dialect.connection_env(dialect.normalize_url(url)))
