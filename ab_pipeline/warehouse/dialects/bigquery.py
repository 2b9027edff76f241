"""BigQuery: canonical SQL transpiled by sqlglot, run through google-cloud-bigquery's client.

URL: `bigquery://PROJECT/DATASET`; the dataset is the default one of every query (unqualified
names such as `exposures` are `PROJECT.DATASET.exposures`); without it, every table name must
be `dataset.table`. Query parameters: `location` (the jobs' location) and `api_endpoint`
(where the client sends its requests instead of Google's API). An `http://` endpoint is a
local emulator and is called without credentials, e.g.
`bigquery://test-project/ab?api_endpoint=http://127.0.0.1:9050`; otherwise the client finds
credentials as Google's libraries do (GOOGLE_APPLICATION_CREDENTIALS, the metadata server).

Bound parameters are `@name` (BigQuery's named query parameters, typed from the Python value:
`BigQuerySession` below). SQLAlchemy does not reach BigQuery here; the pipeline talks to it
through `Dialect.session`, as to Spark.

Sessions. Temporary tables exist only inside a BigQuery *session*. Every `execute` call (one
extract, one results write: the unit the other engines run as one transaction) runs in a
session of its own: its first statement creates it (`create_session=True`), each later one
carries its id (`connection_properties=[ConnectionProperty("session_id", id)]`), and
`CALL BQ.ABORT_SESSION()` ends it afterwards, success or not, so its temporary tables go
with it. Two extracts never see each other's temporary tables. Great Expectations reaches
BigQuery through `ab_pipeline.warehouse.sa_bigquery` (its queries need no session).
There is no transaction around the statements (BigQuery's multi-statement transactions
refuse DDL on permanent tables): every step that relies on rollback elsewhere is idempotent
instead (the extract drops its tables IF EXISTS before creating them; a results write deletes
its attempt's rows first). docs/engines.md ("BigQuery") says what a local emulator runs of
this and what it cannot.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from ab_pipeline.warehouse.bigquery_client import bigquery_client, bigquery_target
from ab_pipeline.warehouse.dialects.base import Dialect, plain_rows

log = logging.getLogger(__name__)

# BigQuery's type names as the contract suite spells the same types (it lists each engine's),
# in GoogleSQL (INFORMATION_SCHEMA) and in the REST API's legacy names (a query's schema).
# DATETIME is BigQuery's timestamp without time zone, the contract's TIMESTAMP (canonical
# TIMESTAMP renders as DATETIME); BigQuery's TIMESTAMP is an instant, which the contract
# refuses as it refuses TIMESTAMP WITH TIME ZONE elsewhere.
_SUITE_TYPE_NAMES = {
    "BOOL": "BOOLEAN",
    "FLOAT64": "DOUBLE",
    "FLOAT": "DOUBLE",
    "INT64": "BIGINT",
    "INTEGER": "BIGINT",
    "DATETIME": "TIMESTAMP",
    "TIMESTAMP": "TIMESTAMP WITH TIME ZONE",
}


def suite_type_name(bigquery_type: str) -> str:
    """A BigQuery type name (GoogleSQL or legacy) as the contract suite names that type."""
    upper = bigquery_type.upper()
    return _SUITE_TYPE_NAMES.get(upper, upper)


def query_parameters(sql: str, params: Mapping[str, Any]) -> list[Any]:
    """The bound values `sql` uses (`@name`) as typed BigQuery query parameters. A naive
    datetime is UTC (a TIMESTAMP, as the contract tables' times are)."""
    from google.cloud.bigquery import ArrayQueryParameter, ScalarQueryParameter

    used = [name for name in params if f"@{name}" in sql]
    found: list[Any] = []
    for name in used:
        value = params[name]
        if isinstance(value, list | tuple):
            kind = _parameter_type(value[0] if value else "")
            found.append(ArrayQueryParameter(name, kind, [_parameter_value(v) for v in value]))
        else:
            found.append(
                ScalarQueryParameter(name, _parameter_type(value), _parameter_value(value))
            )
    return found


def _parameter_type(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, int):
        return "INT64"
    if isinstance(value, float):
        return "FLOAT64"
    if isinstance(value, Decimal):
        return "NUMERIC"
    if isinstance(value, dt.datetime):
        return "TIMESTAMP"
    if isinstance(value, dt.date):
        return "DATE"
    return "STRING"  # text, and NULL (BigQuery needs a type even for a NULL)


def _parameter_value(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


class BigQuerySession:
    """`base.Session` over google-cloud-bigquery: `execute` runs in a BigQuery session."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.project, self.dataset, _ = bigquery_target(url)

    @property
    def client(self) -> Any:
        return bigquery_client(self.url)

    def job_config(
        self, sql: str, params: Mapping[str, Any], session: str | None = None, new: bool = False
    ) -> Any:
        """A query job's configuration: the URL's default dataset (if any), the parameters
        `sql` uses, and its session: a new one (`new`), the one named `session`, or none."""
        from google.cloud.bigquery import ConnectionProperty, QueryJobConfig

        config = QueryJobConfig(query_parameters=query_parameters(sql, params))
        if self.dataset:
            config.default_dataset = f"{self.project}.{self.dataset}"
        if new:
            config.create_session = True
        elif session is not None:
            config.connection_properties = [ConnectionProperty("session_id", session)]
        return config

    def query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One SELECT, outside any session (it reads no temporary table)."""
        return plain_rows(self._result(sql, params))

    def _result(self, sql: str, params: Mapping[str, Any]) -> Any:
        """The rows (and schema) of one query job outside any session."""
        return self.client.query(sql, job_config=self.job_config(sql, params)).result()

    def execute(self, statements: Sequence[str], params: Mapping[str, Any]) -> None:
        """The statements in order, in one BigQuery session, ended afterwards."""
        with self.batch() as batch:
            batch.execute(statements, params)

    @contextmanager
    def batch(self) -> Iterator[BigQueryBatch]:
        """Statements and queries in one BigQuery session (its temporary tables), ended when
        the block ends, after a failure too."""
        batch = BigQueryBatch(self)
        try:
            yield batch
        finally:
            if batch.session_id is not None:
                self.end(batch.session_id)

    def end(self, session_id: str) -> None:
        """End the session (its temporary tables go with it). A failure to end it is logged,
        not raised: the statements' work is done, and BigQuery ends an idle session itself
        after 24 hours."""
        try:
            config = self.job_config("", {}, session_id)
            self.client.query("CALL BQ.ABORT_SESSION()", job_config=config).result()
        except Exception as error:  # the readout's outcome does not depend on it
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            log.warning("BigQuery session %s was not ended: %s", session_id, reason)

    def result_types(self, select: str) -> dict[str, str]:
        """{column: contract type name} of a query's result, from the schema BigQuery returns
        with it (run it with LIMIT 0: no row is read)."""
        schema = self._result(select, {}).schema
        return {field.name.lower(): suite_type_name(field.field_type) for field in schema}

    def table_exists(self, name: str) -> bool:
        """Whether the table exists; an unqualified name names none when the URL has no
        default dataset."""
        from google.api_core.exceptions import NotFound

        if not self.dataset and "." not in name:
            return False
        try:
            self.client.get_table(self.table_id(name))
        except NotFound:
            return False
        return True

    def table_names(self, schema: str | None) -> list[str]:
        dataset = f"{self.project}.{schema or self._default_dataset()}"
        return [t.table_id for t in self.client.list_tables(dataset) if t.table_type == "TABLE"]

    def table_id(self, name: str) -> str:
        """`PROJECT.DATASET.TABLE` of a (possibly quoted, possibly dataset-qualified) name."""
        parts = [p.strip('"`') for p in name.split(".")]
        if len(parts) == 1:
            parts.insert(0, self._default_dataset())
        if len(parts) == 2:
            parts.insert(0, self.project)
        return ".".join(parts)

    def _default_dataset(self) -> str:
        if not self.dataset:
            raise ValueError(f"{self.url} names no dataset: qualify table names (dataset.table)")
        return self.dataset


class BigQueryBatch:
    """Jobs of one BigQuery session (`BigQuerySession.batch`): the first job creates it, every
    later one carries its id."""

    def __init__(self, session: BigQuerySession) -> None:
        self.session = session
        self.session_id: str | None = None

    def execute(self, statements: Sequence[str], params: Mapping[str, Any]) -> None:
        for statement in statements:
            self._run(statement, params)

    def query(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One SELECT in the session: it may read the session's temporary tables."""
        rows = self._run(sql, params)
        return plain_rows(rows)

    def _run(self, sql: str, params: Mapping[str, Any]) -> Any:
        new = self.session_id is None
        config = self.session.job_config(sql, params, self.session_id, new=new)
        job = self.session.client.query(sql, job_config=config)
        rows = job.result()
        if new:
            self.session_id = job.session_info.session_id
        return rows


class BigQuery(Dialect):
    name = "bigquery"
    sqlglot_name = "bigquery"
    schemes = ("bigquery",)
    materialized = False
    samples_cheaply = False  # bytes billed are the columns read, whatever the LIMIT

    def engine_url(self, url: str) -> str:
        raise ValueError(
            "bigquery:// is not a SQLAlchemy URL: the pipeline reaches BigQuery through its "
            "own client (Dialect.session)"
        )

    def session(self, url: str) -> BigQuerySession:
        return BigQuerySession(url)

    # --- Great Expectations: its SQL datasource over BigQuery's DB-API (`sa_bigquery`) -----

    def gx_datasource(self, context: Any, name: str, url: str) -> Any:
        from ab_pipeline.warehouse import sa_bigquery

        sa_bigquery.register()
        address = url.split("://", 1)[1]
        return context.data_sources.add_sql(
            name=name, connection_string=f"bigquery+ab_dbapi://{address}"
        )

    def gx_execute(self, datasource: Any, statements: Sequence[str], url: str) -> None:
        """A materialized batch's statements, through the pipeline's own client."""
        self.session(url).execute(statements, {})

    reads_result_types = True

    def result_types(self, connection: Any, select: str) -> dict[str, str]:
        """The schema BigQuery returns with the (LIMIT 0) result, through the session
        (`connection`): names in lower case, types as `suite_type_name` names them."""
        types: dict[str, str] = connection.result_types(select)
        return types

    def column_types_sql(self, url: str, tables: Mapping[str, str]) -> str | None:
        """The contract tables' columns from their dataset's INFORMATION_SCHEMA.COLUMNS
        (BigQuery has one per dataset, and no current schema), types named as the suite
        names them (`suite_type_name`: BOOL is BOOLEAN, DATETIME is TIMESTAMP, ...).
        `dataset`.INFORMATION_SCHEMA.COLUMNS is written with the view's name unquoted, the
        form BigQuery documents (the emulator does not resolve it quoted part by part)."""
        _, default_dataset, _ = bigquery_target(url)
        kind = "UPPER(c.data_type)"
        renamed = " ".join(f"WHEN '{bq}' THEN '{suite}'" for bq, suite in _SUITE_TYPE_NAMES.items())
        selects = []
        for source, table in tables.items():
            *dataset, name = [part.strip('"`') for part in table.split(".")]
            where = dataset[-1] if dataset else default_dataset
            if not where:
                raise ValueError(f"{url} names no dataset: qualify {table} (dataset.table)")
            columns = f'"{where}".INFORMATION_SCHEMA.COLUMNS'
            selects.append(
                f"SELECT {self.literal(source)} AS source, LOWER(c.column_name) AS column_name, "
                f"CASE {kind} {renamed} ELSE {kind} END AS data_type FROM {columns} AS c "
                f"WHERE c.table_name = {self.literal(name)}"
            )
        return " UNION ALL ".join(selects)

    def rewrite(self, node: Any) -> Any:
        from sqlglot import exp

        if isinstance(node, exp.Placeholder):
            return node  # sqlglot writes `:name` as BigQuery's `@name`
        if isinstance(node, exp.JSONExtractScalar) and isinstance(node.expression, exp.Placeholder):
            return _json_value(node)
        if isinstance(node, exp.PrimaryKey) and not node.args.get("options"):
            # BigQuery accepts a primary key only as an unenforced hint.
            node.set("options", [exp.var("NOT ENFORCED")])
        return super().rewrite(node)

    def hash_bucket(self, column: str, buckets: int) -> str:
        return f"MOD(ABS(FARM_FINGERPRINT({column})), {buckets})"


def _json_value(node: Any) -> Any:
    """Canonical `doc->>:key` (a top-level key bound as a parameter) as BigQuery's
    `JSON_VALUE(doc, CONCAT('$."', @key, '"'))`: BigQuery addresses JSON by a JSONPath, and
    reads JSON text (a STRING) without a cast."""
    from sqlglot import exp

    doc = node.this
    if isinstance(doc, exp.Cast) and doc.to.is_type("json"):
        doc = doc.this
    path = exp.func("CONCAT", exp.Literal.string('$."'), node.expression, exp.Literal.string('"'))
    return exp.func("JSON_VALUE", doc, path)


DIALECT = BigQuery()
