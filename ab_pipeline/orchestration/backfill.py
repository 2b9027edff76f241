"""Who gets an email when: one readout per date, but stakeholders hear only the current one.

`airflow backfill create` over a date range makes one DAG run (run type `backfill`) per date;
every one of them writes its results.json, brief and results-table rows. Only one of them may
email: the run whose readout date is the experiment's *latest date with data*, i.e.
min(the day of the experiment's last exposure, `end`). Earlier backfilled dates would mail
stakeholders stale news, in a burst, out of order.

Runs that are not backfills (the nightly schedule, a manual trigger) email: a nightly run reads
out the day that just ended, and a manual trigger is someone asking for the brief.

After the final readout nothing automatic emails again: a scheduled or backfill run that comes
after the run reading out `end` (it would read out `end` again) stores its readout and stays
quiet. The DAG's `end_date` already stops scheduling there (ab_pipeline.orchestration.dag_factory);
this is
the guard for runs that exist anyway (a backfill past the end, an `end` moved earlier).

Why the data and not the backfill's own range: a task does not see its backfill's range, and the
rule "is there a newer readout than this one?" is what stakeholders care about. A backfill that
ends at yesterday (the usual repair after an outage) emails exactly once, for yesterday; a
backfill of an old range emails nobody, because a newer readout already went out.
"""

from __future__ import annotations

from datetime import date, datetime

from ab_pipeline.core.config import ExperimentConfig
from ab_pipeline.warehouse import Warehouse
from ab_pipeline.warehouse.sources import source_relation

BACKFILL = "backfill"
SCHEDULED = "scheduled"


def latest_data_date(warehouse: Warehouse, config: ExperimentConfig) -> date | None:
    """The last day with an exposure of this experiment, capped at its planned `end`."""
    rows = warehouse.query(
        "SELECT MAX(exposed_at) AS last "
        f"FROM {source_relation(config.source, 'exposures', warehouse.dialect)} AS x "
        "WHERE experiment_key = :key",
        {"key": config.key},
    )
    last = rows[0]["last"] if rows else None
    if last is None:
        return None
    day = last.date() if isinstance(last, datetime) else date.fromisoformat(str(last)[:10])
    return min(day, config.end)


def should_email(
    run_type: str, run_date: date, latest: date | None, *, past_final: bool = False
) -> tuple[bool, str]:
    """(send?, why) for a run of the given Airflow run type. `past_final`: the run's logical date
    is after the scheduled run that reads out `end`
    (ab_pipeline.orchestration.dag_factory.final_run_at)."""
    if past_final and run_type in (BACKFILL, SCHEDULED):
        return False, (
            f"{run_type} run after the final readout: the final brief ({run_date}) already went "
            "out; readout stored, no email"
        )
    if run_type != BACKFILL:
        return True, f"{run_type} run: the brief goes out"
    if latest is not None and run_date >= latest:
        return True, f"backfill run for {run_date}, the latest date with data: the brief goes out"
    return False, (
        f"backfill run for {run_date}: not the latest date with data ({latest}); "
        "readout stored, no email"
    )
