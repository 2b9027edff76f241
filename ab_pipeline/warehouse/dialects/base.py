"""What an engine is to the pipeline: one `Dialect` object per engine, in one module each.

The pipeline writes its SQL once, in the canonical dialect (DuckDB's, which PostgreSQL also
runs as written: the shared subset the pipeline has always used), with bound parameters as
`:name`. `Dialect.render` turns a canonical statement into the engine's own SQL with sqlglot;
everything an engine does differently beyond what sqlglot transpiles is a method or an
attribute here, overridden in that engine's module:

- how a URL names the engine (`schemes`) and becomes a SQLAlchemy URL (`engine_url`);
- SQL pieces sqlglot cannot know the intent of (`hash_bucket`, `json_keys_sql`,
  `materialized`);
- how the extract runs (`unit_key`, `histograms_in_pass`, `quantiles_by_edge`,
  `unless_in_pass`, `prepare_build`);
- transactions and locks (`read_only_transactions`, `results_lock`).

Text the user wrote (a `sql:` metric, a `{sql: ...}` source) is in the engine's own dialect,
not the canonical one, and must not be transpiled: generated SQL refers to it through
`embedded(sql)`, a stand-in identifier that `render` swaps for the user's text after
transpiling the rest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Protocol

CANONICAL = "duckdb"  # sqlglot's name for the dialect generated SQL is written in

# User SQL by stand-in name; filled by `embedded`, read by `render` in the same process.
_EMBEDDED: dict[str, str] = {}
_EMBED_PREFIX = "ab_embedded_"
_EMBED_NAME = re.compile(r"[\"`]?(ab_embedded_[0-9a-f]{16})[\"`]?")


# Open `recording()` blocks, innermost last.
_RECORDINGS: list[list[str]] = []


@contextmanager
def recording() -> Iterator[list[str]]:
    """Every canonical statement rendered in this process while the block runs, in order (a
    run on one engine, replayed through another dialect, shows what that engine would run)."""
    statements: list[str] = []
    _RECORDINGS.append(statements)
    try:
        yield statements
    finally:
        _RECORDINGS.remove(statements)


def embedded(sql: str) -> str:
    """A canonical stand-in for the user's `sql` (a FROM item): `render` writes `(sql)` there."""
    name = _EMBED_PREFIX + hashlib.sha256(sql.encode()).hexdigest()[:16]
    _EMBEDDED[name] = sql
    return f'"{name}"'


@dataclass(frozen=True)
class ConnectionFields:
    """An Airflow connection's fields, as `url_from_connection` reads them."""

    conn_type: str
    host: str | None = None
    login: str | None = None
    password: str | None = None
    port: int | None = None
    schema: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def netloc(self, default_host: str = "localhost") -> str:
        """`login:password@host:port`, each part URL-quoted."""
        from urllib.parse import quote

        auth = quote(self.login or "", safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        netloc = (f"{auth}@" if auth else "") + (self.host or default_host)
        return netloc + (f":{self.port}" if self.port else "")


class Batch(Protocol):
    """Statements and queries that see each other's temporary tables (`Session.batch`)."""

    def query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]: ...

    def execute(self, statements: Sequence[str], params: Mapping[str, Any]) -> None: ...


class Session(Protocol):
    """How the pipeline talks to an engine that SQLAlchemy does not reach (Spark Connect).
    Statements arrive rendered; parameters are bound by name (`:name`)."""

    def query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]: ...

    def execute(self, statements: Sequence[str], params: Mapping[str, Any]) -> None: ...

    def batch(self) -> AbstractContextManager[Batch]:
        """A block whose statements and queries share the engine's session state (its
        temporary tables), as one `execute` call's statements do."""
        ...

    def table_exists(self, name: str) -> bool: ...

    def table_names(self, schema: str | None) -> list[str]: ...


