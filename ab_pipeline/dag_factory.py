"""One DAG per experiment config: the pipeline's stages wired as Airflow tasks.

Parse-time cost is kept to airflow.sdk, pydantic and yaml: everything heavy is imported inside
the task bodies (through `ab_pipeline.pipeline`). A config that fails validation does not break
the other experiments: it becomes an `InvalidExperimentConfigs` DAG whose validation raises, so
Airflow lists it among the import errors (file and field) and bags the rest of the file's DAGs.

The dag-processor rebuilds every experiment's DAG on every parse, so building one is kept cheap:
the task callables exist once, at import, and every DAG's tasks are plain PythonOperators calling
them; at run time a task finds its experiment (config file, warehouse connection) on the
running DAG.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Param, TriggerRule
from airflow.sdk.definitions.param import ParamsDict

from ab_pipeline.config import ExperimentConfig, load_config
from ab_pipeline.errors import ConfigError
from ab_pipeline.notify import OwnerFailureNotifier

SMTP_CONN_ID = "smtp_default"
GATES = ("data_quality", "srm", "receipt", "assignment")


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


class ExperimentDAG(DAG):
    """One experiment's DAG; it tells the shared task callables which experiment they run.

    `config_path` and `conn_id` are plain attributes set by `build_dag`. Airflow does not
    serialize them (the serialized DAG is a plain DAG's), and needs not: a task's process gets
    its DAG by parsing the DAG file (or, under `dag.test()`, runs this very object).
    """

    config_path: str = ""
    conn_id: str = ""


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


def run_date_param(source: Literal["dag", "task"] | None = None) -> Param:
    """The DAG's one param. A new object each time: Airflow keeps a Param's resolved value on it."""
    return Param(
        None,
        type=["null", "string"],
        format="date",
        description="readout date (YYYY-MM-DD); default: the day before the logical date",
        source=source,
    )


def _run_context() -> Any:
    """The running task's RunContext: its experiment comes from the DAG it belongs to."""
    from airflow.sdk import get_current_context

    from ab_pipeline.pipeline import RunContext, briefs_root
    from ab_pipeline.warehouse import warehouse_for_connection

    context = get_current_context()
    dag = context["dag"]
    if not isinstance(dag, ExperimentDAG):
        raise TypeError(f"{dag!r} was not built by ab_pipeline.dag_factory.build_dag")
    return RunContext(
        config_path=Path(dag.config_path),
        run_date=_run_date(dict(context)),
        warehouse_url=warehouse_for_connection(dag.conn_id).url,
        out_root=briefs_root(),
    )


# The task callables exist once, at import; every DAG's tasks are classic PythonOperators that
# call them (a `@task` operator costs about twice as much to build: its class chain runs four
# __init__s and re-inspects the callable; at 500 experiments that was ~30% of the parse).


def _extract() -> str:
    from ab_pipeline.pipeline import stage_extract

    return stage_extract(_run_context())


def _gate(gate: str, units_table: str) -> bool:
    from ab_pipeline.pipeline import stage_gate

    return stage_gate(_run_context(), gate, units_table)


def _validity() -> None:
    from ab_pipeline.pipeline import stage_validity

    stage_validity(_run_context())


def _analyse(units_table: str) -> None:
    from ab_pipeline.pipeline import stage_analyse

    stage_analyse(_run_context(), units_table)


def _brief() -> dict[str, Any]:
    from ab_pipeline.pipeline import stage_brief

    return stage_brief(_run_context())


def _send_email() -> dict[str, Any]:
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowSkipException

    from ab_pipeline.backfill import BACKFILL, latest_data_date, should_email
    from ab_pipeline.pipeline import stage_deliver

    ctx = _run_context()
    # A backfill emails only for the latest date with data (see ab_pipeline.backfill).
    kind = get_current_context()["dag_run"].run_type
    run_type = str(getattr(kind, "value", kind))  # an enum: "backfill", "manual", ...
    latest = latest_data_date(ctx.warehouse, ctx.config) if run_type == BACKFILL else None
    send, why = should_email(run_type, ctx.run_date, latest)
    if not send:
        raise AirflowSkipException(why)
    return stage_deliver(ctx, SMTP_CONN_ID)


def _run_failed_watcher() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException("an upstream task failed (see the brief for gate failures)")


def build_dag(config_path: Path, config: ExperimentConfig) -> ExperimentDAG:
    start = midnight_utc(config.start) + timedelta(days=1)
    end = midnight_utc(config.end) + timedelta(days=1)
    with ExperimentDAG(
        dag_id=config.dag_id,
        description=config.title,
        schedule=config.schedule,
        start_date=start,
        end_date=end,
        catchup=False,
        max_active_runs=1,
        tags=["ab-experiment", config.key],
        default_args={"owner": config.owner, "retries": 0},
        # The owner hears about any failed run (a RERUN brief reaches the recipients anyway).
        on_failure_callback=OwnerFailureNotifier(
            config.key, config.owner, config.title, SMTP_CONN_ID
        ),
        doc_md=f"**{config.title}**\n\nHypothesis: {config.hypothesis.change}\n\n"
        f"Config: `{config_path.name}` (version {config.version})",
    ) as dag:
        dag.config_path, dag.conn_id = str(config_path), config.source.conn_id
        extract = PythonOperator(task_id="extract", python_callable=_extract)
        table = extract.output  # an XComArg: resolved to the table name when tasks run
        gates = [
            PythonOperator(
                task_id=f"gate_{gate}",
                python_callable=_gate,
                op_kwargs={"gate": gate, "units_table": table},
            )
            for gate in GATES
        ]
        valid = PythonOperator(task_id="validity", python_callable=_validity)
        analysed = PythonOperator(
            task_id="analyse", python_callable=_analyse, op_kwargs={"units_table": table}
        )
        # The brief reads files, not XComs: it must run after a failed gate too.
        written = PythonOperator(
            task_id="brief", python_callable=_brief, trigger_rule=TriggerRule.ALL_DONE
        )
        sent = PythonOperator(
            task_id="send_email",
            python_callable=_send_email,
            retries=2,
            retry_delay=timedelta(seconds=5),
        )
        # With the brief on ALL_DONE the leaf would succeed after a failed gate; this task
        # fails the run whenever anything upstream failed, so on-call sees it.
        watcher = PythonOperator(
            task_id="run_failed_watcher",
            python_callable=_run_failed_watcher,
            trigger_rule=TriggerRule.ONE_FAILED,
        )
        extract >> gates
        gates >> valid >> analysed
        [valid, analysed] >> written >> sent
        [extract, *gates, valid, analysed, written, sent] >> watcher
    # The params go on last: on the DAG, and on each task as Airflow merges a DAG's params into
    # its tasks (an own copy per task, source "dag"). Given to the DAG up front, they would be
    # deep-copied once per __init__ in the operator's class chain (with `@task` operators that
    # was ~15% of the parse). tests/test_dags.py checks the result against Airflow's own merge.
    for operator in dag.tasks:
        operator.params = ParamsDict({"run_date": run_date_param(source="dag")})
    dag.params = ParamsDict({"run_date": run_date_param()})  # validated, as in DAG(params=...)
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
