"""Spark SQL through Spark Connect: `sc://HOST:PORT` (SQLAlchemy does not reach it).

Statements go through pyspark's Spark Connect client (`SparkSession.builder.remote(url)`,
one session per process and URL, time zone UTC); `:name` parameters are Spark's own named
parameter markers (`spark.sql(sql, args=...)`).

What differs from the canonical engine, and how it is bridged here:

- Spark has no temporary tables, only temporary views: `CREATE TEMP TABLE x AS SELECT` becomes
  `CACHE TABLE x AS SELECT`, a session-local view whose rows are computed once, eagerly, and
  kept by the server (memory, spilling to disk), like a temporary table's; `DROP TABLE x`
  drops it. Being session-local, two runs in two processes never see each other's.
- The extract's step tables are tables of the catalog instead (`shared_step_tables`: an
  UNLOGGED table is a plain `CREATE TABLE`, in the session's default format, Parquet unless
  the cluster says otherwise), named per run and dropped at the build's end: Spark writes and
  reads them faster than cached views, which a small driver keeps partly on disk
  (docs/benchmarks.md).
- Spark cannot UPDATE tables that are not Delta/Iceberg: `UPDATE t SET c = e [FROM s] WHERE p`
  of an extract step (an `ab_tmp_` table, or a cached view) runs as a rebuild
  (`_updated_rows`): t's rows with `c` replaced where `p` holds are cached as a new view,
  which later statements of the session read as t.
- Spark cannot DELETE from Parquet tables either: `DELETE FROM t WHERE p` keeps the other rows
  by overwriting t with them (only when some row matches: a retried write).
- No multi-statement transactions: `execute` runs statements one by one and a failure leaves
  the earlier ones' effects. Every pipeline step that relies on rollback is idempotent instead
  (the extract drops its tables IF EXISTS before creating them, results writes delete the
  attempt's rows first), so re-running a failed step converges.
- `->>` on a STRING column holding JSON is `get_json_object`; `CAST(x AS JSON)` is x itself;
  `hash()` is signed (buckets use `pmod`); `WITH x AS MATERIALIZED` does not parse (Spark
  decides).
- No `BEGIN TRANSACTION READ ONLY`: user SELECTs are checked by the parser alone. A user's
  text (a `sql:` metric, a `{sql: ...}` source) is sent as written; a source query's column
  types are its analysed schema (`result_types`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ab_pipeline.warehouse.dialects.base import ConnectionFields, Dialect, plain_rows

DEFAULT_PORT = 15002  # Spark Connect's
_LOCK = threading.Lock()
_SESSIONS: dict[tuple[int, str], Any] = {}  # (pid, url) -> SparkSession
# (pid, url, updated step table) -> its names: the table itself, then one cached view per
# UPDATE that changed rows (the latest is what the session reads as the table).
_UPDATED: dict[tuple[int, str, str], list[str]] = {}


def server_address(url: str) -> tuple[str, int]:
    """(host, port) of an `sc://HOST[:PORT][/;params]` URL; an IPv6 host keeps its brackets."""
    netloc = url.removeprefix("sc://").split("/", 1)[0]
    if ":" not in netloc or netloc.endswith("]"):
        return netloc, DEFAULT_PORT
    host, _, port = netloc.rpartition(":")
    return host, int(port)


def spark_session(url: str) -> Any:
    """This process's Spark Connect session to `url` (created on first use, time zone UTC)."""
    key = (os.getpid(), url)
    with _LOCK:
        if key not in _SESSIONS:
            import warnings

            with warnings.catch_warnings():
                # pyspark warns at import that pandas 3 is not fully supported; the pipeline
                # moves rows through Arrow, not pandas.
                warnings.simplefilter("ignore", FutureWarning)
                from pyspark.sql import SparkSession

                session = SparkSession.builder.remote(url).create()
            session.conf.set("spark.sql.session.timeZone", "UTC")
            _SESSIONS[key] = session
        return _SESSIONS[key]


