"""DAG integrity: the factory loads every sample, isolates a broken config, parses light.

Each check parses the dags folder in a fresh interpreter, as Airflow's dag-processor does, so
nothing imported by the test process can hide a parse-time import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import load_config

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
SAMPLE_DAG_IDS = {
    "ab_refund_query_rewrite",
    "ab_onboarding_checklist",
    "ab_delivery_estimate",
    "ab_search_ranking_v2",
}
HEAVY = ["great_expectations", "pandas", "statsmodels", "duckdb", "scipy", "numpy", "matplotlib"]

PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
dags = {
    dag_id: {"tasks": sorted(t.task_id for t in dag.tasks), "schedule": str(dag.schedule),
             "start": str(dag.start_date), "end": str(dag.end_date), "owner": dag.owner,
             "description": dag.description, "tags": sorted(dag.tags)}
    for dag_id, dag in bag.dags.items()
}
print(json.dumps({"dags": dags, "errors": bag.import_errors}))
"""


def run_fresh_python(script: str, argument: Path, tmp_path: Path) -> Any:
    """Run `script` in a new interpreter (own AIRFLOW_HOME); return its last line as JSON."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(argument)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse(folder: Path, tmp_path: Path) -> dict[str, Any]:
    return dict(run_fresh_python(PARSE, folder, tmp_path))


def test_sample_configs_load_with_zero_import_errors(tmp_path: Path) -> None:
    result = parse(DAGS, tmp_path)
    assert result["errors"] == {}
    assert set(result["dags"]) == SAMPLE_DAG_IDS
    refund = result["dags"]["ab_refund_query_rewrite"]
    assert refund["tasks"] == [
        "analyse",
        "brief",
        "extract",
        "gate_assignment",
        "gate_data_quality",
        "gate_receipt",
        "gate_srm",
        "run_failed_watcher",
        "send_email",
        "validity",
    ]
    assert refund["start"].startswith("2026-05-05") and refund["end"].startswith("2026-06-01")
    assert refund["owner"] == "support-ml@example.com"


def sample_with(folder: Path, name: str, **changes: Any) -> Path:
    """A copy of the refund sample under `folder` with top-level fields changed."""
    data = yaml.safe_load((DAGS / "experiments" / "refund-query-rewrite.yaml").read_text())
    data.update(changes)
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_broken_config_is_reported_by_file_and_field_and_the_others_still_load(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "dags"
    shutil.copytree(DAGS, folder)
    window = sample_with(folder / "experiments", "refund-window.yaml", key="refund-window")
    data = yaml.safe_load(window.read_text())
    data["metrics"]["resolution_rate"]["window"] = "one day"
    window.write_text(yaml.safe_dump(data))
    for name in ("moon-a", "moon-b"):  # Airflow alone keeps only the last of these
        sample_with(folder / "experiments", f"{name}.yaml", key=name, schedule="every blue moon")
    (folder / "experiments" / "not yaml.yaml").write_text("key: [unclosed\n")
    result = parse(folder, tmp_path)
    # Each bad config stands in under its experiment's DAG id (or its file's name).
    stand_ins = {"ab_refund_window", "ab_moon_a", "ab_moon_b", "ab_not_yaml"}
    assert set(result["dags"]) == SAMPLE_DAG_IDS | stand_ins
    moon = result["dags"]["ab_moon_a"]
    assert moon["tasks"] == ["config_invalid"] and moon["schedule"] == "None"
    assert "invalid-config" in moon["tags"]
    assert moon["description"].startswith(
        "INVALID CONFIG: moon-a.yaml: schedule: 'every blue moon' is not a cron expression"
    )
    assert result["dags"]["ab_refund_window"]["description"].startswith(
        "INVALID CONFIG: refund-window.yaml: metrics.resolution_rate.window: "
    )
    # Airflow keys import errors by DAG file: one error, naming every bad config.
    [(path, message)] = result["errors"].items()
    assert path.endswith("ab_experiments.py")
    lines = [line.strip() for line in message.splitlines()]
    assert any(
        "refund-window.yaml: metrics.resolution_rate.window" in line and "not a duration" in line
        for line in lines
    ), message
    for name in ("moon-a", "moon-b"):
        assert any(
            f"{name}.yaml: schedule: 'every blue moon' is not a cron expression" in line
            for line in lines
        ), message


def test_a_bad_catalog_reference_fails_only_its_config_naming_file_and_field(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "dags"
    shutil.copytree(DAGS, folder)
    # A reference to a name the catalog does not have.
    typo = sample_with(folder / "experiments", "typo.yaml", key="typo")
    data = yaml.safe_load(typo.read_text())
    data["metrics"]["escalation_rate"] = {"ref": "repeat_contact_rat"}
    typo.write_text(yaml.safe_dump(data))
    # A catalog entry with a bad field, referenced by a config of its own.
    catalog = folder / "metrics" / "broken.yaml"
    catalog.write_text(
        "metrics:\n  latency_p99:\n    description: p99\n    owner: a@example.com\n"
        "    type: quantile\n    event: answer_served\n    quantile: 99\n"
    )
    user = sample_with(folder / "experiments", "user.yaml", key="user")
    data = yaml.safe_load(user.read_text())
    data["metrics"]["p95_latency_ms"] = {"ref": "latency_p99"}
    user.write_text(yaml.safe_dump(data))
    result = parse(folder, tmp_path)
    # The sample that references the catalog (delivery-estimate) and the others still load;
    # the two bad configs stand in under their own DAG ids.
    assert set(result["dags"]) == SAMPLE_DAG_IDS | {"ab_typo", "ab_user"}
    [message] = result["errors"].values()
    lines = [line.strip() for line in message.splitlines()]
    assert any(
        "typo.yaml: metrics.escalation_rate.ref: no metric 'repeat_contact_rat'" in line
        and "(nearest: 'repeat_contact_rate')" in line
        for line in lines
    ), message
    assert any(
        "user.yaml: metrics.p95_latency_ms.ref: catalog metric 'latency_p99' is invalid" in line
        and "broken.yaml: metrics.latency_p99.quantile: Input should be less than 1" in line
        for line in lines
    ), message
    # The broken catalog file itself is listed too, by file and field.
    assert any(
        line.endswith("broken.yaml: metrics.latency_p99.quantile: Input should be less than 1")
        for line in lines
    ), message


DAG_PROCESSOR_PARSE = """
import json, sys
from pathlib import Path
import structlog
from airflow.dag_processing.processor import DagFileParseRequest, _parse_file

