"""A small SQLAlchemy dialect over google-cloud-bigquery's DB-API, for Great Expectations only.

The pipeline's own statements reach BigQuery through `dialects.bigquery.BigQuerySession` (one
BigQuery session per `execute`). GX's SQL datasource, which runs the data-quality suites'
queries, needs a SQLAlchemy engine: this dialect gives it one over
`google.cloud.bigquery.dbapi`, with the same client (endpoint, credentials) as the session.
GX's queries are SELECTs with every value written in as a literal; they read no temporary
table, so they need no BigQuery session.

Why not sqlalchemy-bigquery: GX, seeing a dialect named "bigquery", imports it for its types,
and the pipeline sends only text SQL (rendered by `dialects.bigquery`), so it needs no
compiler, types or reflection: SQLAlchemy's default dialect plus the few things below, under a
name of its own (GX then treats it as a generic SQL database).

- Parameters: the DB-API's `pyformat` (`%(name)s`), which it sends as BigQuery's `@name`.
- Names: quoted with backticks, as BigQuery quotes them.
- Transactions: none. BigQuery's DB-API commits nothing and has no rollback; SQLAlchemy's
  rollback (when a connection is returned) does nothing here.

URL (built by `dialects.bigquery.BigQuery.gx_datasource`): `bigquery+ab_dbapi://PROJECT/...`,
the pipeline's `bigquery://` URL with this driver named.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL, default
from sqlalchemy.sql import compiler

REGISTRY_NAME = "bigquery.ab_dbapi"  # `bigquery+ab_dbapi://` in a URL


class BigQueryDBAPIDialect(default.DefaultDialect):
    name = "bigquery_dbapi"  # not "bigquery": GX would import sqlalchemy-bigquery's types
    driver = "ab_dbapi"
    default_paramstyle = "pyformat"
    supports_statement_cache = True
    supports_sane_rowcount = False
    supports_native_boolean = True
    postfetch_lastrowid = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.identifier_preparer = compiler.IdentifierPreparer(self, initial_quote="`")

    @classmethod
    def import_dbapi(cls) -> Any:
        from google.cloud.bigquery import dbapi

        return dbapi

    def create_connect_args(self, url: URL) -> tuple[list[Any], dict[str, Any]]:
        from ab_pipeline.warehouse.bigquery_client import bigquery_client

        pipeline_url = url.set(drivername="bigquery").render_as_string(hide_password=False)
        return [], {"client": bigquery_client(pipeline_url), "prefer_bqstorage_client": False}

    def do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        """Each query as a job of its own (`jobs.insert`, then its result), whose failure
        raises. Without a job id the DB-API takes the `jobs.query` shortcut, whose failed query
        the emulator answers with an empty result: a data-quality check would then pass without
        having run. (With a job id the DB-API sets the parameters on the config it is given.)"""
        from uuid import uuid4

        from google.cloud.bigquery import QueryJobConfig

        job_id = f"ab_pipeline_{uuid4().hex}"
        cursor.execute(statement, parameters, job_id=job_id, job_config=QueryJobConfig())

    def do_execute_no_params(self, cursor: Any, statement: str, context: Any = None) -> None:
        self.do_execute(cursor, statement, None, context)

    def do_rollback(self, dbapi_connection: Any) -> None:
        return None  # nothing to roll back: BigQuery's DB-API has no transactions

    def do_commit(self, dbapi_connection: Any) -> None:
        return None

    def get_isolation_level(self, dbapi_connection: Any) -> Any:
        return "AUTOCOMMIT"

    def _get_server_version_info(self, connection: Any) -> tuple[int, ...]:
        return ()

    def _get_default_schema_name(self, connection: Any) -> str:
        return ""

    def do_ping(self, dbapi_connection: Any) -> bool:
        return True


def register() -> None:
    """Make `bigquery+ab_dbapi://` URLs load this dialect (cheap: imports nothing)."""
    from sqlalchemy.dialects import registry

    registry.register(REGISTRY_NAME, __name__, "BigQueryDBAPIDialect")