def close_sessions(url: str | None = None) -> None:
    """Forget (and stop) this process's sessions, to `url` or to every server."""
    with _LOCK:
        for key in [k for k in _SESSIONS if url is None or k[1] == url]:
            session = _SESSIONS.pop(key)
            # The server may already be gone; the session is dropped anyway.
            with contextlib.suppress(Exception):
                session.stop()


def spark_args(params: Mapping[str, Any]) -> dict[str, Any]:
    """Bound parameters for `spark.sql(args=...)`: a naive datetime is UTC wall-clock time
    (made explicit, so the client's local time zone never shifts it)."""
    return {
        name: value.replace(tzinfo=dt.UTC)
        if isinstance(value, dt.datetime) and value.tzinfo is None
        else value
        for name, value in params.items()
    }


class ConnectSession:
    """`base.Session` over Spark Connect."""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def spark(self) -> Any:
        return spark_session(self.url)

    def dataframe(self, sql: str, params: Mapping[str, Any]) -> Any:
        used = {name: value for name, value in params.items() if f":{name}" in sql}
        return self.spark.sql(sql, args=spark_args(used)) if used else self.spark.sql(sql)

    def query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        table = self.dataframe(self._current_names(sql), params).toArrow()
        return plain_rows(table.to_pylist())

    def execute(self, statements: Sequence[str], params: Mapping[str, Any]) -> None:
        for statement in statements:
            verb = statement.lstrip()[:6].upper()
            if verb == "UPDATE":
                self._update(statement, params)
            elif verb == "DELETE":
                self._delete(statement, params)
            else:
                # Commands run when submitted; collect() also runs a statement that is a query.
                for part in self._current_names(statement).split("; "):
                    self.dataframe(part, params).collect()

    def batch(self) -> contextlib.nullcontext[ConnectSession]:
        """The session itself: its temporary views last until they are dropped."""
        return contextlib.nullcontext(self)

    def _update(self, statement: str, params: Mapping[str, Any]) -> None:
        """An UPDATE of an extract step t (an `ab_tmp_` table, or a cached view) as a rebuild:
        the updated rows are cached as a new view, computed from t's current rows, and from
        then on every statement of this session reads the new view where it names t
        (`_current_names`). A cached view is re-analysed from its SQL text, so the views it
        reads stay until t is dropped."""
        import sqlglot

        from ab_pipeline.warehouse.run_tables import STEP_TABLE_PREFIX

        target = _unquoted(sqlglot.parse_one(statement, read="spark").this.sql(dialect="spark"))
        bare = target.rsplit(".", 1)[-1]
        if not bare.startswith(STEP_TABLE_PREFIX):
            raise ValueError(
                f"Spark cannot UPDATE {target}: only the extract's step tables are updated "
                "here (Parquet tables have no UPDATE)"
            )
        chain = _UPDATED.get((*self._key, target), [target])
        _, select, probe = _updated_rows(statement, self.columns, chain[-1])
        # Most readouts have no unit in several arms: the rebuild (a copy of every enrolled
        # unit) runs only when some row is updated.
        if not self.query(probe, params):
            return
        updated = f"{bare}__updated_{len(chain)}"
        self.dataframe(f"CACHE TABLE `{updated}` AS {select}", params).collect()
        _UPDATED[(*self._key, target)] = [*chain, updated]

    def _current_names(self, statement: str) -> str:
        """The statement reading each updated temporary table's latest view; a DROP of such a
        table drops all of its views."""
        updated = {t: c for (pid, url, t), c in _UPDATED.items() if (pid, url) == self._key}
        if not updated or not any(t.rsplit(".", 1)[-1] in statement for t in updated):
            return statement
        import sqlglot
        from sqlglot import exp

        tree = sqlglot.parse_one(statement, read="spark")
        if isinstance(tree, exp.Drop):
            table = tree.find(exp.Table)
            chain = _UPDATED.pop((*self._key, _full_name(table)), None) if table else None
            if chain:  # the updated views, then the table (or the first cached view) itself
                views = [f"DROP VIEW IF EXISTS `{name}`" for name in reversed(chain[1:])]
                return "; ".join([*views, statement])
            return statement

        def current(node: Any) -> Any:
            if isinstance(node, exp.Table) and _full_name(node) in updated:
                alias = node.alias or node.name
                name = exp.to_identifier(updated[_full_name(node)][-1], quoted=True)
                return exp.Table(this=name, alias=exp.TableAlias(this=exp.to_identifier(alias)))
            return node

        return str(tree.transform(current).sql(dialect="spark"))

    @property
    def _key(self) -> tuple[int, str]:
        return (os.getpid(), self.url)

    def _delete(self, statement: str, params: Mapping[str, Any]) -> None:
        """`DELETE FROM t WHERE p` on a Parquet table (which cannot delete rows): when some row
        matches, the others overwrite t."""
        import sqlglot

        tree = sqlglot.parse_one(statement, read="spark")
        name = tree.this.sql(dialect="spark")
        condition = tree.args["where"].this.sql(dialect="spark")
        if not self.query(f"SELECT 1 AS found FROM {name} WHERE {condition} LIMIT 1", params):
            return
        # Through a staging table: Spark refuses to overwrite a table it is reading.
        kept = f"`{_unquoted(name).replace('.', '`.`')}__kept`"
        for step in (
            f"DROP TABLE IF EXISTS {kept}",
            f"CREATE TABLE {kept} AS SELECT * FROM {name} WHERE NOT ({condition})",
            f"INSERT OVERWRITE {name} SELECT * FROM {kept}",
            f"DROP TABLE {kept}",
        ):
            self.dataframe(step, params).collect()

    def columns(self, table: str) -> list[str]:
        return list(self.spark.table(_unquoted(table)).columns)

    def column_types(self, table: str) -> list[tuple[str, str]]:
        """(name, `contract_type_name`) of each column of `table`."""
        return _named_types(self.spark.table(_unquoted(table)).schema)

    def result_types(self, select: str) -> list[tuple[str, str]]:
        """(name, `contract_type_name`) of each column of a query's result: its schema as
        Spark's analyser resolves it (`spark.sql` of a query plans it; no job runs)."""
        return _named_types(self.dataframe(select, {}).schema)

    def table_names(self, schema: str | None) -> list[str]:
        """Tables of `schema` (else the current database), temporary views left out."""
        listed = (
            self.spark.catalog.listTables(schema) if schema else self.spark.catalog.listTables()
        )
        return [t.name for t in listed if not t.isTemporary]

    def table_exists(self, name: str) -> bool:
        return bool(self.spark.catalog.tableExists(_unquoted(name)))


