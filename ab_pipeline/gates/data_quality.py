"""The data-quality gate: Great Expectations suites run in the warehouse, never in Python.

The suites are JSON files in `expectations/` (versioned with the code), one per batch:

- `contract.json`: the column types of the exposures and events tables (information_schema),
  or of a source query's result (`source_query_columns()`: the query run with LIMIT 0); when it
  fails, the other suites are not run (their comparisons assume those types);
- `exposures.json`: this experiment's exposures, row by row (nulls, configured arms, window);
- `arms.json`: the same exposures, unit by unit (one arm per unit);
- `events.json`: events of enrolled units, plus unattributable events (no unit_id) in the
  experiment's period (nulls, data from the future, experiment tags);
- `units.json`: the run's units table (internal/bot traffic left after exclusion; every
  metric's event seen for enrolled units after their first exposure; `sql:` metric values).

Missing data is never a number: a metric whose event has no rows for enrolled units after
their first exposure fails `metric_events_after_exposure`, and a value that is NaN, infinite or
larger in magnitude than MAX_ABS_VALUE fails `events_value_finite` / `sql_metric_values_finite`,
so the run is a RERUN naming the metric and event instead of a comparison of zeros or NaNs.

Each batch is a GX query asset on a SQL datasource and each check a
`counted_unexpected_rows_expectation` (GX's `UnexpectedRowsExpectation`, see
`_counted_expectation()`) whose query selects the offending rows; `_bounded()` wraps it so the
warehouse returns only the exact count and a few examples, in one query per check. Column
expectations are deliberately not used: on a query asset GX reads the column list by executing
the bare batch query, and PostgreSQL's driver would then pull every row of the batch into Python.

Per-experiment values enter in one place, `experiment_values()`, and reach the SQL text as
`$name` placeholders filled with validated, quoted identifiers (a source given as `{sql: ...}`:
its checked query in parentheses, `ab_pipeline.warehouse.sources`) and dialect-escaped literals
(GX query assets and `UnexpectedRowsExpectation` take SQL text, not bound parameters).

`great_expectations` is imported inside functions only: it costs seconds to import and the DAG
file imports the pipeline at parse time.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import re
import string
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ab_pipeline.core.config import SOURCE_COLUMNS, ExperimentConfig, SourceName
from ab_pipeline.core.dates import midnight
from ab_pipeline.core.errors import PipelineError
from ab_pipeline.core.paths import data_dir
from ab_pipeline.gates.gx_sql import prepare_gx_for
from ab_pipeline.warehouse import (
    Warehouse,
    dialect_for,
    dialect_of,
    embedded,
    normalize_url,
    quote_ident,
)
from ab_pipeline.warehouse.run_tables import scratch_table_name
from ab_pipeline.warehouse.sources import (
    SourceQueryError,
    checked_source_sql,
    source_columns,
    source_relation,
)

if TYPE_CHECKING:
    from great_expectations.core import ExpectationValidationResult
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.datasource.fluent import Datasource

    from ab_pipeline.gates.base import GateContext, GateResult
    from ab_pipeline.warehouse import Dialect as WarehouseDialect

SUITES_DIR = data_dir("expectations")
SUITE_FILES = ("contract.json", "exposures.json", "arms.json", "events.json", "units.json")
MAX_EXAMPLES = 5
# The largest magnitude a metric value may have. No product measure (milliseconds, cents,
# counts) comes near it, while sums of squares over a hundred million units stay far below
# the double range (1e15^2 * 1e8 = 1e38 < 1.8e308): a larger value is a unit or logging bug.
MAX_ABS_VALUE = 1e15
# String values are written into SQL text that GX later passes through `str.format` (braces)
# and SQLAlchemy `text()` (colons); config validation already limits keys and arms to this.
# Event names are free text: what they may not hold are the characters those layers (and
# psycopg2's `%` placeholders) would read; quotes are escaped by the literal itself.
_UNSAFE_TEXT = re.compile(r"[{}:%\\\x00-\x1f]")

Fill = Callable[..., str]  # (template, **values of this one query) -> SQL text
Literal = Callable[[Any], str]  # one Python value -> an SQL literal of the warehouse's engine
Render = Callable[[str], str]  # canonical SQL text -> the warehouse engine's
_GX_BATCH = "ab_gx_batch"  # stands in for GX's `{batch}` while a query is rendered


@dataclass(frozen=True)
class ExperimentValues:
    """Everything experiment-specific the suites see."""

    identifiers: dict[str, str]  # $placeholder -> validated, quoted table name (or a source query)
    values: dict[str, Any]  # $placeholder -> Python value, rendered as an SQL literal
    words: dict[str, str]  # fields of the detail sentences
    event_metrics: dict[str, list[str]]  # metric event -> the metrics that read it
    units_table: str  # the run's units table, unquoted (its scratch tables sit beside it)
    # source given as `{sql: ...}` -> its result's {contract column: TYPE, or "missing"}
    query_columns: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    # source given as `{sql: ...}` -> the query as checked in the warehouse's dialect
    source_queries: dict[str, str] = dataclasses.field(default_factory=dict)


def metric_events(config: ExperimentConfig) -> dict[str, list[str]]:
    """{event name: metrics reading it}, for every event a metric's value comes from."""
    from ab_pipeline.metrics import kind_of

    events: dict[str, list[str]] = {}
    for name, metric in config.metrics.items():
        # A proportion or mean defined by `sql:` has no event.
        for event in dict.fromkeys(kind_of(metric).events(metric)):
            events.setdefault(event, []).append(name)
    return dict(sorted(events.items()))


