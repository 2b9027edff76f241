"""A small SQLAlchemy dialect over `snowflake-connector-python` 4.x: what the pipeline needs.

Why not snowflake-sqlalchemy: its releases for SQLAlchemy 2.1 (2.1.x) require connector 5.x,
whose new native client cannot log in to fakesnow 0.12.1 (the server the tests run against:
"Missing response field: master token"), and fakesnow itself imports connector 4.x modules;
its 1.x releases allow connector 4.x but fail to import under SQLAlchemy 2.1
(`sqlalchemy.orm.context.ORMSelectCompileState` is gone). The pipeline sends only text SQL
(rendered by `dialects.snowflake`), so it needs no compiler, types or reflection beyond
`has_table`: SQLAlchemy's default dialect plus the few things below.

- Names: Snowflake stores unquoted names upper-case and reports them so in results; like
  SQLAlchemy's Oracle dialect, an all-upper-case name reads back lower-case
  (`requires_name_normalize`), so `SELECT unit_id` gives the key `unit_id`.
- Parameters: the connector's `pyformat` (bound client-side); SQLAlchemy turns `:name` into
  `%(name)s`.
- Transactions: the connection runs with autocommit off; SQLAlchemy commits or rolls back.
  Snowflake itself commits before and after each DDL statement (fakesnow does not).

URL (built by `dialects.snowflake.Snowflake.engine_url` from the pipeline's `snowflake://`):
`snowflake+ab_connector://user:password@account/database/schema?warehouse=WH&role=R`; `host`,
`port` and `protocol` query parameters reach the connector as they are (a local fakesnow:
`?host=127.0.0.1&port=8080&protocol=http`). Any other query parameter is a connector argument.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL, default

REGISTRY_NAME = "snowflake.ab_connector"  # `snowflake+ab_connector://` in a URL
_INTEGER_ARGS = ("port", "login_timeout", "network_timeout")


class SnowflakeConnectorDialect(default.DefaultDialect):
    # The pipeline's name of the engine (results_store renders by it); GX, seeing "snowflake",
    # looks for snowflake-sqlalchemy's type module, finds none and carries on without it.
    name = "snowflake"
    driver = "ab_connector"
    default_paramstyle = "pyformat"
    supports_statement_cache = True
    requires_name_normalize = True
    max_identifier_length = 255
    supports_sane_rowcount = False
    supports_native_boolean = True
    postfetch_lastrowid = False

    @classmethod
    def import_dbapi(cls) -> Any:
        import snowflake.connector

        return snowflake.connector

    def create_connect_args(self, url: URL) -> tuple[list[Any], dict[str, Any]]:
        args: dict[str, Any] = {"autocommit": False}
        if url.username:
            args["user"] = url.username
        if url.password:
            args["password"] = url.password
        if url.host:
            args["account"] = url.host
        database, _, schema = (url.database or "").partition("/")
        if database:
            args["database"] = database
        if schema:
            args["schema"] = schema
        for name, value in url.query.items():
            text = value if isinstance(value, str) else value[-1]
            args[name] = int(text) if name in _INTEGER_ARGS else text
        # The connector's out-of-band telemetry would post to Snowflake's servers.
        args.setdefault("session_parameters", {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False})
        return [], args

    def normalize_name(self, name: str) -> str:
        """Snowflake's case-insensitive (upper-case) names read lower-case; others as stored."""
        return name.lower() if name and name.upper() == name and name.lower() != name else name

    def denormalize_name(self, name: str) -> str:
        return name.upper() if name and name.lower() == name and name.upper() != name else name

    def get_isolation_level(self, dbapi_connection: Any) -> Any:
        return "READ COMMITTED"  # Snowflake's only level

    def get_isolation_level_values(self, dbapi_connection: Any) -> Any:
        return ["AUTOCOMMIT", "READ COMMITTED"]

    def set_isolation_level(self, dbapi_connection: Any, level: Any) -> None:
        """AUTOCOMMIT: the connector's autocommit mode (SQLAlchemy's `isolation_level`)."""
        dbapi_connection.autocommit(level == "AUTOCOMMIT")

    def _get_server_version_info(self, connection: Any) -> tuple[int, ...]:
        return ()

    def _get_default_schema_name(self, connection: Any) -> str:
        from sqlalchemy import text

        schema = connection.execute(text("SELECT CURRENT_SCHEMA()")).scalar()
        return self.normalize_name(str(schema or ""))

    def do_ping(self, dbapi_connection: Any) -> bool:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        return True

    def has_table(
        self, connection: Any, table_name: str, schema: str | None = None, **kw: Any
    ) -> bool:
        from sqlalchemy import text

        query = (
            "SELECT COUNT(*) FROM information_schema.tables "
            "WHERE table_name = :table AND table_schema = COALESCE(:schema, CURRENT_SCHEMA())"
        )
        found = connection.execute(
            text(query),
            {
                "table": self.denormalize_name(table_name),
                "schema": self.denormalize_name(schema) if schema else None,
            },
        ).scalar()
        return bool(found)

    def get_table_names(self, connection: Any, schema: str | None = None, **kw: Any) -> list[str]:
        from sqlalchemy import text

        query = (
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema = COALESCE(:schema, CURRENT_SCHEMA()) ORDER BY table_name"
        )
        rows = connection.execute(
            text(query), {"schema": self.denormalize_name(schema) if schema else None}
        )
        return [self.normalize_name(row[0]) for row in rows]


def register() -> None:
    """Make `snowflake+ab_connector://` URLs load this dialect (cheap: imports nothing)."""
    from sqlalchemy.dialects import registry

    registry.register(REGISTRY_NAME, __name__, "SnowflakeConnectorDialect")
