"""The window of data a run may see and the names of its scratch tables.

Shared by the extract, the gates and the metric kinds (below all of them in the layering).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from ab_pipeline.core.config import ExperimentConfig
from ab_pipeline.core.dates import midnight


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


def units_table_name(config: ExperimentConfig, run_date: date) -> str:
    """`[schema.]ab_units__<key>__<yyyymmdd>`, shortened with a hash to fit PostgreSQL's 63
    characters; the schema is `source.work_schema`, else the exposures table's schema."""
    return _run_table_name("ab_units", config, run_date)


def quantile_histogram_table_name(config: ExperimentConfig, run_date: date) -> str:
    """`[schema.]ab_qhist__<key>__<yyyymmdd>`: the run's quantile histograms (see
    `build_units_sql`), next to its units table."""
    return _run_table_name("ab_qhist", config, run_date)


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