def sql_metric_columns(config: ExperimentConfig) -> dict[str, str]:
    """{`sql:` metric: its units-table column}."""
    from ab_pipeline.metrics import kind_of
    from ab_pipeline.metrics.base import metric_column

    return {
        name: metric_column(name)
        for name, metric in config.metrics.items()
        if kind_of(metric).sql_text(metric) is not None
    }


def source_query_columns(
    warehouse: Warehouse, config: ExperimentConfig
) -> dict[str, dict[str, str]]:
    """{source given as `{sql: ...}`: {contract column: its type in the query's result, or
    "missing"}}: the query runs with LIMIT 0 in the warehouse (no row is read). Raises
    SourceQueryError naming the field when a query does not run."""
    found: dict[str, dict[str, str]] = {}
    for which in _query_sources(config):
        types = source_columns(warehouse, config.source, which)
        found[which] = {column: types.get(column, "missing") for column in SOURCE_COLUMNS[which]}
    return found


def _query_sources(config: ExperimentConfig) -> list[SourceName]:
    names: tuple[SourceName, ...] = ("exposures", "events")
    return [which for which in names if config.source.sql(which) is not None]


def experiment_values(
    config: ExperimentConfig,
    run_date: date,
    units_table: str,
    dialect: str | None = None,
    query_columns: dict[str, dict[str, str]] | None = None,
) -> ExperimentValues:
    """The single place where per-experiment values enter the data-quality suites.

    `dialect`: the warehouse's, in which a source's `sql:` is checked and written;
    `query_columns`: what `source_query_columns()` found (the contract suite's input for such a
    source).
    """
    excluded = [
        flag
        for flag, on in (
            ("internal", config.audience.exclude_internal),
            ("bot", config.audience.exclude_bots),
        )
        if on
    ]
    # A source query has no table in information_schema: its columns come from query_columns.
    exposures_schema, _, exposures_table = (config.source.table("exposures") or "").rpartition(".")
    events_schema, _, events_table = (config.source.table("events") or "").rpartition(".")
    events = metric_events(config)
    sql_columns = sql_metric_columns(config)
    return ExperimentValues(
        identifiers={
            "exposures": source_relation(config.source, "exposures", dialect),
            "events": source_relation(config.source, "events", dialect),
            "units": quote_ident(units_table),
        },
        values={
            "exposures_table": exposures_table or None,
            "exposures_schema": exposures_schema or None,
            "events_table": events_table or None,
            "events_schema": events_schema or None,
            "metric_events": list(events),
            "sql_metric_columns": list(sql_columns.values()),
            "max_abs_value": MAX_ABS_VALUE,
            "experiment_key": config.key,
            "arms": list(config.arms),
            # Dates are inclusive: a timestamp belongs to day D iff it is < midnight of D + 1.
            "window_start": midnight(config.start),
            "window_end": midnight(config.end + timedelta(days=1)),
            "run_end": midnight(run_date + timedelta(days=1)),
            "future_cutoff": future_cutoff(run_date),
            "exclude_internal": config.audience.exclude_internal,
            "exclude_bots": config.audience.exclude_bots,
        },
        words={
            "key": config.key,
            "arms": ", ".join(config.arms),
            "start": config.start.isoformat(),
            "end": config.end.isoformat(),
            "run_date": run_date.isoformat(),
            "future_cutoff": future_cutoff(run_date).isoformat(sep=" "),
            "excluded": " or ".join(excluded),
            "max_abs_value": f"{MAX_ABS_VALUE:.0e}",
            "sql_metrics": ", ".join(sql_columns),
        },
        event_metrics=events,
        units_table=units_table,
        query_columns=dict(query_columns or {}),
        source_queries={
            which: checked_source_sql(config.source, which, dialect)
            for which in _query_sources(config)
        },
    )