folder = Path(sys.argv[1])
request = DagFileParseRequest(
    file=str(folder / "ab_experiments.py"), bundle_path=folder, bundle_name="dags-folder"
)
result = _parse_file(request, structlog.get_logger())
print(json.dumps({"dags": sorted(d.dag_id for d in result.serialized_dags),
                  "errors": result.import_errors}))
"""


def test_the_dag_processor_stores_the_bad_configs_as_an_import_error_of_the_dag_file(
    tmp_path: Path,
) -> None:
    # What the dag-processor sends its manager to store (ParseImportError rows keyed by file).
    folder = tmp_path / "dags"
    shutil.copytree(DAGS, folder)
    sample_with(folder / "experiments", "moon.yaml", key="moon", schedule="every blue moon")
    result = run_fresh_python(DAG_PROCESSOR_PARSE, folder, tmp_path)
    assert set(result["dags"]) == SAMPLE_DAG_IDS | {"ab_moon"}  # the bad config's stand-in
    assert list(result["errors"]) == ["ab_experiments.py"]
    assert "moon.yaml: schedule: 'every blue moon'" in result["errors"]["ab_experiments.py"]


ONLY_ONE = """
import json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import DagBag
from ab_pipeline.orchestration import dag_factory

dag_factory.only_config = Path(sys.argv[1]) / "mine" / "fresh.yaml"  # as `ab-pipeline run` does
bag = DagBag(str(Path(dag_factory.__file__).parents[2] / "dags"))
print(json.dumps({"dags": sorted(bag.dags), "errors": bag.import_errors}))
"""


def test_the_dag_file_builds_only_the_config_the_cli_runs(tmp_path: Path) -> None:
    # `ab-pipeline run` has the DAG file build the one config it runs, wherever it lives.
    (tmp_path / "mine").mkdir()
    sample_with(tmp_path / "mine", "fresh.yaml", key="fresh-from-elsewhere")
    result = run_fresh_python(ONLY_ONE, tmp_path, tmp_path)
    assert result == {"dags": ["ab_fresh_from_elsewhere"], "errors": {}}


def test_duplicate_keys_are_reported_not_silently_merged(tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    shutil.copytree(DAGS, folder)
    shutil.copy(
        folder / "experiments" / "onboarding-checklist.yaml", folder / "experiments" / "copy.yaml"
    )
    result = parse(folder, tmp_path)
    assert set(result["dags"]) == SAMPLE_DAG_IDS
    [message] = result["errors"].values()
    assert "copy.yaml" in message and "onboarding-checklist.yaml" in message
    assert "already used by" in message


def test_parsing_the_dags_imports_nothing_heavy(tmp_path: Path) -> None:
    script = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); import ab_experiments; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert run_fresh_python(script, DAGS, tmp_path) == []


TASK_PARAMS = """
import json, sys
from pathlib import Path
from airflow.sdk.bases.operator import get_merged_defaults
from ab_pipeline.orchestration.dag_factory import build_dags

