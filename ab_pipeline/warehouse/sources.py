"""The experiment's sources in generated SQL: a table, or the team's own query.

`source.exposures` and `source.events` are a table name or `{sql: SELECT ...}` in the
warehouse's dialect (docs/config.md). Every statement the pipeline generates reaches a source
through `source_relation()`, which gives a FROM item: the quoted table name, or the checked
query as an `embedded` stand-in that rendering (`Warehouse.render`) replaces with the query in
parentheses, untranspiled. Callers always alias it (`FROM {relation} AS e`): PostgreSQL requires
an alias on a subquery in FROM.

`source_columns()` reads a source query's result columns and their types without reading a
row, for the data-quality gate's contract check and `ab-pipeline validate --warehouse`. How a
result's types are read differs per engine: `Dialect.result_types` in the engine's module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ab_pipeline.core.config import Source, SourceName
from ab_pipeline.warehouse import embedded, quote_ident
from ab_pipeline.warehouse.dialects import all_dialects

if TYPE_CHECKING:
    from ab_pipeline.warehouse import Warehouse


class SourceQueryError(ValueError):
    """A source's query is not one read-only SELECT in this warehouse's dialect, or does not
    run there; the message names the field (`source.events.sql`)."""


def source_relation(source: Source, which: SourceName, dialect: str | None = None) -> str:
    """A FROM item for the source in canonical SQL (alias it): the quoted table, or the
    query's `embedded` stand-in, which rendering replaces with `(<query>)`.

    The query is the one SELECT `sql_safety.checked_select` finds in the config's text, as
    sqlglot writes it back in the warehouse's `dialect` (DuckDB when None): what runs is what
    was checked.
    """
    table = source.table(which)
    if table is not None:
        return quote_ident(table)
    return embedded(checked_source_sql(source, which, dialect))


def checked_source_sql(source: Source, which: SourceName, dialect: str | None = None) -> str:
    """The source's query as checked and written back in `dialect` (raises SourceQueryError)."""
    from ab_pipeline.core.sql_safety import UnsafeSQL, checked_select

    sql = source.sql(which)
    assert sql is not None, f"source.{which} is a table"
    try:
        return checked_select(sql, dialect)
    except UnsafeSQL as error:
        raise SourceQueryError(
            f"source.{which}.sql: not one read-only SELECT in {dialect or 'duckdb'}: {error}"
        ) from None


def source_columns(warehouse: Warehouse, source: Source, which: SourceName) -> dict[str, str]:
    """{column: TYPE} of the source query's result, types upper-cased as information_schema
    names them (VARCHAR, TIMESTAMP, DOUBLE PRECISION, ...). Runs the query with LIMIT 0 in the
    warehouse: nothing is read. Raises SourceQueryError naming the field when it fails."""
    dialect = warehouse.sql_dialect
    if not dialect.reads_result_types:
        readers = [d.name for d in all_dialects() if d.reads_result_types]
        raise SourceQueryError(
            f"source.{which}.sql: the column types of a query's result are not read on "
            f"{dialect.name} yet (only {', '.join(readers)}); give a table"
        )
    relation = source_relation(source, which, warehouse.dialect)
    select = warehouse.render(f"SELECT * FROM {relation} AS s LIMIT 0")
    try:
        session = dialect.session(warehouse.url)
        if session is not None:
            return dialect.result_types(session, select)
        with warehouse.engine(read_only=True).begin() as connection:
            return dialect.result_types(connection, select)
    except SourceQueryError:
        raise
    except Exception as error:
        first = next((line for line in str(error).splitlines() if line.strip()), repr(error))
        raise SourceQueryError(
            f"source.{which}.sql does not run in the warehouse: {type(error).__name__}: {first}"
        ) from error