def run_data_quality(
    warehouse_url: str, config: ExperimentConfig, run_date: date, units_table: str
) -> dict:
    """Run every data-quality check in the warehouse; a failed check is a finding, not an error.

    Returns `{"passed", "checks": [{name, passed, detail, unexpected_count, examples,
    severity}], "suite"}`; `passed` is False iff a check of severity "error" failed. Raises
    PipelineError when a check could not run at all (bad SQL, unreachable warehouse).
    """
    # Names are validated before any SQL runs; a source query's columns are read in the try.
    values = experiment_values(config, run_date, units_table, dialect_of(warehouse_url))
    templates = load_suite_templates()
    checks: list[dict[str, Any]] = []
    try:
        columns = source_query_columns(Warehouse(warehouse_url), config)
        values = dataclasses.replace(values, query_columns=columns)
        fill = _filler(values, _literal_writer(warehouse_url), dialect_for(warehouse_url))
        render = gx_renderer(warehouse_url)
        with _quiet_gx(), _datasource(warehouse_url) as datasource:
            run = _GateRun(datasource, values, fill, render, warehouse_url)
            for template in templates:
                checks += _run_suite(run, template)
                if template["name"] == "contract" and not all(c["passed"] for c in checks):
                    break  # the other suites compare columns of the types this found wrong
    except Exception as error:  # a bad query, an unreachable warehouse, a check GX could not run
        raise PipelineError(
            f"data-quality gate could not run: {error}",
            experiment=config.key,
            run_date=run_date.isoformat(),
        ) from error
    failures = [c for c in checks if c["severity"] == "error" and not c["passed"]]
    return {
        "passed": not failures,
        "checks": checks,
        "suite": ", ".join(t["name"] for t in templates),
        "detail": _gate_detail(checks, failures),
    }


def _gate_detail(checks: list[dict[str, Any]], failures: list[dict[str, Any]]) -> str:
    """The gate in one line: each failed check with its sentence (the RERUN reason quotes
    it, so the reason says which metric, event or column to fix), else how many passed."""
    if failures:
        return "; ".join(f"{c['name']}: {c['detail']}" for c in failures)
    warnings = sum(not c["passed"] for c in checks)
    if not warnings:
        return f"{len(checks)} checks passed"
    return (
        f"{len(checks) - warnings} of {len(checks)} checks passed, "
        f"{warnings} warning{'s' if warnings != 1 else ''} (not blocking)"
    )


def run(context: GateContext, units_table: str) -> GateResult:
    """The gate as the registry runs it (ab_pipeline.gates.registry)."""
    return run_data_quality(context.warehouse_url, context.config, context.run_date, units_table)