def _full_name(table: Any) -> str:
    """A sqlglot table's `db.name` (or `name`), unquoted, as `_UPDATED` keys it."""
    return f"{table.db}.{table.name}" if table.db else str(table.name)


def _named_types(schema: Any) -> list[tuple[str, str]]:
    """(name, `contract_type_name`) of each field of a Spark schema."""
    return [(field.name, contract_type_name(field.dataType)) for field in schema.fields]


def contract_type_name(data_type: Any) -> str:
    """A Spark type as the contract check compares types: upper-cased as Spark SQL writes it
    (STRING, TIMESTAMP_NTZ, DOUBLE, DECIMAL(10,2)), with the spellings the check shares with
    information_schema where Spark's differ: INT is INTEGER, VARCHAR(n) and CHAR(n) are
    VARCHAR and CHARACTER."""
    name = str(data_type.simpleString()).upper()
    if name == "INT":
        return "INTEGER"
    for spark, shared in (("VARCHAR(", "VARCHAR"), ("CHAR(", "CHARACTER")):
        if name.startswith(spark):
            return shared
    return name


def _unquoted(name: str) -> str:
    """`"schema"."table"` (canonical) or `` `t` `` (Spark) as the catalog API takes it."""
    return name.replace('"', "").replace("`", "")


def _updated_rows(statement: str, columns: Any, source: str) -> tuple[str, str, str]:
    """`UPDATE t SET c = e, ... [FROM s AS f] [WHERE p]` (Spark SQL, as rendered) as
    (t, a SELECT of t's rows after the update, a query with a row when some row is updated):
    Spark updates only Delta/Iceberg tables.

    With FROM, each row of t takes the values of its matching row of s (the pipeline's UPDATEs
    match at most one); rows without a match keep theirs. t's rows are read from the view
    `source` (t renamed); every reference to t reads `source`, under t's name or alias.
    """
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(statement, read="spark")
    if not isinstance(tree, exp.Update):
        raise ValueError(f"not an UPDATE: {statement[:80]}")
    name = tree.this.sql(dialect="spark")
    target = tree.this.name
    quoted_source = "`" + source.replace(".", "`.`") + "`"

    def by_alias(node: Any) -> Any:
        # `db.t.c` (a schema-qualified target's column) is `t.c`: t's rows come aliased as t.
        if isinstance(node, exp.Column) and node.table == target and node.args.get("db"):
            return exp.column(node.name, table=target, quoted=True)
        return node

    tree = tree.transform(by_alias)
    column_names = columns(name)

    def renamed(node: Any) -> Any:
        if isinstance(node, exp.Table) and node.name == target:
            alias = node.alias or target
            table = exp.to_table(quoted_source, dialect="spark")
            table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
            return table
        return node

    assigned = {eq.this.name: eq.expression for eq in tree.expressions}
    condition = tree.args.get("where")
    predicate = condition.this if condition is not None else exp.true()
    found = tree.args.get("from") or tree.args.get("from_")
    marker = "ab_update_matched"
    base = f"{quoted_source} AS `{target}`"
    if found is not None:
        joined = found.this.transform(renamed)
        alias = joined.alias_or_name
        matched: exp.Expression = exp.column(marker, table=alias).eq(1)
        inner = joined.copy()
        inner.set("alias", None)
        from_clause = (
            f"{base} LEFT JOIN (SELECT *, 1 AS {marker} FROM {inner.sql(dialect='spark')}) "
            f"AS {alias} ON {predicate.sql(dialect='spark')}"
        )
        probe = (
            f"SELECT 1 AS found FROM {base} JOIN {inner.sql(dialect='spark')} AS {alias} "
            f"ON {predicate.sql(dialect='spark')} LIMIT 1"
        )
    else:
        matched, from_clause = predicate, base
        probe = f"SELECT 1 AS found FROM {base} WHERE {predicate.sql(dialect='spark')} LIMIT 1"
    selected = []
    for column in column_names:
        value = assigned.get(column)
        if value is None:
            selected.append(f"`{target}`.`{column}`")
        else:
            selected.append(
                f"CASE WHEN {matched.sql(dialect='spark')} THEN {value.sql(dialect='spark')} "
                f"ELSE `{target}`.`{column}` END AS `{column}`"
            )
    return name, f"SELECT {', '.join(selected)} FROM {from_clause}", probe


