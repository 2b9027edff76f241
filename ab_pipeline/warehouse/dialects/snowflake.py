"""Snowflake: canonical SQL transpiled by sqlglot; connections through the Snowflake connector.

URL: `snowflake://user:password@account/database/schema?warehouse=WH&role=ROLE` (the account
identifier, e.g. `myorg-myaccount`, in the host slot). `host`, `port` and `protocol` query
parameters override where the connector connects: a local fakesnow server is
`snowflake://user:pass@fakesnow/db/schema?host=127.0.0.1&port=8080&protocol=http`. Every
other query parameter is passed to `snowflake.connector.connect` as it is.

SQLAlchemy reaches Snowflake through `ab_pipeline.warehouse.sa_snowflake` (why not
snowflake-sqlalchemy: see there).

Names. Snowflake folds unquoted names to upper case and keeps quoted ones as written, so a
quoted lower-case `"exposures"` is another table than `exposures` (= `EXPOSURES`). The pipeline
follows Snowflake's own convention, the one tables created in Snowflake by hand or by most tools
have: every lower-case identifier means the upper-case name. Canonical SQL quotes generated
names (`quote_ident`); rendering rewrites a quoted all-lower-case identifier to the same name
quoted in upper case (`"exposures"` -> `"EXPOSURES"`, which is what unquoted `exposures` means
and stays safe for reserved words such as `value`). A name with a capital letter stays quoted
as written. The connection's dialect reads upper-case result names back in lower case, so
`SELECT unit_id` gives rows keyed `unit_id`. The contract tables are therefore `EXPOSURES` and
`EVENTS` with upper-case columns, and the pipeline's own tables `AB_READOUTS`, `AB_UNITS__...`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

from ab_pipeline.warehouse.dialects.base import _EMBED_PREFIX, ConnectionFields, Dialect

# The connector's type names (snowflake.connector.constants.FIELD_TYPES) that
# information_schema.columns spells otherwise.
_INFORMATION_SCHEMA_TYPES = {"FIXED": "NUMBER", "REAL": "FLOAT"}


class Snowflake(Dialect):
    name = "snowflake"
    sqlglot_name = "snowflake"
    schemes = ("snowflake",)
    materialized = False  # Snowflake decides on its own whether to materialise a CTE
    conn_types = ("snowflake",)

    def url_from_connection(self, fields: ConnectionFields) -> str:
        """Airflow's Snowflake connection: login, password, schema, and in the extra
        `account`, `database`, `warehouse`, `role`; a host (and port, and `protocol` in the
        extra) overrides where the connector connects (a proxy, a local fakesnow)."""
        from urllib.parse import quote, urlencode

        extra = fields.extra
        account = extra.get("account") or extra.get("extra__snowflake__account")
        database = extra.get("database") or extra.get("extra__snowflake__database")
        if not account or not database:
            raise ValueError("a snowflake connection needs extra.account and extra.database")
        auth = quote(fields.login or "", safe="")
        if fields.password:
            auth += ":" + quote(fields.password, safe="")
        path = quote(str(database), safe="")
        if fields.schema:
            path += "/" + quote(fields.schema, safe="")
        query = {k: str(extra[k]) for k in ("warehouse", "role") if extra.get(k)}
        if fields.host:
            query["host"] = fields.host
        if fields.port:
            query["port"] = str(fields.port)
        if extra.get("protocol"):
            query["protocol"] = str(extra["protocol"])
        netloc = f"{auth}@{account}" if auth else str(account)
        return f"snowflake://{netloc}/{path}" + (f"?{urlencode(query)}" if query else "")

    def normalize_url(self, url: str) -> str:
        """`snowflake://...` names the connector-based SQLAlchemy dialect (registered here)."""
        from ab_pipeline.warehouse import sa_snowflake

        sa_snowflake.register()
        scheme, rest = url.split("://", 1)
        base, _, query = rest.partition("?")
        settings = dict(parse_qsl(query))
        return f"snowflake+ab_connector://{base}" + (f"?{urlencode(settings)}" if settings else "")

    def rewrite(self, node: Any) -> Any:
        from sqlglot import exp

        if (
            isinstance(node, exp.Identifier)
            and node.quoted
            and node.this == node.this.lower()
            and not node.this.startswith(_EMBED_PREFIX)
        ):
            return exp.Identifier(this=node.this.upper(), quoted=True)
        if isinstance(node, exp.JSONKeys) and isinstance(node.this, exp.Cast):
            # Snowflake's CAST(text AS VARIANT) is a string, not an object: parse the text.
            return exp.JSONKeys(this=exp.ParseJSON(this=node.this.this))
        return super().rewrite(node)

    reads_result_types = True

    def result_types(self, connection: Any, select: str) -> dict[str, str]:
        """The connector's description of the (LIMIT 0) result: each column's Snowflake type
        code, named as information_schema names that type (FIXED is NUMBER, REAL is FLOAT;
        TEXT, TIMESTAMP_NTZ, BOOLEAN, VARIANT, ... as they are); upper-case names read back
        in lower case, as every result's names do (`sa_snowflake`)."""
        from snowflake.connector.constants import FIELD_ID_TO_NAME
        from sqlalchemy import text

        description = connection.execute(text(select)).cursor.description or []
        normalize = connection.dialect.normalize_name
        return {
            normalize(str(column[0])): _INFORMATION_SCHEMA_TYPES.get(
                FIELD_ID_TO_NAME[column[1]], FIELD_ID_TO_NAME[column[1]]
            )
            for column in description
        }

    def stored_name(self, name: str) -> str:
        return name.upper() if name == name.lower() else name

    def hash_bucket(self, column: str, buckets: int) -> str:
        return f"(ABS(HASH({column})) % {buckets})"


DIALECT = Snowflake()