def brief_view(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """One line when every check passes; failures and warnings spelled out; the full list
    (`checks`) for the brief's appendix (templates/gates/data_quality.*.j2)."""
    rows = [_brief_row(c) for c in outcome.get("checks") or []]
    failures = [r for r in rows if r["state"] == "FAIL"]
    warned = [r for r in rows if r["state"] == "WARNING"]
    passed = len(rows) - len(failures) - len(warned)
    summary = f"{passed} of {len(rows)} data-quality checks passed"
    if not failures and not warned:
        summary = f"All {len(rows)} data-quality checks passed."
    else:
        counts = [f"{len(failures)} failed"] if failures else []
        counts += [f"{len(warned)} warning" + ("" if len(warned) == 1 else "s")] if warned else []
        summary += f"; {', '.join(counts)}."
    return {"summary": summary, "problems": failures + warned, "checks": rows}


def _brief_row(check: Mapping[str, Any]) -> dict[str, Any]:
    from ab_pipeline.core.formatting import fmt_count

    warning = check.get("severity") == "warning"
    state = "PASS" if check["passed"] else "WARNING" if warning else "FAIL"
    unexpected = check.get("unexpected_count")
    detail = str(check.get("detail") or "")
    examples = [str(e) for e in check.get("examples") or []]
    return {
        "name": check["name"],
        "detail": detail,
        "state": state,
        "unexpected": fmt_count(unexpected) if unexpected else None,
        # Some checks already list their examples in the detail: do not say them twice.
        "examples": "" if all(e in detail for e in examples) else ", ".join(examples),
    }


def contract_problems(warehouse: Warehouse, config: ExperimentConfig, run_date: date) -> list[str]:
    """The contract check's findings ("events.occurred_at is VARCHAR"), by the suite's own
    query run as plain SQL (no GX): the extract explains a failure with them."""
    [template] = [t for t in load_suite_templates() if t["name"] == "contract"]
    try:
        columns = source_query_columns(warehouse, config)
    except SourceQueryError as error:
        return [str(error)]
    # The contract suite reads no units table: any valid name fills the unused placeholder.
    values = experiment_values(config, run_date, "ab_units", warehouse.dialect, columns)
    fill = _filler(values, _literal_writer(warehouse.url), warehouse.sql_dialect)
    batch = _contract_batch(warehouse.url, template, values, fill)
    [expectation] = template["expectations"]
    query = fill(expectation["kwargs"]["unexpected_rows_query"]).replace("{batch}", f"({batch})")
    rows = warehouse.query(f"SELECT DISTINCT example FROM ({query}) AS found ORDER BY example")
    return [str(row["example"]) for row in rows]


def load_suite_templates(directory: Path = SUITES_DIR) -> list[dict[str, Any]]:
    """The suites as stored, placeholders unfilled, in gate order."""
    return [json.loads((directory / name).read_text()) for name in SUITE_FILES]


# --- SQL text -------------------------------------------------------------------------------


def future_cutoff(run_date: date) -> datetime:
    """After this instant an event cannot have happened yet: the end of the run date, or now
    (UTC) when the run is a backfill of an earlier date whose later data already exists."""
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    return max(midnight(run_date + timedelta(days=1)), now)


def _contract_batch(
    url: str, template: dict[str, Any], values: ExperimentValues, fill: Fill
) -> str:
    """The contract suite's batch: the engine's own column listing where it has no
    information_schema (`Dialect.column_types_sql`, of the sources that are tables) with the
    source queries' result types, else the suite's query (which has both)."""
    tables = {
        which: values.identifiers[which]
        for which in ("exposures", "events")
        if values.values[f"{which}_table"]
    }
    if not tables:  # both sources are queries
        return fill("$query_source_columns")
    listed = dialect_for(url).column_types_sql(url, tables)
    if listed is None:
        return fill(template["meta"]["batch_query"])
    return f"SELECT * FROM ({listed}) AS listed UNION ALL {fill('$query_source_columns')}"


def _literal_writer(url: str) -> Literal:
    """How values become SQL literals: SQLAlchemy's dialect where SQLAlchemy reaches the engine
    (its escaping is the driver's), else the engine's `Dialect.literal`."""
    from sqlalchemy import literal
    from sqlalchemy.engine import make_url

    dialect = dialect_for(url)
    if dialect.session(url) is not None:
        return dialect.literal
    # Loading the dialect class imports no driver and opens no connection.
    sqlalchemy_dialect = make_url(normalize_url(url)).get_dialect()()

    def write(value: Any) -> str:
        compiled = literal(value).compile(
            dialect=sqlalchemy_dialect, compile_kwargs={"literal_binds": True}
        )
        return str(compiled)

    return write


def _sql_literal(value: Any, dialect: Literal) -> str:
    """One value as an SQL literal of the warehouse's dialect; a list becomes `a, b, c`."""
    if isinstance(value, list):
        return ", ".join(_sql_literal(item, dialect) for item in value)
    if isinstance(value, str) and _UNSAFE_TEXT.search(value):
        raise ValueError(f"{value!r} cannot be written into a data-quality query")
    return dialect(value)


def _filler(
    values: ExperimentValues, dialect: Literal, engine: WarehouseDialect | None = None
) -> Fill:
    """`$name` -> quoted identifier or escaped literal; an unknown placeholder is an error.

    The table names compared with information_schema are written as the warehouse's `engine`
    stores them (Snowflake: `EXPOSURES`)."""
    mapping = {name: _sql_literal(value, dialect) for name, value in values.values.items()}
    for name in ("exposures_table", "exposures_schema", "events_table", "events_schema"):
        if engine is not None and values.values[name]:
            mapping[name] = _sql_literal(engine.stored_name(values.values[name]), dialect)
    mapping.update(values.identifiers)
    # Derived SQL: the metric events as rows, and the `sql:` metrics' out-of-range predicate.
    mapping["query_source_columns"] = _query_column_rows(values.query_columns, dialect)
    mapping["metric_event_rows"] = " UNION ALL ".join(
        f"SELECT {_sql_literal(event, dialect)} AS event_name" for event in values.event_metrics
    )
    bound = _sql_literal(MAX_ABS_VALUE, dialect)
    mapping["sql_metric_out_of_range"] = (
        " OR ".join(
            f"NOT (ABS(u.{quote_ident(column)}) <= {bound})"
            for column in values.values["sql_metric_columns"]
        )
        or "FALSE"
    )

    # An expectation's query passes through GX's `str.format` (for `{batch}`): the braces a
    # source query may hold (a JSON literal) are doubled there, and only there (a stand-in of
    # its own, embedded with the braces doubled).
    formatted = {
        name: embedded(sql.replace("{", "{{").replace("}", "}}"))
        for name, sql in values.source_queries.items()
    }

    def fill(template: str, *, gx_format: bool = False, **extra: Any) -> str:
        """`extra`: values of this one query (a `for_each` part's `$metric_event`);
        `gx_format`: the text is an expectation's query, which GX formats."""
        more = {name: _sql_literal(value, dialect) for name, value in extra.items()}
        braces = formatted if gx_format else {}
        return string.Template(template).substitute({**mapping, **braces, **more})

    return fill


def _query_column_rows(columns: dict[str, dict[str, str]], dialect: Literal) -> str:
    """The contract suite's rows (source, column_name, data_type) for source queries, as a
    SELECT of literals; a SELECT of no row when no source is a query (from a one-row subquery:
    BigQuery takes no WHERE without FROM)."""
    rows = [
        f"SELECT {_sql_literal(which, dialect)} AS source, {_sql_literal(column, dialect)} "
        f"AS column_name, {_sql_literal(data_type, dialect)} AS data_type"
        for which, types in columns.items()
        for column, data_type in types.items()
    ]
    return " UNION ALL ".join(rows) or (
        "SELECT CAST(NULL AS TEXT) AS source, CAST(NULL AS TEXT) AS column_name, "
        "CAST(NULL AS TEXT) AS data_type FROM (SELECT 1 AS one) AS nothing WHERE FALSE"
    )


def _bounded(offending_rows_query: str) -> str:
    """At most MAX_EXAMPLES rows, each carrying the exact count of offending rows.

    GX fetches an UnexpectedRowsExpectation's rows into Python (and on DuckDB the adapter
    buffers the whole result), so the count and the examples are reduced in the warehouse. The
    `unexpected_count` column is what decides the check (`_counted_expectation()`): no row,
    nothing unexpected.
    The offending rows are read once: grouped by example, the groups give the first examples
    (in the engine's order) and, summed over a window, the count of rows. (Counting in a second
    subquery of the same CTE made Spark and BigQuery, which inline a CTE at each reference,
    run the check's query twice.)
    The CROSS JOIN makes GX substitute `{batch}` as a bare `(subquery)` that the suite queries
    alias themselves (`{batch} AS x`): GX aliases the batch itself in a query without a join.
    """
    return (
        f"WITH unexpected AS ({offending_rows_query}), "
        "examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected "
        "GROUP BY example) "
        "SELECT s.example, s.unexpected_count FROM ("
        "SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS BIGINT) AS unexpected_count "
        "FROM examples AS e"
        ") AS s CROSS JOIN (SELECT 1 AS one) AS j "
        f"ORDER BY s.example LIMIT {MAX_EXAMPLES}"
    )


# --- GX -------------------------------------------------------------------------------------


# GX's package logger, plus a module that pins its own logger to INFO when imported.
_GX_LOGGERS = ("great_expectations", "great_expectations.data_context.types.base")


@contextmanager
def _quiet_gx() -> Iterator[None]:
    """Silence GX's INFO chatter (hundreds of lines on import) and its datasource-type hint.

    Only GX's own loggers change, and only for the duration of the gate.
    """
    loggers = [logging.getLogger(name) for name in _GX_LOGGERS]
    previous = [logger.level for logger in loggers]
    try:
        loggers[0].setLevel(logging.WARNING)
        import great_expectations  # noqa: F401  (its import-time INFO lines, now quiet)

        for logger in loggers:  # again: the import set one of them back to INFO
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You are using a generic SQLDatasource")
            yield
    finally:
        for logger, level in zip(loggers, previous, strict=True):
            logger.setLevel(level)


@functools.cache
def _context() -> AbstractDataContext:
    """One ephemeral (in-memory) GX context per process, without progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


@functools.cache
def _counted_expectation() -> type:
    """Define, and so register with GX, the suites' expectation type (once per process).

    GX's `UnexpectedRowsExpectation` depends on two metrics, `unexpected_rows_query.table` (the
    rows) and `unexpected_rows_query.row_count` (the same query again, wrapped in a COUNT(*)):
    two full queries over the batch per check. A `_bounded()` query already returns the exact
    count with its examples, so this subclass depends on the rows alone and takes the count,
    and success, from their `unexpected_count` column. GX registers an expectation class under
    its snake-cased name when the class is defined; the suites' JSON names it by that `type`.
    """
    from great_expectations.core.result_format import ResultFormat
    from great_expectations.expectations import UnexpectedRowsExpectation

    class CountedUnexpectedRowsExpectation(UnexpectedRowsExpectation):
        """Passes iff its query returns no row; the rows carry the count (`_bounded()`)."""

        metric_dependencies: ClassVar[tuple[str, ...]] = ("unexpected_rows_query.table",)

        def _validate(
            self,
            metrics: dict,
            runtime_configuration: dict | None = None,
            execution_engine: Any = None,
        ) -> dict[str, Any]:
            rows = metrics["unexpected_rows_query.table"]
            if rows and "unexpected_count" not in rows[0]:
                # GX reports this as the check's exception, like a query that failed.
                raise ValueError("the query has no unexpected_count column (see _bounded())")
            count = int(rows[0]["unexpected_count"]) if rows else 0
            configured = self._get_result_format(runtime_configuration=runtime_configuration)
            form = (
                configured.get("result_format", ResultFormat.SUMMARY)
                if isinstance(configured, dict)
                else configured
            )
            if form == ResultFormat.BOOLEAN_ONLY:
                return {"success": count == 0}
            result: dict[str, Any] = {"observed_value": count}
            if form == ResultFormat.COMPLETE:
                result["details"] = {"unexpected_rows": rows}
            return {"success": count == 0, "result": result}

    return CountedUnexpectedRowsExpectation


@contextmanager
def _datasource(warehouse_url: str) -> Iterator[Datasource]:
    """A throwaway datasource of the engine's kind (`Dialect.gx_datasource`: SQL, or Spark's
    DataFrames); released afterwards so that no DuckDB file stays locked."""
    prepare_gx_for(warehouse_url)
    context = _context()
    name = f"warehouse_{uuid.uuid4().hex}"
    dialect = dialect_for(warehouse_url)
    datasource = dialect.gx_datasource(context, name, warehouse_url)
    try:
        yield datasource
    finally:
        dialect.gx_release(datasource)
        context.data_sources.delete(name)


def gx_renderer(warehouse_url: str) -> Render:
    """Canonical suite SQL -> the engine's, GX's own `{batch}` placeholder kept as it is."""
    dialect = dialect_for(warehouse_url)
    # Any case: Snowflake's rendering writes a lower-case quoted name in upper case.
    stand_in = re.compile(rf"[`\"]?{_GX_BATCH}[`\"]?", re.IGNORECASE)

    def render(sql: str) -> str:
        rendered = dialect.render(sql.replace("{batch}", f'"{_GX_BATCH}"'))
        return stand_in.sub("{batch}", rendered)

    return render


@dataclass(frozen=True)
class _GateRun:
    """What every suite of one gate run reads: GX's datasource over the warehouse at `url`,
    the experiment's values, and how a template becomes the engine's SQL."""

    datasource: Datasource
    values: ExperimentValues
    fill: Fill
    render: Render
    url: str


def _run_suite(run: _GateRun, template: dict[str, Any]) -> list[dict[str, Any]]:
    import great_expectations as gx

    _counted_expectation()  # the suites' expectation type must be registered before use
    values = run.values
    applicable = [e for e in template["expectations"] if _applies(e, values)]
    skipped = [_skipped_check(e, values) for e in template["expectations"] if e not in applicable]
    if not applicable:
        return skipped
    with _batch_query(run, template) as query:
        batch = dialect_for(run.url).gx_batch(run.datasource, template["name"], query, run.url)
        expectations = [
            _with_bounded_query(e, run.fill, values, run.render, _witnessed(run, e))
            for e in applicable
        ]
        suite = gx.ExpectationSuite(name=template["name"], expectations=expectations)
        # COMPLETE: only then does the result carry the (bounded) rows, i.e. the examples.
        outcome = batch.validate(suite, result_format="COMPLETE")
    return [_check(result, values) for result in outcome.results] + skipped


@contextmanager
def _batch_query(run: _GateRun, template: dict[str, Any]) -> Iterator[str]:
    """The suite's batch query; with `meta.materialize`, a read of a scratch table holding the
    batch's rows, written by one query before the expectations run and dropped after them.

    Each expectation's query reads `{batch}` again: over a batch that filters the events table,
    one scan per expectation. A materialized batch is scanned once, and the expectations read
    its few rows (the suite's batch keeps only rows some expectation could flag)."""
    render, url = run.render, run.url
    if template["name"] == "contract":
        yield render(_contract_batch(url, template, run.values, run.fill))
        return
    query = run.fill(template["meta"]["batch_query"])
    if not template["meta"].get("materialize"):
        yield render(query)
        return
    table = quote_ident(scratch_table_name(run.values.units_table, f"ab_dq_{template['name']}"))
    dialect = dialect_for(url)
    drop = render(f"DROP TABLE IF EXISTS {table}")
    create = render(f"{dialect.scratch_table} {table} AS {query}")
    dialect.gx_execute(run.datasource, [drop, create], url)
    try:
        yield render(f"SELECT * FROM {table}")
    finally:
        dialect.gx_execute(run.datasource, [drop], url)


def _applies(expectation: dict[str, Any], values: ExperimentValues) -> bool:
    flags = expectation["meta"].get("only_if_any")
    return flags is None or any(values.values[flag] for flag in flags)


def _witnessed(run: _GateRun, expectation: dict[str, Any]) -> frozenset[str]:
    """The metric events for which a `for_each: metric_events` check's `meta.witness_query`
    returns a row: a row that proves the check's part for that event finds nothing.

    The check's own query asks whether any event of an enrolled unit follows its exposure;
    an engine that cannot stop at the first such row (Spark joins every event of the name
    to every unit first) spends a full join per event on it. The witness looks among a
    bounded sample of the event's rows only; an event it finds no row for keeps its part of
    the check's query, so the check's outcome is the same either way. Not run where a sample
    costs a full read of its columns (`Dialect.samples_cheaply`)."""
    witness = expectation["meta"].get("witness_query")
    engine = dialect_for(run.url)
    if (
        witness is None
        or expectation["meta"].get("for_each") != "metric_events"
        or not engine.samples_cheaply
    ):
        return frozenset()
    return frozenset(
        event
        for event in run.values.event_metrics
        if engine.gx_query(
            run.datasource, run.render(run.fill(witness, metric_event=event)), run.url
        )
    )


# An expectation query that finds nothing: every part of a `for_each` check was witnessed.
NOTHING_UNEXPECTED = "SELECT CAST(NULL AS VARCHAR) AS example FROM {batch} AS b WHERE 1 = 0"


def _with_bounded_query(
    expectation: dict[str, Any],
    fill: Fill,
    values: ExperimentValues,
    render: Render,
    witnessed: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The expectation with its query filled and bounded; `meta.for_each: metric_events`
    writes the query once per metric event (`$metric_event`), joined by UNION ALL, leaving out
    the `witnessed` events (`_witnessed`)."""
    expectation = copy.deepcopy(expectation)
    kwargs = expectation["kwargs"]
    template = kwargs["unexpected_rows_query"]
    if expectation["meta"].get("for_each") == "metric_events":
        parts = [
            fill(template, gx_format=True, metric_event=event)
            for event in values.event_metrics
            if event not in witnessed
        ]
        query = " UNION ALL ".join(parts) or NOTHING_UNEXPECTED
    else:
        query = fill(template, gx_format=True)
    kwargs["unexpected_rows_query"] = render(_bounded(query))
    return expectation


def _exception_message(info: Any) -> str | None:
    """GX reports errors per expectation, or per metric (a dict of such reports)."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    nested = (_exception_message(v) for v in info.values() if isinstance(v, dict))
    return next((m for m in nested if m), None)


# --- results --------------------------------------------------------------------------------


def _check(result: ExpectationValidationResult, values: ExperimentValues) -> dict[str, Any]:
    config = result.expectation_config
    assert config is not None  # GX attaches the configuration to every suite result
    meta = config.meta or {}
    error = _exception_message(result.exception_info)
    if error:
        raise RuntimeError(f"check {meta['check']} could not run: {error}")
    rows = result.result.get("details", {}).get("unexpected_rows", [])
    count = int(rows[0]["unexpected_count"]) if rows else 0
    examples = _distinct(row["example"] for row in rows)
    passed = bool(result.success)
    return {
        "name": meta["check"],
        "passed": passed,
        "detail": _sentence(meta, passed, count, examples, values),
        "unexpected_count": count,
        "examples": examples,
        "severity": _severity(str(config.severity.value)),
    }


def _skipped_check(expectation: dict[str, Any], values: ExperimentValues) -> dict[str, Any]:
    meta = expectation["meta"]
    return {
        "name": meta["check"],
        "passed": True,
        "detail": meta["detail"]["skipped"].format(**values.words),
        "unexpected_count": 0,
        "examples": [],
        "severity": _severity(expectation.get("severity", "critical")),
    }


def _severity(gx_severity: str) -> str:
    # GX's levels are critical / warning / info; only critical fails the gate.
    return "error" if gx_severity == "critical" else "warning"


def _distinct(items: Any) -> list[str]:
    seen = dict.fromkeys(str(item) for item in items if item is not None)
    return list(seen)[:MAX_EXAMPLES]


def _sentence(
    meta: dict[str, Any], passed: bool, count: int, examples: list[str], values: ExperimentValues
) -> str:
    form = "passed" if passed else "one" if count == 1 else "other"
    sentence = meta["detail"][form].format(count=f"{count:,}", **values.words)
    if examples and not passed:
        if meta.get("examples_are") == "metric_events":  # name the metrics behind each event
            examples = [
                meta["example_format"].format(
                    example=event, metrics=", ".join(values.event_metrics.get(event, []))
                )
                for event in examples
            ]
        listed = "; ".join(examples) if "example_format" in meta else ", ".join(examples)
        label = meta.get("examples_label", None if "example_format" in meta else "examples")
        sentence += f" ({label}: {listed})" if label else f": {listed}"
    return sentence
