"""DuckDB, the embedded default: canonical SQL runs as written."""

from __future__ import annotations

from typing import Any, ClassVar

from ab_pipeline.warehouse.dialects.base import ConnectionFields, Dialect

# DuckDB runs inside the task process and by default may take 80% of the machine's RAM for its
# buffers; a cap keeps peak memory flat as events grow (joins and sorts spill to disk beyond
# it). Set in the URL (duckdb_engine passes query parameters as DuckDB config) so that every
# engine built from it, Great Expectations' included, gets it. Override per warehouse:
# duckdb:///file.duckdb?memory_limit=4GB&threads=4. 900 MB: a readout's peak RSS is the cap
# plus ~570 MiB of interpreter (Great Expectations, pandas, statsmodels), and with 1 GB it
# came within 10 MiB of 1.5 GiB at 20M units (docs/benchmarks.md).
DUCKDB_DEFAULTS = {"memory_limit": "900MB"}


class DuckDB(Dialect):
    name = "duckdb"
    sqlglot_name = "duckdb"
    schemes = ("duckdb",)
    transpiles = False
    # An integer, cheaper to group and join on than a unit id string.
    unit_key: ClassVar[str] = "rowid"
    read_only_transactions = True
    concurrent_readers = False
    memory_limit_sql = "current_setting('memory_limit')"
    conn_types = ("duckdb",)

    def url_from_connection(self, fields: ConnectionFields) -> str:
        if not fields.host:
            raise ValueError("a duckdb connection needs host = the database file path")
        return f"duckdb:///{fields.host}"

    def connection_env(self, url: str) -> dict[str, Any]:
        return {"conn_type": "duckdb", "host": url.removeprefix("duckdb:///")}

    def connect_args(self, url: str, read_only: bool) -> dict[str, Any]:
        """Every connection waits for the file's lock (see `warehouse_lock`); a read-only
        one shares the file with other readers."""
        from ab_pipeline.warehouse import warehouse_lock

        warehouse_lock.install()
        return {"read_only": read_only}

    reads_result_types = True

    def result_types(self, connection: Any, select: str) -> dict[str, str]:
        """`DESCRIBE <select>` plans the query and names each column's type."""
        from sqlalchemy import text

        rows = connection.execute(text(f"DESCRIBE {select}")).all()
        return {str(row[0]): str(row[1]).upper() for row in rows}

    def autocommit(self, connection: Any, statement: str) -> Any:
        # duckdb_engine opens a transaction on first use; the COMMIT closes it.
        connection.exec_driver_sql(statement)
        connection.exec_driver_sql("COMMIT")
        return connection

    def engine_url(self, url: str) -> str:
        from urllib.parse import parse_qsl, urlencode

        base, _, query = url.partition("?")
        settings = dict(parse_qsl(query))
        return f"{base}?{urlencode({**DUCKDB_DEFAULTS, **settings})}"


DIALECT = DuckDB()
