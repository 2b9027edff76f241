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
from pathlib import Path
from typing import Any

import yaml

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
             "start": str(dag.start_date), "end": str(dag.end_date), "owner": dag.owner}
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


def test_a_broken_config_is_one_import_error_and_the_others_still_load(tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    shutil.copytree(DAGS, folder)
    bad = yaml.safe_load((DAGS / "experiments" / "refund-query-rewrite.yaml").read_text())
    bad["key"] = "refund-broken"
    bad["metrics"]["resolution_rate"]["window"] = "one day"
    (folder / "experiments" / "refund-broken.yaml").write_text(yaml.safe_dump(bad))
    result = parse(folder, tmp_path)
    assert set(result["dags"]) == SAMPLE_DAG_IDS
    [(path, message)] = result["errors"].items()
    assert path.endswith("ab_experiments.py")
    assert "refund-broken.yaml" in message
    assert "metrics.resolution_rate.window" in message and "not a duration" in message


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
from ab_pipeline.dag_factory import build_dags

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
from pathlib import Path
from types import SimpleNamespace
import airflow.sdk
import ab_pipeline.warehouse
from ab_pipeline import dag_factory
from ab_pipeline.config import load_config

ab_pipeline.warehouse.warehouse_for_connection = lambda conn: SimpleNamespace(url="conn:" + conn)
seen = []
for config_path in sorted((Path(sys.argv[1]) / "experiments").glob("*.yaml")):
    config = load_config(config_path)
    dag = dag_factory.build_dag(config_path, config)
    for task in dag.tasks:
        context = {"dag": dag, "task": task, "params": {"run_date": "2026-05-10"}}
        airflow.sdk.get_current_context = lambda: context
        ctx = dag_factory._run_context()
        seen.append([task.task_id, config_path.name, ctx.config_path.name, ctx.warehouse_url,
                     "conn:" + config.source.conn_id, str(ctx.run_date)])
print(json.dumps(seen))
"""


def test_the_shared_task_callables_run_the_experiment_of_their_dag(tmp_path: Path) -> None:
    # One set of task callables serves every DAG: at run time each finds its experiment (config
    # file, warehouse connection) on the DAG it runs in.
    seen = run_fresh_python(RUN_CONTEXT, DAGS, tmp_path)
    assert len(seen) == 10 * len(SAMPLE_DAG_IDS)
    for task_id, config_name, run_config, url, expected_url, run_date in seen:
        assert (run_config, url, run_date) == (config_name, expected_url, "2026-05-10"), task_id