def described(params):
    return {k: {**vars(params.get_param(k))} for k in params}

problems = []
for dag in build_dags(Path(sys.argv[1]) / "experiments").values():
    # What Airflow gives a task created in the DAG: its own copy of the DAG's params.
    _, expected = get_merged_defaults(dag=dag, task_group=None, task_params=None,
                                      task_default_args=None)
    seen = {id(dag.params.get_param(k)) for k in dag.params}
    for task in dag.tasks:
        if described(task.params) != described(expected):
            problems.append([dag.dag_id, task.task_id, described(task.params)])
        ids = {id(task.params.get_param(k)) for k in task.params}
        if ids & seen:
            problems.append([dag.dag_id, task.task_id, "shares a Param object"])
        seen |= ids
    if described(dag.params) != {"run_date": {**described(expected)["run_date"], "source": None}}:
        problems.append([dag.dag_id, described(dag.params)])
print(json.dumps(problems, default=str))
"""


def test_tasks_get_the_dag_params_exactly_as_airflow_merges_them(tmp_path: Path) -> None:
    # build_dag attaches the params after the tasks (to skip Airflow's four deep copies per
    # task); the result must be what Airflow's own merge gives, with no Param object shared.
    assert run_fresh_python(TASK_PARAMS, DAGS, tmp_path) == []


RUN_CONTEXT = """
import json, sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
import airflow.sdk
import ab_pipeline.warehouse
from ab_pipeline.orchestration import dag_factory
from ab_pipeline.core.config import load_config

ab_pipeline.warehouse.warehouse_for_connection = lambda conn: SimpleNamespace(url="conn:" + conn)

def run_date_of(dag, task, params, logical_date=None):
    context = {"dag": dag, "task": task, "params": params, "logical_date": logical_date}
    airflow.sdk.get_current_context = lambda: context
    try:
        return str(dag_factory._run_context().run_date)
    except ValueError as error:
        return "refused: " + str(error)

seen = []
for config_path in sorted((Path(sys.argv[1]) / "experiments").glob("*.yaml")):
    config = load_config(config_path)
    dag = dag_factory.build_dag(config_path, config)
    inside = str(config.start + timedelta(days=2))
    for task in dag.tasks:
        context = {"dag": dag, "task": task, "params": {"run_date": inside}}
        airflow.sdk.get_current_context = lambda: context
        ctx = dag_factory._run_context()
        seen.append([task.task_id, config_path.name, ctx.config_path.name, ctx.warehouse_url,
                     "conn:" + config.source.conn_id, str(ctx.run_date), inside])
    extract = dag.get_task("extract")
    months_later = dag.end_date + timedelta(days=90)
    seen.append(["dates", config_path.name, str(config.start), str(config.end),
                 run_date_of(dag, extract, {"run_date": None}, months_later),
                 run_date_of(dag, extract, {"run_date": str(config.end + timedelta(days=9))}),
                 run_date_of(dag, extract, {"run_date": str(config.start - timedelta(days=1))})])
