"""One DAG per experiment config: the pipeline's stages wired as Airflow tasks.

Parse-time cost is kept to airflow.sdk, pydantic and yaml: everything heavy is imported inside
the task bodies (through `ab_pipeline.orchestration.pipeline`). A config that fails validation
does not break the other experiments: the bad configs become one `InvalidExperimentConfigs`
DAG whose validation raises, so Airflow lists them among the import errors and bags the rest of
the file's DAGs; and each bad config gets its own stand-in DAG (`build_broken_dag`: the
experiment's DAG id, never scheduled, its problems in its description), so it shows in the DAG
list by its own name.
Catalog metrics (`{ref: ...}`, ab_pipeline.core.catalog) are resolved here too, from YAML and
pydantic: a bad reference is its config's error (file and field); a bad catalog entry is listed
with its catalog file and field, and fails only the configs that reference it.

Why one import error for all bad configs, not one per config: Airflow 3.3's DagBag keys import
errors by the parsed file (`DagBag.process_file` stores a DAG's failed `validate()` under the
DAG file's path), so two failing DAGs of one file overwrite each other and only the last would
be shown. The dag-processor does key *serialization* failures by a DAG's `relative_fileloc`,
but a DAG that fails to serialize also breaks `dag.test()`, `airflow dags test` and
`airflow dags reserialize` (their `sync_bag_to_db` does not catch it), and the dag-processor's
orphan clean-up deletes import errors of files it does not list (a YAML config is not a DAG
file), so such errors would come and go. The one error names every bad config: file, field and
reason, one line each.

Readout dates: a run reads out the day before its logical date (a nightly run at midnight
reads out the day that just ended), never before `start`, and never after `end`: a run after
`end` reads out as of `end`. The DAG's `end_date` is the schedule's first tick after `end`, the
run that reads out `end`, so scheduling stops after the final readout.

The dag-processor rebuilds every experiment's DAG on every parse, so building one is kept cheap:
the task callables exist once, at import, and every DAG's tasks are plain PythonOperators calling
them; at run time a task finds its experiment (config file, warehouse connection) on the
running DAG.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, CronTriggerTimetable, Param, TriggerRule
from airflow.sdk.definitions.param import ParamsDict

from ab_pipeline.core.config import CRON_PRESETS, KEY_PATTERN, ExperimentConfig, load_config
from ab_pipeline.core.dates import midnight
from ab_pipeline.core.errors import ConfigError
from ab_pipeline.gates import registry as gate_registry
from ab_pipeline.report.notify import OwnerFailureNotifier

SMTP_CONN_ID = "smtp_default"
# Set by `ab-pipeline run` in its own process before `dag.test()`, which parses the DAG file in
# that process (ab_pipeline.orchestration.cli.run_experiment): the DAG file then builds the DAG of
# this one
# config file, wherever it lives, instead of every config in dags/experiments/. A module
# attribute, not an environment variable, so that no Airflow component can inherit it.
only_config: Path | None = None


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


def _run_moment(context: dict[str, Any]) -> datetime:
    return context.get("logical_date") or context["dag_run"].run_after


def _run_date(context: dict[str, Any]) -> date:
    """The day a readout is asked for: `params.run_date`, else the day before the run's logical
    time (a nightly run at midnight reads out the day that just ended). See `readout_date`."""
    explicit = context["params"].get("run_date")
    if explicit:
        return date.fromisoformat(str(explicit))
    return (_run_moment(context) - timedelta(days=1)).date()


def readout_date(requested: date, config: ExperimentConfig) -> date:
    """The date a run reads out: `requested`, or `end` when asked for a later day (the final
    readout). Raises ValueError before `start`: there is nothing to read out yet."""
    if requested < config.start:
        raise ValueError(
            f"{requested} is before the experiment's start {config.start}: nothing to read out"
        )
    return min(requested, config.end)


def final_run_at(config: ExperimentConfig) -> datetime | None:
    """When the scheduled run that reads out `end` starts: the schedule's first tick at or after
    midnight after `end` (for `@daily`, that midnight). None without a schedule."""
    if config.schedule is None:
        return None
    from croniter import croniter  # Airflow's cron timetables import it at parse time anyway

    after_end = midnight(config.end, UTC) + timedelta(days=1)
    expression = CRON_PRESETS.get(config.schedule, config.schedule)
    tick: datetime = croniter(expression, after_end - timedelta(seconds=1)).get_next(datetime)
    return tick


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

    from ab_pipeline.orchestration.pipeline import RunContext, briefs_root
    from ab_pipeline.warehouse import warehouse_for_connection

    context = get_current_context()
    dag = context["dag"]
    if not isinstance(dag, ExperimentDAG):
        raise TypeError(f"{dag!r} was not built by ab_pipeline.orchestration.dag_factory.build_dag")
    config_path = Path(dag.config_path)
    return RunContext(
        config_path=config_path,
        run_date=readout_date(_run_date(dict(context)), load_config(config_path)),
        warehouse_url=warehouse_for_connection(dag.conn_id).url,
        out_root=briefs_root(),
    )


Task = TypeVar("Task", bound=Callable[..., Any])


def _records_its_error(task: Task) -> Task:
    """A failing task keeps its error for the owner's failure email (ab_pipeline.report.notify)."""
    from airflow.sdk.exceptions import AirflowSkipException

    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except AirflowSkipException:
            raise
        except Exception as error:
            from ab_pipeline.report.notify import record_task_error

            record_task_error(error)
            raise

    return run  # type: ignore[return-value]


