"""Writing: the chunks as rows of the warehouse's contract tables (DuckDB, PostgreSQL,
Snowflake, Spark or BigQuery)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ab_pipeline.devtools.simulate.generate import _Chunk
from ab_pipeline.devtools.simulate.plan import _Plan
from ab_pipeline.devtools.simulate.scenario import _EVENTS_DDL, _EXPOSURES_DDL
from ab_pipeline.warehouse import dialect_of, normalize_url, quote_ident

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# --- writing ------------------------------------------------------------------------------------


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _frames(plan: _Plan, chunk: _Chunk, cutoff_s: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The chunk as two small-typed DataFrames; strings are built by the database, not Python."""
    import numpy as np
    import pandas as pd

    base = np.datetime64(plan.config.start.isoformat(), "s")

    def stamp(seconds: np.ndarray) -> np.ndarray:
        return (base + seconds).astype("datetime64[us]")

    x = chunk.exp_t < cutoff_s
    exposures = pd.DataFrame(
        {
            "n": chunk.number[chunk.exp_unit[x]],
            "arm": pd.Categorical.from_codes(chunk.exp_arm[x], categories=plan.arms),
            "t": stamp(chunk.exp_t[x]),
            "internal": chunk.exp_internal[x],
            "bot": chunk.exp_bot[x],
            "props": pd.Categorical.from_codes(chunk.exp_props[x], categories=plan.properties),
        }
    )
    e = chunk.ev_t < cutoff_s
    events = pd.DataFrame(
        {
            "n": chunk.number[chunk.ev_unit[e]],
            "name": pd.Categorical.from_codes(chunk.ev_code[e], categories=plan.names),
            "t": stamp(chunk.ev_t[e]),
            "v": chunk.ev_value[e],  # NaN reaches the database as NULL
            "tagged": chunk.ev_tagged[e],
        }
    )
    return exposures, events


@contextmanager
def _chunk_registered(con: Any, frame: pd.DataFrame) -> Iterator[None]:
    """The chunk readable as `sim_chunk` on a DuckDB connection while the block runs."""
    con.register("sim_chunk", frame)
    try:
        yield
    finally:
        con.unregister("sim_chunk")


def _column_names(columns: str) -> list[str]:
    """The names of a sink's `columns` list ("a, b, c")."""
    return [c.strip() for c in columns.split(",")]


def _unit_id_sql(plan: _Plan) -> str:
    return f"{_literal(plan.prefix)} || lpad(CAST(n AS VARCHAR), {plan.id_width}, '0')"


def _exposure_select(plan: _Plan, source: str) -> str:
    return (
        f"SELECT {_literal(plan.config.key)}, {_unit_id_sql(plan)}, CAST(arm AS VARCHAR), t, "
        f"internal, bot, CAST(props AS VARCHAR) FROM {source}"
    )


def _event_select(plan: _Plan, source: str) -> str:
    key = _literal(plan.config.key)
    return (
        f"SELECT {_unit_id_sql(plan)}, CAST(name AS VARCHAR), t, v, "
        f"CASE WHEN tagged THEN {key} END FROM {source}"
    )


class _Sink:
    """A warehouse transaction that takes DDL/DML text and DataFrame chunks."""

    def run(self, sql: str) -> None:
        raise NotImplementedError

    def write(self, table: str, columns: str, frame: pd.DataFrame, select: str) -> None:
        """Insert `select` (which reads the frame as `sim_chunk`) into `table`."""
        raise NotImplementedError

    def finish(self, commit: bool) -> None:
        raise NotImplementedError


class _DuckDBSink(_Sink):
    """Writes through the duckdb API: INSERT ... SELECT over a registered DataFrame.

    `preserve_insertion_order` is off while it writes: the insert then runs in parallel (row
    order in a table means nothing), much faster (docs/benchmarks.md). The setting is
    database-wide, so it is restored afterwards. Unit ids are built in SQL from integers, far
    cheaper than making Python strings.
    """

    def __init__(self, path: str) -> None:
        import duckdb

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(path)
        [(self.ordered,)] = self.con.execute(
            "SELECT current_setting('preserve_insertion_order')"
        ).fetchall()
        self.con.execute("SET preserve_insertion_order = false")
        self.con.execute("BEGIN TRANSACTION")

    def run(self, sql: str) -> None:
        self.con.execute(sql)

    def write(self, table: str, columns: str, frame: pd.DataFrame, select: str) -> None:
        with _chunk_registered(self.con, frame):
            self.con.execute(f"INSERT INTO {table} ({columns}) {select}")

    def finish(self, commit: bool) -> None:
        try:
            self.con.execute("COMMIT" if commit else "ROLLBACK")
            self.con.execute(f"SET preserve_insertion_order = {str(bool(self.ordered)).lower()}")
        finally:
            self.con.close()