print(json.dumps(seen))
"""


def test_the_shared_task_callables_run_the_experiment_of_their_dag(tmp_path: Path) -> None:
    # One set of task callables serves every DAG: at run time each finds its experiment (config
    # file, warehouse connection) on the DAG it runs in.
    seen = run_fresh_python(RUN_CONTEXT, DAGS, tmp_path)
    runs = [row for row in seen if row[0] != "dates"]
    assert len(runs) == 10 * len(SAMPLE_DAG_IDS)
    for task_id, config_name, run_config, url, expected_url, run_date, asked in runs:
        assert (run_config, url, run_date) == (config_name, expected_url, asked), task_id
    dates = [row for row in seen if row[0] == "dates"]
    assert len(dates) == len(SAMPLE_DAG_IDS)
    for _, name, start, end, months_later, after_end, before_start in dates:
        # A run after `end` reads out as of `end`; before `start` there is nothing to read out.
        assert months_later == end and after_end == end, name
        assert before_start.startswith("refused: ") and f"start {start}" in before_start, name


def scheduled_runs(dag: Any) -> list[Any]:
    """Every run Airflow's scheduler creates over the DAG's life (the timetable's own next-run
    computation within the DAG's start_date and end_date, as a scheduler that ran throughout)."""
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    scheduler_dag: Any = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    restriction = TimeRestriction(scheduler_dag.start_date, scheduler_dag.end_date, catchup=True)
    runs: list[Any] = []
    info = None
    while info := scheduler_dag.timetable.next_dagrun_info_v2(
        last_dagrun_info=info, restriction=restriction
    ):
        runs.append(info.logical_date)
        assert len(runs) < 1000
    return runs


@pytest.mark.parametrize("schedule", ["@daily", "30 6 * * *", "@weekly", "0 */6 * * *"])
def test_scheduling_stops_after_the_run_that_reads_out_end(schedule: str, tmp_path: Path) -> None:
    from ab_pipeline.orchestration.backfill import should_email
    from ab_pipeline.orchestration.dag_factory import build_dag, final_run_at, readout_date

    today = date.today()
    config_path = sample_with(
        tmp_path,
        "x.yaml",
        schedule=schedule,
        start=today - timedelta(days=45),
        end=today - timedelta(days=17),  # whatever weekday it is: @weekly must still end there
    )
    config = load_config(config_path)
    dag = build_dag(config_path, config)
    runs = scheduled_runs(dag)
    readouts = [readout_date((run - timedelta(days=1)).date(), config) for run in runs]
    assert readouts[-1] == config.end and readouts.count(config.end) == 1, (runs[-3:], readouts)
    assert runs[-1] == final_run_at(config) == dag.end_date
    # A run after the final one (were one created) stores its readout but emails nobody.
    after = runs[-1] + (runs[-1] - runs[-2])
    assert dag.end_date is not None and after > dag.end_date
    assert should_email("scheduled", config.end, None, past_final=True)[0] is False
    assert should_email("scheduled", config.end, None, past_final=False)[0] is True
    # A DAG switched on after its end schedules nothing (catchup is off).
    from airflow.serialization.serialized_objects import DagSerialization

    live = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    assert live.next_dagrun_info(last_automated_run_info=None) is None


def test_triggering_a_bad_configs_stand_in_fails_with_its_problems(tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ab_pipeline.orchestration.dag_factory import build_dags_from

    path = sample_with(tmp_path, "moon.yaml", key="moon", schedule="every blue moon")
    dags = build_dags_from([path])
    [task] = dags["ab_moon"].tasks
    with pytest.raises(AirflowFailException, match="moon.yaml: schedule: 'every blue moon'"):
        task.python_callable(**task.op_kwargs)