class Spark(Dialect):
    name = "spark"
    sqlglot_name = "spark"
    schemes = ("sc",)
    materialized = False
    read_only_transactions = False
    # Step tables written as tables (Parquet), not cached views: faster at 10 M units.
    shared_step_tables = True
    # The histogram's grouping set is ~35% of the metric pass at 10 M units (docs/benchmarks.md).
    quantiles_by_edge = True
    # At 10 M units the readout was no faster with `unless` decided in the pass (extract
    # 114.6 and 130.2 s against 113.0 s; docs/benchmarks.md, 2026-12-05).
    unless_in_pass = False

    conn_types = ("spark_connect",)

    def url_from_connection(self, fields: ConnectionFields) -> str:
        """The Spark provider's connection: host (optionally written sc://host), port 15002."""
        if not fields.host:
            raise ValueError("a spark_connect connection needs host = the Spark Connect server")
        host = fields.host.removeprefix("sc://").rstrip("/")
        return f"sc://{host}:{fields.port or DEFAULT_PORT}"

    def connection_env(self, url: str) -> dict[str, Any]:
        host, port = server_address(url)
        return {"conn_type": "spark_connect", "host": host, "port": port}

    def engine_url(self, url: str) -> str:
        raise ValueError(
            f"{url.split('://')[0]}:// (Spark Connect) is not a SQLAlchemy URL: "
            "the pipeline reaches Spark through its own session (Dialect.session)"
        )

    def session(self, url: str) -> ConnectSession:
        return ConnectSession(url)

    def rewrite(self, node: Any) -> Any:
        from sqlglot import exp

        if isinstance(node, exp.Create) and _is_temporary(node) and node.expression:
            # A session-local table of rows computed now: a cached temporary view.
            return exp.Cache(this=node.this, expression=node.expression, lazy=False)
        if isinstance(node, exp.Cast) and node.to.is_type(exp.DataType.Type.JSON):
            return node.this  # JSON is a STRING column here, read by get_json_object
        if isinstance(node, exp.JSONExtractScalar) and isinstance(node.expression, exp.Placeholder):
            # `doc ->> :field` (a bound top-level key): get_json_object takes a `$.` path.
            path = exp.func(
                "concat", exp.Literal.string("$."), exp.Var(this=f":{node.expression.name}")
            )
            return exp.func("get_json_object", self.rewrite(node.this), path)
        if isinstance(node, exp.UnloggedProperty):
            return None  # a step table (`shared_step_tables`): a plain table of the catalog
        if isinstance(node, exp.PrimaryKey):
            return None  # the session catalog's tables take no constraints; writers keep keys
        if isinstance(node, exp.DataType) and node.is_type(exp.DataType.Type.JSON):
            return exp.DataType.build("STRING")
        return super().rewrite(node)

    # --- Great Expectations: its Spark datasource, one DataFrame per batch -------------------

    def gx_datasource(self, context: Any, name: str, url: str) -> Any:
        # GX's Spark engine takes the process's default session: make it this server's.
        session = spark_session(url)
        with type(session)._lock:
            type(session)._default_session = session
        type(session)._active_session.session = session
        return context.data_sources.add_spark(name=name, persist=False)

    def gx_batch(self, datasource: Any, name: str, query: str, url: str) -> Any:
        asset = datasource.add_dataframe_asset(name=name)
        definition = asset.add_batch_definition_whole_dataframe("whole")
        frame = spark_session(url).sql(query)
        return definition.get_batch(batch_parameters={"dataframe": frame})

    def gx_execute(self, datasource: Any, statements: Sequence[str], url: str) -> None:
        self.session(url).execute(statements, {})

    def gx_query(self, datasource: Any, sql: str, url: str) -> list[dict[str, Any]]:
        return self.session(url).query(sql, {})

    def gx_release(self, datasource: Any) -> None:
        return None  # the session stays: it is the process's, not GX's

    reads_result_types = True

    def result_types(self, connection: Any, select: str) -> dict[str, str]:
        """The query's schema through the session (`connection`): names in lower case, as
        Spark resolves them (case-insensitively), types as `column_types_sql` names them."""
        return {name.lower(): kind for name, kind in connection.result_types(select)}

    def embed_text(self, sql: str) -> str:
        """The user's text as written: Spark reads no `:name` in it that the session did not
        bind (there is no SQLAlchemy `text()` to escape a colon from)."""
        return sql

    def column_types_sql(self, url: str, tables: Mapping[str, str]) -> str | None:
        """The tables' schemas as Spark reports them (STRING, TIMESTAMP_NTZ, ...), as rows."""
        session = self.session(url)
        rows = [
            f"({self.literal(source)}, {self.literal(column)}, {self.literal(kind)})"
            for source, table in tables.items()
            for column, kind in session.column_types(table)
        ]
        return (
            f"SELECT * FROM VALUES {', '.join(rows)} AS c(source, column_name, data_type)"
            if rows
            else "SELECT 'none' AS source, 'none' AS column_name, 'NONE' AS data_type LIMIT 0"
        )

    def hash_bucket(self, column: str, buckets: int) -> str:
        return f"pmod(hash({column}), {buckets})"

    def json_keys_sql(self, doc: str) -> str:
        return f"explode(json_object_keys({doc}))"


def _is_temporary(node: Any) -> bool:
    from sqlglot import exp

    properties = node.args.get("properties")
    return bool(
        properties
        and any(isinstance(p, exp.TemporaryProperty) for p in properties.expressions)
        and str(node.args.get("kind", "")).upper() == "TABLE"
    )


DIALECT = Spark()