# The task callables exist once, at import; every DAG's tasks are classic PythonOperators that
# call them (a `@task` operator costs about twice as much to build: its class chain runs four
# __init__s and re-inspects the callable; at 500 experiments that was ~30% of the parse).


@_records_its_error
def _extract() -> str:
    from ab_pipeline.orchestration.pipeline import stage_extract

    return stage_extract(_run_context())


@_records_its_error
def _gate(gate: str, units_table: str) -> bool:
    from ab_pipeline.orchestration.pipeline import stage_gate

    return stage_gate(_run_context(), gate, units_table)


@_records_its_error
def _validity() -> None:
    from ab_pipeline.orchestration.pipeline import stage_validity

    stage_validity(_run_context())


@_records_its_error
def _analyse(units_table: str) -> None:
    from ab_pipeline.orchestration.pipeline import stage_analyse

    stage_analyse(_run_context(), units_table)


@_records_its_error
def _brief() -> dict[str, Any]:
    from ab_pipeline.orchestration.pipeline import stage_brief

    return stage_brief(_run_context())


@_records_its_error
def _send_email() -> dict[str, Any]:
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowSkipException

    from ab_pipeline.orchestration.backfill import BACKFILL, latest_data_date, should_email
    from ab_pipeline.orchestration.pipeline import stage_deliver

    ctx = _run_context()
    context = get_current_context()
    # A backfill emails only for the latest date with data (see ab_pipeline.orchestration.backfill).
    kind = context["dag_run"].run_type
    run_type = str(getattr(kind, "value", kind))  # an enum: "backfill", "manual", ...
    latest = latest_data_date(ctx.warehouse, ctx.config) if run_type == BACKFILL else None
    final = final_run_at(ctx.config)
    past_final = final is not None and _run_moment(dict(context)) > final
    send, why = should_email(run_type, ctx.run_date, latest, past_final=past_final)
    if not send:
        raise AirflowSkipException(why)
    return stage_deliver(ctx, SMTP_CONN_ID)