class Dialect:
    """The canonical engine behaviour; DuckDB's module overrides nothing of substance."""

    name: ClassVar[str]  # the pipeline's name: duckdb, postgresql, spark, snowflake, bigquery
    sqlglot_name: ClassVar[str]  # sqlglot's dialect name for this engine
    schemes: ClassVar[tuple[str, ...]]  # URL schemes (before `:` / `+driver`) naming it
    # False: canonical SQL runs on this engine as written (DuckDB, PostgreSQL).
    transpiles: ClassVar[bool] = True
    # The column the extract's scratch tables key units by (DuckDB: its integer `rowid`).
    unit_key: ClassVar[str] = "unit_id"
    # Quantile histograms as a grouping set of the metric pass (else a pass of their own).
    histograms_in_pass: ClassVar[bool] = True
    # No quantile histogram stored by the extract, but each unit's extreme value: the analysis
    # reads the values beyond an edge taken from them (`metrics.quantile`), where the
    # histogram's grouping set or pass is dear (Spark).
    quantiles_by_edge: ClassVar[bool] = False
    # A proportion with `unless` decided by the metric pass where each unit's first and last
    # events settle it, its ordered pass left to the few units they do not (False: every
    # unit's events ordered in a pass of their own; Spark, where the pass's four more
    # aggregates cost what the ordered pass saves).
    unless_in_pass: ClassVar[bool] = True
    # `BEGIN TRANSACTION READ ONLY` around user SELECTs (else the parser's check alone).
    read_only_transactions: ClassVar[bool] = False
    # Reads may run while another process writes (False: DuckDB's single-writer file).
    concurrent_readers: ClassVar[bool] = True
    # The extract's step tables as UNLOGGED tables of the schema, named after the run's units
    # table, instead of session-local TEMP tables (PostgreSQL: only shared tables are scanned
    # by parallel workers; Spark: Parquet tables, faster than cached views).
    shared_step_tables: ClassVar[bool] = False
    # A LIMIT stops a scan early, so a sample of a few thousand rows is cheap (False where
    # the engine bills every byte of the columns a query reads, LIMIT or not: BigQuery).
    samples_cheaply: ClassVar[bool] = True
    # How a scratch table that one task writes, reads and drops is created (PostgreSQL: an
    # UNLOGGED table, written without the write-ahead log; lost in a crash with the task).
    scratch_table: ClassVar[str] = "CREATE TABLE"
    # A quantile's few events (a value range) read through a `MATERIALIZED` CTE, so the join
    # hashes them and streams the units past them (False: PostgreSQL scans such a CTE in the
    # leader alone, and hashes the units in parallel workers faster).
    narrows_in_cte: ClassVar[bool] = True

    # Airflow connection types that name this engine (`url_from_connection`).
    conn_types: ClassVar[tuple[str, ...]] = ()

    # --- URLs and connections -------------------------------------------------------------

    def normalize_url(self, url: str) -> str:
        return url

    def url_from_connection(self, fields: ConnectionFields) -> str:
        """The warehouse URL an Airflow connection of one of `conn_types` stands for."""
        raise ValueError(f"{self.name} connections need extra.sqlalchemy_url")

    def connection_env(self, url: str) -> dict[str, Any]:
        """The Airflow connection (`AIRFLOW_CONN_*` JSON form) that points at `url`."""
        return {"conn_type": "generic", "extra": {"sqlalchemy_url": url}}

    def connect_args(self, url: str, read_only: bool) -> dict[str, Any]:
        """Driver arguments for the SQLAlchemy engine of `url` (and any set-up it needs)."""
        return {}

    # Whether `result_types` can read a query's column types (a `{sql: ...}` source's contract).
    reads_result_types: ClassVar[bool] = False

    def result_types(self, connection: Any, select: str) -> dict[str, str]:
        """{column: TYPE} of a rendered (LIMIT 0) SELECT's result, types upper-cased and
        spelled as the engine's information_schema spells them (Spark, which has none: as
        `column_types_sql` does), read without reading a row. `connection`: a SQLAlchemy
        connection, or the engine's `session` where it has one."""
        raise NotImplementedError(f"{self.name} does not read a query's result types")

    def autocommit(self, connection: Any, statement: str) -> Any:
        """Run `statement` on a fresh SQLAlchemy connection and return the connection such
        that only explicit BEGIN ... COMMIT open transactions on it from then on."""
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql(statement)
        return connection

    def engine_url(self, url: str) -> str:
        """The SQLAlchemy URL an engine is built from."""
        return self.normalize_url(url)

    def session(self, url: str) -> Session | None:
        """The engine's own client when SQLAlchemy does not reach it; None: SQLAlchemy."""
        return None

    # --- SQL text -----------------------------------------------------------------------

    def render(self, sql: str) -> str:
        """The canonical statement `sql` as this engine runs it (bound parameters stay `:name`)."""
        for statements in _RECORDINGS:
            statements.append(sql)
        if self.transpiles:
            sql = self._transpile(sql)
        return _EMBED_NAME.sub(lambda m: f"(\n{self.embed_text(_EMBEDDED[m.group(1)])}\n)", sql)

    def embed_text(self, sql: str) -> str:
        """User SQL as it is written into a rendered statement. SQLAlchemy's `text()` reads
        `:word` as a bound parameter: escaped, a colon in the user's text stays a colon."""
        return sql.replace(":", "\\:")

    def _transpile(self, sql: str) -> str:
        import sqlglot

        tree = sqlglot.parse_one(sql, read=CANONICAL)
        tree = tree.transform(self.rewrite)
        return str(tree.sql(dialect=self.sqlglot_name))

    def rewrite(self, node: Any) -> Any:
        """One node of the parsed canonical statement, rewritten for this engine. Default:
        bound parameters stay `:name` (SQLAlchemy's `text()` and Spark both read that form);
        `MATERIALIZED` is dropped where the engine does not know it."""
        from sqlglot import exp

        if isinstance(node, exp.Placeholder) and node.name:
            return exp.Var(this=f":{node.name}")
        if isinstance(node, exp.CTE) and node.args.get("materialized") and not self.materialized:
            node.set("materialized", None)  # a planner hint only; unknown to this engine
        return node

    def literal(self, value: Any) -> str:
        """One Python value as an SQL literal of this engine."""
        from sqlglot import exp

        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        if value is None:
            return "NULL"
        if isinstance(value, int | float):
            return repr(value) if isinstance(value, int) else _float_literal(value)
        return str(exp.Literal.string(str(value)).sql(dialect=self.sqlglot_name))

    def stored_name(self, name: str) -> str:
        """A name the pipeline quotes (`quote_ident`) as the engine stores it, i.e. as
        information_schema shows it."""
        return name

    def hash_bucket(self, column: str, buckets: int) -> str:
        """An integer in [0, buckets) from a text column, the same for the same value."""
        return f"(hash({column}) % {buckets})"

    def json_keys_sql(self, doc: str) -> str:
        """A set-returning FROM item (one column, aliased by the caller): the top-level keys of
        the JSON text `doc`. sqlglot transpiles the canonical one (Snowflake: a FLATTEN)."""
        return f"unnest(json_keys(CAST({doc} AS JSON)))"

    # Whether `WITH x AS MATERIALIZED (...)` (a hint to evaluate the CTE once) is kept.
    materialized: ClassVar[bool] = True
    # An expression giving the engine's memory limit as DuckDB prints it ('953.6 MiB'), for
    # sizing the extract's hash partitions; None: the engine plans memory itself.
    memory_limit_sql: ClassVar[str | None] = None

    # --- extract and transactions ----------------------------------------------------------

    def prepare_build(
        self,
        statements: Sequence[str],
        analysed: Mapping[str, str],
        table: str,
        grouped: Sequence[str] = (),
    ) -> list[str]:
        """The extract's statements (building the units `table`) as this engine should run
        them; `analysed` maps a statement's prefix to the table it fills (PostgreSQL gathers
        statistics there), `grouped` lists expressions later queries group the units table by
        (PostgreSQL keeps statistics of each)."""
        return list(statements)

    # --- Great Expectations (the data-quality gate; GX objects come from the caller) ----------

    def gx_datasource(self, context: Any, name: str, url: str) -> Any:
        """A GX datasource named `name` reading this warehouse: GX's SQL datasource."""
        return context.data_sources.add_sql(
            name=name, connection_string=self.engine_url(self.normalize_url(url))
        )

    def gx_batch(self, datasource: Any, name: str, query: str, url: str) -> Any:
        """A GX batch of the rows of `query` (rendered SQL): a query asset."""
        asset = datasource.add_query_asset(name=name, query=query)
        return asset.add_batch_definition_whole_table("whole").get_batch()

    def gx_execute(self, datasource: Any, statements: Sequence[str], url: str) -> None:
        """Rendered statements run through the datasource's own engine (on DuckDB that engine
        holds the file's lock while GX works: a second connection would wait for it)."""
        from sqlalchemy import text

        with datasource.get_execution_engine().engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))

    def gx_query(self, datasource: Any, sql: str, url: str) -> list[dict[str, Any]]:
        """A rendered query's rows, through the datasource's own engine (see `gx_execute`)."""
        from sqlalchemy import text

        with datasource.get_execution_engine().engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(sql))]

    def gx_release(self, datasource: Any) -> None:
        """Close what the datasource holds (its engines' pools: no DuckDB file stays locked)."""
        datasource.get_execution_engine().engine.dispose()
        datasource.get_engine().dispose()

    def column_types_sql(self, url: str, tables: Mapping[str, str]) -> str | None:
        """For an engine without information_schema: a SELECT of (source, column_name,
        data_type) over `tables` ({source name: table}), types upper-cased as the engine names
        them. None: the contract suite's own information_schema query."""
        return None

    def results_lock(self) -> str | None:
        """A statement that serialises writers of the results tables inside a transaction,
        or None where the engine (or the warehouse lock) already does."""
        return None


def _float_literal(value: float) -> str:
    text = repr(value)
    return text if ("e" in text or "." in text) else text + ".0"


def plain_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows from an engine's own client (Spark, BigQuery), each value as `plain_value`."""
    return [{key: plain_value(value) for key, value in row.items()} for row in rows]


def plain_value(value: Any) -> Any:
    """A value from an engine's own client as the pipeline's Python, the same as
    SQLAlchemy's drivers give: Decimal -> float, timestamps naive UTC."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value