class _CsvSink(_Sink):
    """A sink over the engine's raw DB-API connection, one transaction; an in-memory DuckDB
    formats each chunk as CSV (the same SELECT as the DuckDB path, so every warehouse gets
    identical rows) for the subclass to bulk-load."""

    def __init__(self, url: str) -> None:
        import tempfile

        import duckdb

        from ab_pipeline.warehouse import Warehouse

        self.warehouse = Warehouse(url)
        self.raw = self.warehouse.engine().raw_connection()
        self.cursor = self.raw.cursor()
        self.formatter = duckdb.connect()
        self.tmp = tempfile.TemporaryDirectory(prefix="ab-simulate-")
        self.csv = Path(self.tmp.name) / "chunk.csv"

    def chunk_csv(self, frame: pd.DataFrame, select: str) -> Path:
        """The chunk's rows, as `select` shapes them, in a CSV file (no header)."""
        with _chunk_registered(self.formatter, frame):
            target = _literal(str(self.csv))
            self.formatter.execute(f"COPY ({select}) TO {target} (FORMAT csv, HEADER false)")
        return self.csv

    def finish(self, commit: bool) -> None:
        try:
            if commit:
                self.raw.commit()
            else:
                self.raw.rollback()
        finally:
            self.cursor.close()
            self.raw.close()
            self.formatter.close()
            self.tmp.cleanup()


class _PostgresSink(_CsvSink):
    """COPY FROM STDIN through psycopg2: the chunk's CSV streamed to the server."""

    def run(self, sql: str) -> None:
        self.cursor.execute(sql)

    def write(self, table: str, columns: str, frame: pd.DataFrame, select: str) -> None:
        with self.chunk_csv(frame, select).open("rb") as data:
            self.cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)", data)


# Columns of the contract tables that are not text, and how a CSV text field becomes one.
_SNOWFLAKE_CASTS = {
    "exposed_at": "CAST({} AS TIMESTAMP_NTZ)",
    "occurred_at": "CAST({} AS TIMESTAMP_NTZ)",
    "is_internal": "CAST({} AS BOOLEAN)",
    "is_bot": "CAST({} AS BOOLEAN)",
    "value": "CAST({} AS DOUBLE)",
    "properties": "PARSE_JSON({})",
}


