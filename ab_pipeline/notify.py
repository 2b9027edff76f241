"""Tell an experiment's owner when its DAG run fails (the DAG's `on_failure_callback`).

A failed run is not always a RERUN brief: the warehouse may be down, or a bug may break a stage
before any brief exists. Stakeholders get briefs; the owner gets this short note with the run,
the failed tasks and where the archive keeps whatever was written.

Only `airflow.sdk` is imported at module level (the DAG file already pays for it); the SMTP
machinery is imported when a notification is actually sent.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from airflow.sdk import BaseNotifier


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

    def notify(self, context: Any) -> None:
        from ab_pipeline.delivery import default_sender, send_message

        message = failure_message(
            self.experiment, self.owner, self.title, context, default_sender()
        )
        if not send_message(message, self.smtp_conn_id):
            self.log.warning("run failure of %s not emailed (no SMTP connection)", self.experiment)


def failure_message(
    experiment: str, owner: str, title: str, context: Mapping[str, Any], sender: str
) -> EmailMessage:
    facts = failure_facts(context)
    subject = f"[ab-pipeline] {experiment}: DAG run FAILED ({facts['run']})"
    lines = [
        f"The nightly run of experiment {experiment} ({title}) failed.",
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


def failure_facts(context: Mapping[str, Any]) -> dict[str, str]:
    """Run id, DAG, failed tasks and reason from a callback context (any of them may be absent)."""
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    run_id = context.get("run_id") or getattr(dag_run, "run_id", None) or "unknown run"
    facts = {
        "run": str(run_id),
        "DAG": str(getattr(dag, "dag_id", None) or getattr(dag_run, "dag_id", "unknown")),
        "failed tasks": ", ".join(_failed_tasks(context, dag_run)) or "see the run's task list",
    }
    if context.get("reason"):
        facts["reason"] = str(context["reason"])
    if context.get("exception"):
        facts["error"] = str(context["exception"])
    return facts


def _failed_tasks(context: Mapping[str, Any], dag_run: Any) -> list[str]:
    ti = context.get("task_instance") or context.get("ti")
    if ti is not None and getattr(ti, "task_id", None):
        return [str(ti.task_id)]
    try:  # a scheduler-side DagRun knows its task instances; an SDK one may not
        return sorted(t.task_id for t in dag_run.get_task_instances(state=["failed"]))
    except Exception:
        return []
