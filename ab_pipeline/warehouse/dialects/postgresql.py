"""PostgreSQL: canonical SQL runs as written; planner statistics and an advisory lock added."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ab_pipeline.warehouse.dialects.base import ConnectionFields, Dialect

# Any constant shared by every writer of the results tables (ASCII "ab_r").
RESULTS_LOCK_KEY = 0x61625F72
# Planner costs of a parallel plan, set to 0 for the units table's join of the steps.
PARALLEL_COSTS = ("parallel_setup_cost", "parallel_tuple_cost")


class PostgreSQL(Dialect):
    name = "postgresql"
    sqlglot_name = "postgres"
    schemes = ("postgresql", "postgres")
    transpiles = False
    # PostgreSQL sorts grouping sets on disk instead of hashing them: a histogram would be a
    # pass of its own (`histograms_in_pass` False); reading beyond an edge is ~1.5 s faster at
    # 1 M units (docs/benchmarks.md).
    histograms_in_pass = False
    quantiles_by_edge = True
    read_only_transactions = True
    # A join to a temporary table runs serially; to an UNLOGGED table, in parallel workers.
    shared_step_tables = True
    scratch_table = "CREATE UNLOGGED TABLE"
    narrows_in_cte = False
    # The step tables carry the enrolled row's address (a tid: six bytes, hashed as such since
    # PostgreSQL 14) instead of the unit id: the metric passes group by it and the units
    # table's join matches on it (docs/benchmarks.md, 2026-12-05). The build runs in one
    # transaction, and no statement moves an enrolled row after the passes read it.
    unit_key = "ctid"
    # Memory per sort or hash of the pipeline's sessions (PostgreSQL's default, 4MB, sends the
    # extract's joins and per-unit aggregates, and the data-quality queries' of a large
    # experiment, to disk in batches). A URL whose `options` set work_mem keeps its own.
    work_mem = "256MB"
    conn_types = ("postgres", "postgresql")

    reads_result_types = True

    def result_types(self, connection: Any, select: str) -> dict[str, str]:
        """The driver's result description carries type OIDs, which `format_type` names."""
        from sqlalchemy import text

        description = connection.execute(text(select)).cursor.description or []
        # DB-API description: (name, type_code, ...); psycopg2's type_code is the type's OID.
        oids = sorted({int(column[1]) for column in description})
        names = {
            int(row[0]): str(row[1]).upper()
            for row in connection.execute(
                text("SELECT oid, format_type(oid, NULL) FROM pg_type WHERE oid = ANY(:oids)"),
                {"oids": oids},
            )
        }
        return {str(column[0]): names[int(column[1])] for column in description}

    def url_from_connection(self, fields: ConnectionFields) -> str:
        return f"postgresql://{fields.netloc()}/{fields.schema or 'postgres'}"

    def normalize_url(self, url: str) -> str:
        """`postgres://` and `postgresql://` mean the psycopg2 driver."""
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
        return url

    def engine_url(self, url: str) -> str:
        return _with_settings(url, {"work_mem": self.work_mem})

    def gx_datasource(self, context: Any, name: str, url: str) -> Any:
        """GX's SQL datasource, its sessions planning parallel plans at no cost of their own.

        The data-quality suites scan the raw exposures and events whole, with filters whose
        selectivity the planner cannot know (an OR of null checks, say) or a GROUP BY per unit;
        at the default costs of starting workers and handing rows to the leader such a query
        runs in one process. In two workers the events batch takes 0.9 s instead of 1.6 s at
        1 M units (docs/benchmarks.md, 2026-12-05). Not for every session: the extract's
        aggregates and the analysis's small ones were as fast or slower so."""
        free = _with_settings(url, dict.fromkeys(PARALLEL_COSTS, "0"))
        return super().gx_datasource(context, name, free)

    def hash_bucket(self, column: str, buckets: int) -> str:
        return f"(abs(hashtext({column})) % {buckets})"

    def json_keys_sql(self, doc: str) -> str:
        return f"jsonb_object_keys(CAST({doc} AS JSONB))"

    def prepare_build(
        self,
        statements: Sequence[str],
        analysed: Mapping[str, str],
        table: str,
        grouped: Sequence[str] = (),
    ) -> list[str]:
        """Freshly loaded source tables may have no planner statistics yet; PostgreSQL then
        estimates one row per CTE and nests loops (minutes instead of milliseconds). This is
        whole-table ETL: hash joins are always right, and ANALYZE after each step that fills a
        table gives the later joins on it real statistics.

        The units table's statement joins the steps' tables, one row per unit each. Priced
        at the default cost of handing rows from parallel workers to the leader, that join
        is planned in one process; planned without that cost it runs in the workers, about
        twice as fast at 1 M units (docs/benchmarks.md, 2026-12-04 night).

        Before the units table's ANALYZE, statistics of each `grouped` expression: without
        them PostgreSQL counts the groups of `CAST(first_exposed_at AS DATE)` as the distinct
        timestamps (about one per unit) and aggregates in one process; with them, in parallel
        workers (docs/benchmarks.md, 2026-12-05)."""
        from ab_pipeline.warehouse.quoting import quote_ident

        prepared = ["SET LOCAL enable_nestloop = off"]
        units = f"CREATE TABLE {quote_ident(table)}"
        for statement in statements:
            joins_steps = statement.startswith(units)
            if joins_steps:
                prepared += [f"SET LOCAL {cost} = 0" for cost in PARALLEL_COSTS]
            prepared.append(statement)
            if joins_steps:
                prepared += [f"SET LOCAL {cost} TO DEFAULT" for cost in PARALLEL_COSTS]
                prepared += _expression_statistics(table, grouped)
            prepared += [
                f"ANALYZE {quote_ident(table)}"
                for prefix, table in analysed.items()
                if statement.startswith(prefix)
            ]
        if table not in analysed.values():
            prepared.append(f"ANALYZE {quote_ident(table)}")
        return prepared

    def results_lock(self) -> str:
        return f"SELECT pg_advisory_xact_lock({RESULTS_LOCK_KEY})"


DIALECT = PostgreSQL()


def _expression_statistics(table: str, expressions: Sequence[str]) -> list[str]:
    """`CREATE STATISTICS` of each expression over `table` (`[schema.]name`), each object
    named after the table (PostgreSQL 15 wants a name) in its schema; dropped with it."""
    import hashlib

    from ab_pipeline.warehouse.quoting import quote_ident

    schema, _, name = table.rpartition(".")
    stem = f"ab_stx_{hashlib.sha1(name.encode()).hexdigest()[:16]}"
    return [
        f"CREATE STATISTICS {quote_ident('.'.join(filter(None, [schema, f'{stem}_{i}'])))}"
        f" ON ({expression}) FROM {quote_ident(table)}"
        for i, expression in enumerate(expressions)
    ]


def _with_settings(url: str, wanted: Mapping[str, str]) -> str:
    """`url` whose libpq `options` set each of `wanted` the URL does not set itself (a URL's
    own options, a search_path say, replace libpq's whole `options`: they are kept)."""
    from urllib.parse import parse_qsl, urlencode

    base, _, query = url.partition("?")
    settings = dict(parse_qsl(query))
    options = settings.get("options", "")
    added = [f"-c {name}={value}" for name, value in wanted.items() if name not in options]
    settings["options"] = " ".join([options, *added]).strip()
    return f"{base}?{urlencode(settings)}"
