"""User SQL (a metric's `sql:`) is one read-only SELECT, checked by parsing it, never by regex.

`checked_select(sql, dialect)` parses the text with sqlglot in the warehouse's dialect and
returns the statement as sqlglot writes it back (comments dropped), so what runs is exactly
what was checked: a tokenizer difference between sqlglot and the engine cannot smuggle a
second statement past the check. It raises UnsafeSQL naming the first problem:

- not exactly one statement, or not a query (`SELECT`, `WITH ... SELECT`, `UNION` ...);
- a statement inside it that writes or changes anything (a data-modifying CTE, `SELECT INTO`,
  DDL, `COPY`, `ATTACH`, `INSTALL`/`LOAD`, `SET`, ...) or locks rows (`FOR UPDATE`);
- a function that reads files or URLs, reaches other databases or has side effects
  (DENIED_FUNCTIONS and DENIED_PREFIXES: read_csv*, read_parquet, read_json*, glob, query,
  pg_read_file, lo_import, dblink, nextval, set_config, ...);
- a function in FROM other than SAFE_TABLE_FUNCTIONS (generate_series, range, unnest, ...),
  and a table name that is not a plain identifier (DuckDB reads `FROM 'file.csv'` as a file).

The pipeline also runs the user's SELECT in a read-only transaction (`BEGIN TRANSACTION READ
ONLY`, on DuckDB and PostgreSQL; ab_pipeline/readout/extract.py), so a write the parser could not
foresee (a user-defined function that writes, say) fails instead of taking effect.

sqlglot is imported inside the functions: the DAG processor loads configs at parse time.
"""

from __future__ import annotations

import re
from typing import Any

# Warehouse names that differ from sqlglot's; any other name is sqlglot's own (the warehouse
# dialect modules pass their `sqlglot_name`).
DIALECTS = {"postgresql": "postgres"}
# sqlglot names of every engine's dialect, for configs whose warehouse is not known yet; the
# warehouse layer adds its engines' (`ab_pipeline.warehouse.dialects.all_dialects`).
ENGINE_DIALECTS: set[str] = {"duckdb", "postgres"}
DEFAULT_DIALECT = "duckdb"

DENIED_FUNCTIONS = frozenset(
    {
        "glob",
        "sniff_csv",
        "query",
        "query_table",
        "getenv",
        "set_config",
        "nextval",
        "setval",
        "copy",
        "load",
        "install",
        "attach",
        "detach",
        "export_database",
        "import_database",
        "st_read",
        "current_setting",
    }
)
DENIED_PREFIXES = (
    "read_",
    "parquet_",
    "sqlite_",
    "postgres_",
    "mysql_",
    "iceberg_",
    "delta_",
    "http",
    "pg_read",
    "pg_ls_",
    "pg_stat_file",
    "pg_file",
    "pg_terminate",
    "pg_cancel",
    "pg_reload",
    "pg_rotate",
    "pg_advisory",
    "pg_try_advisory",
    "pg_sleep",
    "lo_",
    "dblink",
)
SAFE_TABLE_FUNCTIONS = frozenset(
    {
        "generate_series",
        "range",
        "unnest",
        "json_each",
        "jsonb_each",
        "json_each_text",
        "jsonb_each_text",
        "json_array_elements",
        "jsonb_array_elements",
        "json_array_elements_text",
        "jsonb_array_elements_text",
        "regexp_split_to_table",
    }
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UnsafeSQL(ValueError):
    """The text is not one read-only SELECT; the message says why."""


def sqlglot_dialect(warehouse_dialect: str | None) -> str:
    """sqlglot's name for a warehouse dialect (`postgresql` -> `postgres`); DuckDB's when none
    is given."""
    name = warehouse_dialect or DEFAULT_DIALECT
    return DIALECTS.get(name, name)


def checked_select(sql: str, dialect: str | None = None) -> str:
    """The one SELECT in `sql`, as sqlglot writes it in `dialect`; raises UnsafeSQL."""
    import sqlglot
    from sqlglot.errors import SqlglotError

    read = sqlglot_dialect(dialect)
    try:
        statements = [s for s in sqlglot.parse(sql, read=read) if s is not None]
    except SqlglotError as error:
        first = str(error).splitlines()[0]
        raise UnsafeSQL(f"does not parse as {read} SQL: {first}") from None
    if len(statements) != 1:
        raise UnsafeSQL(f"must be exactly one SELECT statement (found {len(statements)})")
    [statement] = statements
    _check(statement)
    return str(statement.sql(dialect=read, comments=False))


def checked_in_any_dialect(sql: str) -> None:
    """For a config whose warehouse is not known yet: the text must parse in at least one
    supported dialect, and be safe in every dialect that parses it."""
    failures = []
    for dialect in sorted(ENGINE_DIALECTS):
        try:
            checked_select(sql, dialect)
            return
        except UnsafeSQL as error:
            if not str(error).startswith("does not parse"):
                raise
            failures.append(str(error))
    raise UnsafeSQL("; ".join(failures))


def _check(statement: Any) -> None:
    from sqlglot import exp

    if not isinstance(statement, exp.Select | exp.SetOperation):
        raise UnsafeSQL(f"must be a SELECT, not {statement.key.upper()}")
    forbidden = tuple(
        getattr(exp, name)
        for name in (
            "DML",
            "DDL",
            "Insert",
            "Update",
            "Delete",
            "Merge",
            "Create",
            "Drop",
            "Alter",
            "TruncateTable",
            "Copy",
            "Attach",
            "Detach",
            "Install",
            "Command",
            "Set",
            "Pragma",
            "Use",
            "Into",
            "Lock",
            "Transaction",
            "Commit",
            "Rollback",
            "LoadData",
            "Grant",
            "Revoke",
        )
        if hasattr(exp, name)
    )
    for node in statement.walk():
        if isinstance(node, forbidden):
            raise UnsafeSQL(f"{_describe(node)} is not allowed: only reading SELECTs")
        if isinstance(node, exp.Func):
            _check_function(node)
        if isinstance(node, exp.Table):
            _check_table(node)


def _function_names(node: Any) -> set[str]:
    from sqlglot import exp

    if isinstance(node, exp.Anonymous):
        return {str(node.name).lower()}
    return {str(node.sql_name()).lower(), str(node.key).lower()}


def _check_function(node: Any) -> None:
    for name in _function_names(node):
        if name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES):
            raise UnsafeSQL(f"function {name}() is not allowed (files, URLs or side effects)")


def _check_table(node: Any) -> None:
    """A FROM item: a plain [catalog.][schema.]table, or a known-safe table function."""
    from sqlglot import exp

    source = node.this
    if isinstance(source, exp.Func):
        names = _function_names(source)
        safe = names & SAFE_TABLE_FUNCTIONS or isinstance(
            source, exp.GenerateSeries | exp.ExplodingGenerateSeries | exp.Unnest
        )
        if not safe:
            raise UnsafeSQL(
                f"function {sorted(names)[0]}() in FROM is not allowed: user SQL reads "
                "warehouse tables (table functions allowed: generate_series, range, unnest, "
                "json_each and the like)"
            )
        return
    if not isinstance(source, exp.Identifier):
        raise UnsafeSQL(f"FROM {node.sql()} is not a table name")
    for part in (node.catalog, node.db, node.name):
        if part and not _IDENTIFIER.match(part):
            raise UnsafeSQL(f"table name {part!r} is not a plain identifier (files are not read)")


def _describe(node: Any) -> str:
    return str(node.key).upper().replace("_", " ")
