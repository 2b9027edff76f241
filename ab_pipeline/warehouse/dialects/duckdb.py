"""DuckDB, the embedded default: canonical SQL runs as written."""

from __future__ import annotations

from typing import ClassVar

from ab_pipeline.warehouse.dialects.base import Dialect

# DuckDB runs inside the task process and by default may take 80% of the machine's RAM for its
# buffers; a cap keeps peak memory flat as events grow (joins and sorts spill to disk beyond
# it). Set in the URL (duckdb_engine passes query parameters as DuckDB config) so that every
# engine built from it, Great Expectations' included, gets it. Override per warehouse:
# duckdb:///file.duckdb?memory_limit=4GB&threads=4.
DUCKDB_DEFAULTS = {"memory_limit": "1GB"}


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

    def engine_url(self, url: str) -> str:
        from urllib.parse import parse_qsl, urlencode

        base, _, query = url.partition("?")
        settings = dict(parse_qsl(query))
        return f"{base}?{urlencode({**DUCKDB_DEFAULTS, **settings})}"


DIALECT = DuckDB()
