"""Snowflake: canonical SQL transpiled by sqlglot; connections through snowflake-sqlalchemy.

URL: `snowflake://user:password@account/database/schema?warehouse=WH&role=ROLE`.
"""

from __future__ import annotations

from ab_pipeline.warehouse.dialects.base import Dialect


class Snowflake(Dialect):
    name = "snowflake"
    sqlglot_name = "snowflake"
    schemes = ("snowflake",)
    materialized = False  # Snowflake decides on its own whether to materialise a CTE

    def hash_bucket(self, column: str, buckets: int) -> str:
        return f"(ABS(HASH({column})) % {buckets})"

    def json_keys_sql(self, doc: str) -> str:
        # A lateral FLATTEN in canonical SQL is not expressible; OBJECT_KEYS gives an array.
        return f"OBJECT_KEYS(PARSE_JSON({doc}))"


DIALECT = Snowflake()