class _SnowflakeSink(_CsvSink):
    """Snowflake's bulk path, one transaction: each chunk is formatted as CSV by an in-memory
    DuckDB (the same SELECT as the other sinks), uploaded with PUT to the stage of a temporary
    all-text table, loaded with COPY INTO, and inserted into the contract table with casts
    (JSON text parsed into VARIANT). The temporary table keeps the COPY plain: a COPY with a
    transformation (`PARSE_JSON($7)`) is not something fakesnow 0.12.1 runs.

    Statements arrive as canonical SQL and are rendered for Snowflake, like the pipeline's.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.staged: set[str] = set()

    def run(self, sql: str) -> None:
        self.cursor.execute(self.warehouse.render(sql))

    def write(self, table: str, columns: str, frame: pd.DataFrame, select: str) -> None:
        names = _column_names(columns)
        stage = quote_ident("ab_simulate_" + table.replace('"', "").replace(".", "_"))
        if stage not in self.staged:
            text_columns = ", ".join(f"{n} TEXT" for n in names)
            self.run(f"CREATE TEMPORARY TABLE {stage} ({text_columns})")
            self.staged.add(stage)
        csv = self.chunk_csv(frame, select)
        # The table's own stage; its name is [a-z0-9_], unquoted it means the upper-case name.
        loading = stage.strip('"').upper()
        self.cursor.execute(f"PUT 'file://{csv}' @%{loading} AUTO_COMPRESS=FALSE OVERWRITE=TRUE")
        self.cursor.execute(
            f"COPY INTO {loading} FROM @%{loading} "
            "FILE_FORMAT = (TYPE = CSV FIELD_OPTIONALLY_ENCLOSED_BY = '\"') PURGE = TRUE"
        )
        casts = ", ".join(_SNOWFLAKE_CASTS.get(n, "{}").format(n) for n in names)
        self.run(f"INSERT INTO {table} ({columns}) SELECT {casts} FROM {stage}")
        self.run(f"DELETE FROM {stage}")


SPARK_ROWS_PER_MESSAGE = 250_000  # about 10 MB of Arrow: well inside a 1 GB driver
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}


def _spark_server_is_local(url: str) -> bool:
    """Whether the Spark Connect server runs on this machine (it can then read our files)."""
    from ab_pipeline.warehouse.dialects.spark import server_address

    return server_address(url)[0].lower() in _LOOPBACK_HOSTS


class _SparkSink(_Sink):
    """Spark Connect: each chunk formatted by an in-memory DuckDB (the same SELECT as the other
    sinks, so every warehouse gets identical rows) and appended to the table.

    A server on this machine reads each chunk from a Parquet file DuckDB writes (a read and an
    `insertInto` per chunk). A remote server gets the rows as Arrow through gRPC instead, in
    messages of SPARK_ROWS_PER_MESSAGE rows. On the 2-core machine the gRPC path once stalled
    loading 1 M units (10.5 M events); through files they load in 20-30 s, and 10 M units in
    about 3 minutes (docs/benchmarks.md).

    Spark has no transactions: a failed simulation leaves the chunks written so far, and the
    next run's `_prepare` deletes them. Its DELETE (Parquet tables cannot delete rows) keeps
    the other rows by rebuilding the table, only when some row matches.
    """

    def __init__(self, url: str) -> None:
        import tempfile

        import duckdb

        from ab_pipeline.warehouse import Warehouse

        self.warehouse = Warehouse(url)
        self.formatter = duckdb.connect()
        self.staging = (
            tempfile.TemporaryDirectory(prefix="ab-simulate-spark-")
            if _spark_server_is_local(url)
            else None
        )
        self.chunks = 0

    def run(self, sql: str) -> None:
        import sqlglot
        from sqlglot import exp

        tree = sqlglot.parse_one(sql, read="duckdb")
        if not isinstance(tree, exp.Delete):
            self.warehouse.execute(sql)
            return
        table = tree.this.sql(dialect="duckdb")
        where = tree.args["where"].this.sql(dialect="duckdb")
        if not self.warehouse.query(f"SELECT 1 AS found FROM {table} WHERE {where} LIMIT 1"):
            return
        kept = quote_ident(table.replace('"', "") + "__kept")
        self.warehouse.execute(
            [
                f"DROP TABLE IF EXISTS {kept}",
                f"CREATE TABLE {kept} AS SELECT * FROM {table} WHERE NOT ({where})",
                f"DROP TABLE {table}",
                f"ALTER TABLE {kept} RENAME TO {table}",
            ]
        )

    def write(self, table: str, columns: str, frame: pd.DataFrame, select: str) -> None:
        from ab_pipeline.warehouse.dialects.spark import spark_session

        names = _column_names(columns)
        target = table.replace('"', "")
        spark = spark_session(self.warehouse.url)
        with _chunk_registered(self.formatter, frame):
            if self.staging is None:
                self._send_arrow(spark, target, self.formatter.sql(select), names)
            else:
                self._send_file(spark, target, select, names, Path(self.staging.name))

    def _send_file(
        self, spark: Any, target: str, select: str, names: list[str], folder: Path
    ) -> None:
        self.chunks += 1
        path = folder / f"chunk_{self.chunks}.parquet"
        named = ", ".join(quote_ident(n) for n in names)
        self.formatter.execute(
            f"COPY (SELECT * FROM ({select}) AS chunk ({named})) "
            f"TO {_literal(str(path))} (FORMAT parquet)"
        )
        try:
            spark.read.parquet(str(path)).select(*names).write.insertInto(target)
        finally:
            path.unlink(missing_ok=True)

    @staticmethod
    def _send_arrow(spark: Any, target: str, chunk: Any, names: list[str]) -> None:
        rows = chunk.to_arrow_table().rename_columns(names)
        # A local relation travels in one gRPC message and is held whole by the driver.
        for start in range(0, rows.num_rows, SPARK_ROWS_PER_MESSAGE):
            part = rows.slice(start, SPARK_ROWS_PER_MESSAGE)
            spark.createDataFrame(part).write.insertInto(target)

    def finish(self, commit: bool) -> None:
        self.formatter.close()
        if self.staging is not None:
            self.staging.cleanup()


def _ndjson_line(names: list[str], row: tuple[object, ...]) -> str:
    """One row as a line of a BigQuery NDJSON load: times in UTC, JSON text as a JSON value."""
    import json
    from datetime import datetime

    record = {}
    for name, value in zip(names, row, strict=True):
        if isinstance(value, datetime):
            value = value.isoformat(sep=" ")
        elif name == "properties" and isinstance(value, str):
            value = json.loads(value)
        record[name] = value
    return json.dumps(record) + "\n"


class _BigQuerySink(_Sink):
    """BigQuery: DDL and DELETEs as statements; each chunk formatted by an in-memory DuckDB
    (the same SELECT as the other sinks) and appended by a load job of its rows (NDJSON: a
    load, unlike a streaming insert, leaves rows that DELETE can remove at once).

    No transaction spans the load jobs: a failed simulation leaves the chunks loaded so far,
    and the next run's `_prepare` deletes them.
    """

    def __init__(self, url: str) -> None:
        import duckdb

        from ab_pipeline.warehouse import Warehouse
        from ab_pipeline.warehouse.dialects.bigquery import BigQuerySession

        self.warehouse = Warehouse(url)
        self.session = BigQuerySession(url)
        self.formatter = duckdb.connect()

    def run(self, sql: str) -> None:
        self.warehouse.execute(sql)

    def write(self, table: str, columns: str, frame: pd.DataFrame, select: str) -> None:
        import io

        from google.cloud.bigquery import LoadJobConfig, SourceFormat

        with _chunk_registered(self.formatter, frame):
            rows = self.formatter.sql(select).fetchall()
        names = _column_names(columns)
        lines = "".join(_ndjson_line(names, row) for row in rows).encode()
        config = LoadJobConfig(
            source_format=SourceFormat.NEWLINE_DELIMITED_JSON, write_disposition="WRITE_APPEND"
        )
        self.session.client.load_table_from_file(
            io.BytesIO(lines), self.session.table_id(table), job_config=config
        ).result()

    def finish(self, commit: bool) -> None:
        self.formatter.close()


def _open_sink(url: str) -> _Sink:
    dialect = dialect_of(url)
    if dialect == "duckdb":
        return _DuckDBSink(normalize_url(url).removeprefix("duckdb:///"))
    if dialect == "postgresql":
        return _PostgresSink(url)
    if dialect == "snowflake":
        return _SnowflakeSink(url)
    if dialect == "spark":
        return _SparkSink(url)
    if dialect == "bigquery":
        return _BigQuerySink(url)
    raise ValueError(
        f"simulate writes to DuckDB, PostgreSQL, Snowflake, Spark or BigQuery, not {dialect!r}"
    )


def _table(name: str, schema: str | None) -> str:
    """The quoted table; `schema` applies to names the config did not qualify itself."""
    if schema and "." not in name:
        name = f"{schema}.{name}"
    return quote_ident(name)


def _prepare(sink: _Sink, plan: _Plan, exposures: str, events: str, schema: str | None) -> None:
    """Create the contract tables if missing and delete this experiment's rows only."""
    if schema:
        sink.run(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    sink.run(_EXPOSURES_DDL.format(table=exposures))
    sink.run(_EVENTS_DDL.format(table=events))
    sink.run(f"DELETE FROM {exposures} WHERE experiment_key = {_literal(plan.config.key)}")
    # The key is [a-z0-9-] (config validation), so the prefix holds no LIKE wildcard.
    sink.run(f"DELETE FROM {events} WHERE unit_id LIKE {_literal(plan.prefix + '%')}")
