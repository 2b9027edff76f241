"""The owner's failure email (ab_pipeline.report.notify) outside a full run.

The end-to-end check, a real failed DAG run whose callback emails the owner the first failed
task and its error, is in tests/orchestration/test_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ab_pipeline.core.config import load_config
from ab_pipeline.orchestration.dag_factory import build_dag
from ab_pipeline.report.notify import OwnerFailureNotifier, run_url, task_depths
from tests.local_services import Inbox, serving_smtp, smtp_connection

CONFIG = Path(__file__).resolve().parents[2] / "dags" / "experiments" / "refund-query-rewrite.yaml"


def sample_dag():  # type: ignore[no-untyped-def]
    return build_dag(CONFIG, load_config(CONFIG))


def test_the_notifier_accepts_the_serialized_dag_dag_test_gives_callbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # dag.test() hands DAG callbacks a SerializedDAG, which has no Jinja environment: Airflow's
    # BaseNotifier asked it for one and failed before sending anything.
    from airflow.serialization.serialized_objects import DagSerialization

    dag = sample_dag()
    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    notifier = dag.on_failure_callback
    assert isinstance(notifier, OwnerFailureNotifier)
    inbox = Inbox()
    with serving_smtp(inbox) as controller:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(smtp_connection(controller.port))
        )
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.test/")
        notifier({"dag": scheduler_dag, "run_id": "manual__2026-06-01", "reason": "task_failure"})
    [(recipients, message)] = inbox.messages
    assert recipients == ["support-ml@example.com"]
    assert "DAG run FAILED" in str(message["Subject"])
    [text] = [
        str(part.get_payload(decode=True), "utf-8")  # type: ignore[arg-type]
        for part in message.walk()
        if part.get_content_type() == "text/plain"
    ]
    link = "https://airflow.example.test/dags/ab_refund_query_rewrite/runs/manual__2026-06-01"
    assert f"link: {link}" in text and "reason: task_failure" in text


def test_the_run_link_follows_airflows_api_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = "scheduled__2026-06-01T00:00:00+00:00"
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.corp.example/")
    assert run_url("ab_x", run_id) == f"https://airflow.corp.example/dags/ab_x/runs/{run_id}"
    monkeypatch.delenv("AIRFLOW__API__BASE_URL")
    assert run_url("ab_x", run_id).startswith("http://localhost:8080/dags/ab_x/runs/")


def test_failures_are_ordered_from_the_cause_downstream() -> None:
    depth = task_depths(sample_dag())
    order = ["extract", "gate_srm", "validity", "analyse", "brief", "send_email"]
    assert [depth[task] for task in order] == sorted(depth[task] for task in order)
    assert len({depth[task] for task in order}) == len(order)
    assert depth["run_failed_watcher"] == max(depth.values())
