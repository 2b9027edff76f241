"""Tell an experiment's owner when its DAG run fails (the DAG's `on_failure_callback`).

A failed run is not always a RERUN brief: the warehouse may be down, or a bug may break a stage
before any brief exists. Stakeholders get briefs; the owner gets this short note naming the
first task that failed, its error and a link to the run.

Where the error comes from: every task of an experiment DAG that raises records its error as an
XCom (`ERROR_XCOM_KEY`, see `record_task_error`) before failing. Airflow's callback context
names only the *last* failed task (here always `run_failed_watcher`), and a task's exception is
kept nowhere else a callback can read.

Reading those XComs: the dag-processor runs DAG callbacks with a Task SDK channel to Airflow
(as tasks have); `dag.test()` (`ab-pipeline run`) runs them in the calling process, which has
no such channel but has the metadata database. `recorded_errors` uses whichever is there.

Only `airflow.sdk` is imported at module level (the DAG file already pays for it); the SMTP
machinery is imported when a notification is actually sent.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseNotifier

ERROR_XCOM_KEY = "ab_error"
# Where Airflow's api-server listens by default, for when `[api] base_url` is not set.
DEFAULT_BASE_URL = "http://localhost:8080"


class OwnerFailureNotifier(BaseNotifier):
    """Emails the owner through the SMTP connection; logs instead when none is configured."""

    # Nothing is Jinja-rendered: titles are user text and must never be evaluated as templates.
    template_fields = ()

    def __init__(
        self, experiment: str, owner: str, title: str, smtp_conn_id: str = "smtp_default"
    ) -> None:
        super().__init__()
        self.experiment = experiment
        self.owner = owner
        self.title = title
        self.smtp_conn_id = smtp_conn_id

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render. BaseNotifier's version asks the context's DAG for a Jinja
        environment, which the SerializedDAG that `dag.test()` passes to DAG callbacks does not
        have ("'SerializedDAG' object has no attribute 'get_template_env'")."""

    def notify(self, context: Any) -> None:
        from ab_pipeline.report.delivery import default_sender, send_message

        facts = failure_facts(context)
        message = failure_message(self.experiment, self.owner, self.title, facts, default_sender())
        if not send_message(message, self.smtp_conn_id):
            self.log.warning("run failure of %s not emailed (no SMTP connection)", self.experiment)


def record_task_error(error: BaseException) -> None:
    """Called by a failing task (ab_pipeline.orchestration.dag_factory): keep its error for the
    notifier."""
    from airflow.sdk import get_current_context

    get_current_context()["ti"].xcom_push(ERROR_XCOM_KEY, describe_error(error))


def describe_error(error: BaseException) -> str:
    text = str(error).strip() or "(no message)"
    return f"{type(error).__name__}: {text}"


def failed_tasks_upstream_first(dag: Any, run_id: str) -> list[tuple[str, str]]:
    """(task id, error) of every task of the run that recorded an error, upstream tasks first."""
    errors = recorded_errors(dag.dag_id, run_id, list(dag.task_dict))
    depth = task_depths(dag)
    return [(task_id, errors[task_id]) for task_id in sorted(errors, key=lambda t: (depth[t], t))]


def task_depths(dag: Any) -> dict[str, int]:
    """Longest path from a root to each task: a failure's cause sits at a smaller depth."""
    depths: dict[str, int] = {}

    def depth(task_id: str) -> int:
        if task_id not in depths:
            upstream = dag.task_dict[task_id].upstream_task_ids
            depths[task_id] = 1 + max((depth(u) for u in upstream), default=-1)
        return depths[task_id]

    for task_id in dag.task_dict:
        depth(task_id)
    return depths


def recorded_errors(dag_id: str, run_id: str, task_ids: Iterable[str]) -> dict[str, str]:
    """The errors tasks of this run recorded, by task id (see the module docstring)."""
    from airflow.sdk.execution_time import task_runner

    if hasattr(task_runner, "SUPERVISOR_COMMS"):
        from airflow.sdk.execution_time.xcom import XCom

        values = {
            task_id: XCom.get_one(key=ERROR_XCOM_KEY, dag_id=dag_id, task_id=task_id, run_id=run_id)
            for task_id in task_ids
        }
        return {task_id: str(value) for task_id, value in values.items() if value is not None}
    return {
        task_id: str(value)
        for task_id, value in run_xcoms(dag_id, run_id, ERROR_XCOM_KEY).items()
        if task_id in set(task_ids)
    }


def run_xcoms(dag_id: str, run_id: str, key: str) -> dict[str, Any]:
    """XCom values of one key for a run, by task id, read from the metadata database (processes
    that have it: the CLI around `dag.test()`)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=run_id, key=key, dag_ids=dag_id)
        rows: list[Any] = list(session.scalars(query))
        return {row.task_id: XComModel.deserialize_value(row) for row in rows}


def run_url(dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI, from `[api] base_url` (as Airflow's own links)."""
    from airflow.sdk import conf

    base = conf.get("api", "base_url", fallback=None) or DEFAULT_BASE_URL
    return f"{base.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(run_id, safe=':+')}"


def failure_facts(context: Mapping[str, Any]) -> dict[str, str]:
    """What the owner needs from a DAG failure callback's context, in reading order."""
    dag = context.get("dag")
    dag_run = context.get("dag_run")
    run_id = str(context.get("run_id") or getattr(dag_run, "run_id", None) or "unknown run")
    dag_id = str(getattr(dag, "dag_id", None) or getattr(dag_run, "dag_id", "unknown"))
    facts = {"run": run_id, "DAG": dag_id}
    try:
        failures = failed_tasks_upstream_first(dag, run_id) if dag is not None else []
    except Exception as lookup:  # the owner must hear of the failure even if this lookup fails
        failures = []
        facts["first failed task"] = f"unknown (the run's errors could not be read: {lookup})"
    if failures:
        (first, error), *others = failures
        facts["first failed task"] = first
        facts["error"] = error
        if others:
            facts["then failed"] = ", ".join(task for task, _ in others)
    elif "first failed task" not in facts:
        facts["first failed task"] = "none recorded an error (killed or timed out?); see the run"
    if context.get("reason"):
        facts["reason"] = str(context["reason"])
    facts["link"] = run_url(dag_id, run_id)
    return facts


def failure_message(
    experiment: str, owner: str, title: str, facts: Mapping[str, str], sender: str
) -> EmailMessage:
    failed = facts.get("first failed task", "")
    at = f" at {failed}" if failed and " " not in failed else ""  # a task id, not an explanation
    subject = f"[ab-pipeline] {experiment}: DAG run FAILED{at} ({facts['run']})"
    lines = [
        f"The run of experiment {experiment} ({title}) failed.",
        "",
        *(f"{label}: {value}" for label, value in facts.items()),
        "",
        "A failed validity gate still writes a RERUN brief to the archive and emails it to the",
        "recipients; any other failure means no brief was sent for this run. See the task logs.",
    ]
    message = EmailMessage()
    message["Subject"] = re.sub(r"\s+", " ", subject).strip()  # a header is one line
    message["From"] = sender
    message["To"] = owner
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message["X-AB-Experiment"] = experiment
    message.set_content("\n".join(lines), cte="quoted-printable")
    body = "".join(f'<p style="margin:0 0 6px;">{html.escape(line)}</p>' for line in lines)
    message.add_alternative(f"<html><body>{body}</body></html>", subtype="html")
    return message
