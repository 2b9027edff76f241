"""One DAG per experiment config: the pipeline's stages wired as Airflow tasks.

Parse-time cost is kept to airflow.sdk, pydantic and yaml: everything heavy is imported inside
the task bodies (through `ab_pipeline.pipeline`). A config that fails validation does not break
the other experiments: it becomes an `InvalidExperimentConfigs` DAG whose validation raises, so
Airflow lists it among the import errors (file and field) and bags the rest of the file's DAGs.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule, task

from ab_pipeline.config import ExperimentConfig, load_config
from ab_pipeline.errors import ConfigError
from ab_pipeline.notify import OwnerFailureNotifier

SMTP_CONN_ID = "smtp_default"


class ExperimentConfigsInvalid(Exception):
    """Raised by InvalidExperimentConfigs.validate(); its text is what Airflow shows."""


class InvalidExperimentConfigs(DAG):
    """Carries config errors into Airflow's import errors without hiding the valid DAGs.

    Airflow validates each DAG of a file separately and records a failing one as the file's
    import error while still loading the others.
    """

    config_errors: str = ""

    def validate(self) -> None:
        raise ExperimentConfigsInvalid(self.config_errors)


def midnight_utc(day: date) -> datetime:
    """Airflow refuses naive datetimes: experiment dates are UTC days."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _run_date(context: dict[str, Any]) -> date:
    """The day a readout covers: `params.run_date`, else the day before the run's logical time.

    A nightly run at midnight reads out the day that just ended.
    """
    explicit = context["params"].get("run_date")
    if explicit:
        return date.fromisoformat(str(explicit))
    moment = context.get("logical_date") or context["dag_run"].run_after
    return (moment - timedelta(days=1)).date()


def _context_for(config_path: str, conn_id: str) -> Any:
    from airflow.sdk import get_current_context

    from ab_pipeline.pipeline import RunContext, briefs_root
    from ab_pipeline.warehouse import warehouse_for_connection

    context = get_current_context()
    return RunContext(
        config_path=Path(config_path),
        run_date=_run_date(dict(context)),
        warehouse_url=warehouse_for_connection(conn_id).url,
        out_root=briefs_root(),
    )


def build_dag(config_path: Path, config: ExperimentConfig) -> DAG:
    path, conn_id = str(config_path), config.source.conn_id
    start = midnight_utc(config.start) + timedelta(days=1)
    end = midnight_utc(config.end) + timedelta(days=1)
    with DAG(
        dag_id=config.dag_id,
        description=config.title,
        schedule=config.schedule,
        start_date=start,
        end_date=end,
        catchup=False,
        max_active_runs=1,
        tags=["ab-experiment", config.key],
        params={
            "run_date": Param(
                None,
                type=["null", "string"],
                format="date",
                description="readout date (YYYY-MM-DD); default: the day before the logical date",
            )
        },
        default_args={"owner": config.owner, "retries": 0},
        # The owner hears about any failed run (a RERUN brief reaches the recipients anyway).
        on_failure_callback=OwnerFailureNotifier(
            config.key, config.owner, config.title, SMTP_CONN_ID
        ),
        doc_md=f"**{config.title}**\n\nHypothesis: {config.hypothesis.change}\n\n"
        f"Config: `{config_path.name}` (version {config.version})",
    ) as dag:

        @task
        def extract() -> str:
            from ab_pipeline.pipeline import stage_extract

            return stage_extract(_context_for(path, conn_id))

        def gate_task(gate: str) -> Any:
            @task(task_id=f"gate_{gate}")
            def run_gate(units_table: str) -> bool:
                from ab_pipeline.pipeline import stage_gate

                return stage_gate(_context_for(path, conn_id), gate, units_table)

            return run_gate

        @task
        def validity() -> None:
            from ab_pipeline.pipeline import stage_validity

            stage_validity(_context_for(path, conn_id))

        @task
        def analyse(units_table: str) -> None:
            from ab_pipeline.pipeline import stage_analyse

            stage_analyse(_context_for(path, conn_id), units_table)

        # The brief reads files, not XComs: it must run after a failed gate too.
        @task(trigger_rule=TriggerRule.ALL_DONE)
        def brief() -> dict[str, Any]:
            from ab_pipeline.pipeline import stage_brief

            return stage_brief(_context_for(path, conn_id))

        @task(retries=2, retry_delay=timedelta(seconds=5))
        def send_email() -> dict[str, Any]:
            from airflow.sdk import get_current_context
            from airflow.sdk.exceptions import AirflowSkipException

            from ab_pipeline.backfill import BACKFILL, latest_data_date, should_email
            from ab_pipeline.pipeline import stage_deliver

            ctx = _context_for(path, conn_id)
            # A backfill emails only for the latest date with data (see ab_pipeline.backfill).
            kind = get_current_context()["dag_run"].run_type
            run_type = str(getattr(kind, "value", kind))  # an enum: "backfill", "manual", ...
            latest = latest_data_date(ctx.warehouse, ctx.config) if run_type == BACKFILL else None
            send, why = should_email(run_type, ctx.run_date, latest)
            if not send:
                raise AirflowSkipException(why)
            return stage_deliver(ctx, SMTP_CONN_ID)

        # With the brief on ALL_DONE the leaf would succeed after a failed gate; this task fails
        # the run whenever anything upstream failed, so on-call sees it.
        @task(trigger_rule=TriggerRule.ONE_FAILED)
        def run_failed_watcher() -> None:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException("an upstream task failed (see the brief for gate failures)")

        table: Any = extract()  # an XComArg: resolved to the table name when tasks run
        gates = [gate_task(g)(table) for g in ("data_quality", "srm", "receipt", "assignment")]
        valid = validity()
        gates >> valid
        analysed = analyse(table)
        valid >> analysed
        written = brief()
        [valid, analysed] >> written
        sent = send_email()
        written >> sent
        watcher = run_failed_watcher()
        [table, *gates, valid, analysed, written, sent] >> watcher
    return dag


def build_dags(experiments_dir: Path) -> dict[str, DAG]:
    """Every valid config's DAG, plus one InvalidExperimentConfigs DAG listing the bad files."""
    dags: dict[str, DAG] = {}
    errors: list[str] = []
    sources: dict[str, Path] = {}
    for config_path in sorted(experiments_dir.glob("*.yaml")):
        try:
            config = load_config(config_path)
        except ConfigError as error:
            errors.append(str(error))
            continue
        if config.dag_id in sources:
            errors.append(
                f"{config_path}: key: {config.key!r} is already used by {sources[config.dag_id]}"
            )
            continue
        sources[config.dag_id] = config_path
        dags[config.dag_id] = build_dag(config_path, config)
    if errors:
        invalid = InvalidExperimentConfigs(
            dag_id="ab_invalid_experiment_configs",
            schedule=None,
            start_date=datetime(2026, 1, 1, tzinfo=UTC),
        )
        invalid.config_errors = "\n".join(errors)
        dags[invalid.dag_id] = invalid
    return dags
