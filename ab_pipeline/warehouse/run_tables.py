"""The window of data a run may see and the names of its scratch tables.

Shared by the extract, the gates and the metric kinds (below all of them in the layering).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from ab_pipeline.core.config import ExperimentConfig
from ab_pipeline.core.dates import midnight
from ab_pipeline.warehouse.quoting import quote_ident


@dataclass(frozen=True)
class RunWindow:
    """The data a run may see: exposures in [start, end], nothing after the run date."""

    start: datetime
    end_exclusive: datetime
    run_end: datetime

    @classmethod
    def of(cls, config: ExperimentConfig, run_date: date) -> RunWindow:
        return cls(
            start=midnight(config.start),
            end_exclusive=midnight(config.end) + timedelta(days=1),
            run_end=midnight(run_date) + timedelta(days=1),
        )


# A unit's exposure day, as the per-day queries group the units table by it (PostgreSQL keeps
# planner statistics of the expression: `Dialect.prepare_build`).
EXPOSURE_DAY = "CAST(first_exposed_at AS DATE)"


def units_table_name(config: ExperimentConfig, run_date: date) -> str:
    """`[schema.]ab_units__<key>__<yyyymmdd>`, shortened with a hash to fit PostgreSQL's 63
    characters; the schema is `source.work_schema`, else the exposures table's schema."""
    return _run_table_name("ab_units", config, run_date)


def quantile_histogram_table_name(config: ExperimentConfig, run_date: date) -> str:
    """`[schema.]ab_qhist__<key>__<yyyymmdd>`: the run's quantile histograms (see
    `build_units_sql`), next to its units table."""
    return _run_table_name("ab_qhist", config, run_date)


def scratch_table_name(units_table: str, stem: str) -> str:
    """`[schema.]<stem>_<hash of the units table>`, unquoted: a scratch table of one run,
    beside (in the schema of) its `units_table`, under a name no other experiment's or run
    date's scratch table shares, short enough for PostgreSQL's 63 characters."""
    schema, dot, _ = units_table.rpartition(".")
    digest = hashlib.sha1(units_table.encode()).hexdigest()[:10]
    return f"{schema}{dot}{stem}_{digest}"


# The extract's step tables' names begin so (Spark's UPDATE rebuilds only these).
STEP_TABLE_PREFIX = "ab_tmp_"


@dataclass(frozen=True)
class StepTables:
    """Where the extract keeps its steps' tables (enrolled units, the metric pass, ...).

    By default each is a session-local `CREATE TEMP TABLE ab_tmp_<step>`. Given the run's
    `units_table`, each is an UNLOGGED table beside it, `ab_tmp_<step>_<hash>`
    (`scratch_table_name`): PostgreSQL never scans a temporary table in a parallel worker, so
    every join to one runs serially; Spark writes and reads a Parquet table faster than a
    cached view. On PostgreSQL the build is one transaction that drops them at its end, so
    other sessions never see them and a failed build leaves none; on Spark the build drops
    them at its end or when a step fails, and drops any a killed build left before it starts.
    """

    units_table: str | None = None

    @property
    def create(self) -> str:
        """The statement's head that creates a step's table (its name follows)."""
        return "CREATE TEMP TABLE" if self.units_table is None else "CREATE UNLOGGED TABLE"

    def name(self, step: str) -> str:
        """The step's table, unquoted (possibly schema-qualified)."""
        if self.units_table is None:
            return f"{STEP_TABLE_PREFIX}{step}"
        return scratch_table_name(self.units_table, f"{STEP_TABLE_PREFIX}{step}")

    def ref(self, step: str) -> str:
        """The step's table as SQL names it (a session-local name needs no quotes)."""
        return self.name(step) if self.units_table is None else quote_ident(self.name(step))


def _run_table_name(prefix: str, config: ExperimentConfig, run_date: date) -> str:
    name = f"{_run_table_stem(prefix, config)}__{run_date:%Y%m%d}"
    schema = config.source.units_schema
    return f"{schema}.{name}" if schema else name


def _run_table_stem(prefix: str, config: ExperimentConfig) -> str:
    stem = f"{prefix}__{config.key.replace('-', '_')}"
    if len(stem) + len("__yyyymmdd") > 63:
        digest = hashlib.sha256(config.key.encode()).hexdigest()[:8]
        stem = f"{stem[: 63 - len('__yyyymmdd') - 9]}_{digest}"
    return stem
