"""PostgreSQL: canonical SQL runs as written; planner statistics and an advisory lock added."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ab_pipeline.warehouse.dialects.base import ConnectionFields, Dialect

# Any constant shared by every writer of the results tables (ASCII "ab_r").
RESULTS_LOCK_KEY = 0x61625F72


class PostgreSQL(Dialect):
    name = "postgresql"
    sqlglot_name = "postgres"
    schemes = ("postgresql", "postgres")
    transpiles = False
    # PostgreSQL sorts grouping sets on disk instead of hashing them.
    histograms_in_pass = False
    read_only_transactions = True
    conn_types = ("postgres", "postgresql")

    def url_from_connection(self, fields: ConnectionFields) -> str:
        return f"postgresql://{fields.netloc()}/{fields.schema or 'postgres'}"

    def normalize_url(self, url: str) -> str:
        """`postgres://` and `postgresql://` mean the psycopg2 driver."""
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
        return url

    def hash_bucket(self, column: str, buckets: int) -> str:
        return f"(abs(hashtext({column})) % {buckets})"

    def json_keys_sql(self, doc: str) -> str:
        return f"jsonb_object_keys(CAST({doc} AS JSONB))"

    def prepare_build(
        self, statements: Sequence[str], analysed: Mapping[str, str], table: str
    ) -> list[str]:
        """Freshly loaded source tables may have no planner statistics yet; PostgreSQL then
        estimates one row per CTE and nests loops (minutes instead of milliseconds). This is
        whole-table ETL: hash joins are always right, and ANALYZE after each step that fills a
        table gives the later joins on it real statistics."""
        from ab_pipeline.warehouse.quoting import quote_ident

        prepared = ["SET LOCAL enable_nestloop = off"]
        for statement in statements:
            prepared.append(statement)
            prepared += [
                f"ANALYZE {quote_ident(table)}"
                for prefix, table in analysed.items()
                if statement.startswith(prefix)
            ]
        return [*prepared, f"ANALYZE {quote_ident(table)}"]

    def results_lock(self) -> str:
        return f"SELECT pg_advisory_xact_lock({RESULTS_LOCK_KEY})"


DIALECT = PostgreSQL()