def _run_failed_watcher() -> None:
    """Fails the run, naming the first task that failed and its error."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    from ab_pipeline.report.notify import failed_tasks_upstream_first

    context = get_current_context()
    failures = failed_tasks_upstream_first(context["dag"], context["run_id"])
    first = f"{failures[0][0]} failed: {failures[0][1]}" if failures else "an upstream task failed"
    raise AirflowFailException(f"{first} (see the brief for gate failures)")


def build_dag(config_path: Path, config: ExperimentConfig) -> ExperimentDAG:
    start = midnight(config.start, UTC) + timedelta(days=1)
    end = final_run_at(config) or midnight(config.end, UTC) + timedelta(days=1)
    # A trigger timetable, whatever [scheduler] create_cron_data_intervals says: a run's logical
    # date is its tick, which `_run_date` and `final_run_at` count on.
    schedule = config.schedule and CronTriggerTimetable(
        CRON_PRESETS.get(config.schedule, config.schedule), timezone="UTC"
    )
    with ExperimentDAG(
        dag_id=config.dag_id,
        description=config.title,
        schedule=schedule,
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
            for gate in gate_registry.names()  # names only: a gate's code loads when it runs
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


def dag_file_dags(experiments_dir: Path) -> dict[str, DAG]:
    """What the DAG file defines: every config in `experiments_dir`, or only `only_config`."""
    if only_config is not None:
        return build_dags_from([only_config])
    return build_dags(experiments_dir)


def build_dags(experiments_dir: Path) -> dict[str, DAG]:
    """Every valid config's DAG, plus one InvalidExperimentConfigs DAG listing the bad files
    and the problems of the metric catalog beside them (a config that references a broken or
    missing catalog metric is itself one of the bad files; the others still load)."""
    from ab_pipeline.core.catalog import catalog_dir_beside, load_catalog

    catalog = load_catalog(catalog_dir_beside(experiments_dir))
    problems = [f"invalid metric catalog {catalog.directory}:"] if catalog.problems else []
    problems += [f"  {problem}" for problem in catalog.problems]
    return build_dags_from(sorted(experiments_dir.glob("*.yaml")), problems)


def build_dags_from(
    config_paths: Iterable[Path], catalog_problems: Iterable[str] = ()
) -> dict[str, DAG]:
    dags: dict[str, DAG] = {}
    errors: list[str] = []
    sources: dict[str, Path] = {}
    broken: dict[str, tuple[Path, ConfigError]] = {}
    for config_path in config_paths:
        try:
            config = load_config(config_path)
        except ConfigError as error:
            errors.append(str(error))
            broken.setdefault(broken_dag_id(config_path), (config_path, error))
            continue
        if config.dag_id in sources:
            errors.append(
                f"{config_path}: key: {config.key!r} is already used by {sources[config.dag_id]}"
            )
            continue
        sources[config.dag_id] = config_path
        try:
            dags[config.dag_id] = build_dag(config_path, config)
        except Exception as error:  # one config Airflow refuses must not hide the others
            errors.append(f"{config_path}: (DAG) {type(error).__name__}: {error}")
    for dag_id, (bad_path, problem) in broken.items():
        if dag_id not in dags:  # a valid config's DAG wins over a stray file's stand-in
            dags[dag_id] = build_broken_dag(dag_id, bad_path, problem)
    errors += catalog_problems
    if errors:
        invalid = InvalidExperimentConfigs(
            dag_id="ab_invalid_experiment_configs",
            schedule=None,
            start_date=datetime(2026, 1, 1, tzinfo=UTC),
        )
        invalid.config_errors = "\n".join(errors)
        dags[invalid.dag_id] = invalid
    return dags


def broken_dag_id(config_path: Path) -> str:
    """The DAG id a bad config stands in for: its experiment's, when its `key` can be read."""
    try:
        key = yaml.safe_load(config_path.read_text()).get("key")
    except Exception:  # unreadable or not a mapping: name the stand-in after the file
        key = None
    if not (isinstance(key, str) and KEY_PATTERN.match(key)):
        key = re.sub(r"[^a-z0-9]+", "-", config_path.stem.lower()).strip("-") or "config"
    return f"ab_{key.replace('-', '_')}"


def build_broken_dag(dag_id: str, config_path: Path, error: ConfigError) -> DAG:
    """A bad config's own entry in Airflow: never scheduled, its problems in its description
    and docs, and one task that fails with them if someone triggers it.

    Airflow shows import errors per DAG file (see the module docstring), so this is where an
    operator looking for one experiment finds what is wrong with its config, and an
    experiment whose config broke keeps its DAG id and run history instead of vanishing.
    """
    problems = [f"{config_path.name}: {problem}" for problem in error.problems]
    with DAG(
        dag_id=dag_id,
        description=f"INVALID CONFIG: {problems[0]}"[:200],
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        is_paused_upon_creation=True,
        tags=["ab-experiment", "invalid-config"],
        doc_md="**This experiment's config is invalid; nothing runs until it is fixed.**\n\n"
        + "\n".join(f"- `{problem}`" for problem in problems)
        + f"\n\nFile: `{config_path}`. Check it with `ab-pipeline validate {config_path.name}`.",
    ) as dag:
        PythonOperator(
            task_id="config_invalid",
            python_callable=_config_invalid,
            op_kwargs={"problems": problems},
        )
    return dag


def _config_invalid(problems: list[str]) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException("invalid experiment config: " + "; ".join(problems))
