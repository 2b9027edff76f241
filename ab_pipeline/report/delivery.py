"""Deliver the brief by email through Airflow's SMTP connection.

The message is always written to `brief.eml` first, so a failed or unconfigured send never
loses the brief. Sending goes through the SMTP provider's `SmtpHook`, which reads the
connection (e.g. `AIRFLOW_CONN_SMTP_DEFAULT`) both inside a running task and outside one.
Airflow is imported lazily: this module must stay cheap to import and usable in plain tests.
"""

from __future__ import annotations

import logging
import os
import smtplib
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from ab_pipeline.core.errors import PipelineError
from ab_pipeline.report.brief import RenderedBrief

log = logging.getLogger(__name__)

SENDER_ENV = "AB_PIPELINE_SENDER"
DEFAULT_SENDER = "ab-pipeline@localhost"
EML_NAME = "brief.eml"
# Pauses between send attempts: three attempts in all, about 3 s of waiting at most.
RETRY_DELAYS_SECONDS: tuple[float, ...] = (1.0, 2.0)


@dataclass(frozen=True)
class DeliveryOutcome:
    sent: bool
    eml_path: Path
    detail: str


def default_sender() -> str:
    return os.environ.get(SENDER_ENV) or DEFAULT_SENDER


def build_message(results: dict[str, Any], brief: RenderedBrief, sender: str) -> EmailMessage:
    """A multipart/alternative email: the text brief first, the HTML brief as the preferred part.

    With charts, the HTML part becomes multipart/related: the HTML plus one inline image/png
    per chart, referenced from the HTML as `cid:` (mail clients block data: URIs).
    """
    recipients = list(results["recipients"])
    if not recipients:
        raise ValueError(f"experiment {results['experiment']!r} has no recipients")
    message = EmailMessage()
    message["Subject"] = brief.subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    # Lets mail filters and on-call route briefs without parsing the subject.
    message["X-AB-Experiment"] = str(results["experiment"])
    message["X-AB-Decision"] = str(results["decision"])
    # Quoted-printable keeps every line short and 7-bit, whatever relay sits in between.
    message.set_content(brief.text, cte="quoted-printable")
    message.add_alternative(brief.email_html or brief.html, subtype="html", cte="quoted-printable")
    if brief.images and brief.email_html:
        # The HTML alternative just added is the last part; it becomes multipart/related.
        *_, html_part = message.iter_parts()
        assert isinstance(html_part, EmailMessage)
        for chart in brief.images:
            html_part.add_related(
                chart.png,
                maintype="image",
                subtype="png",
                cid=f"<{chart.cid}>",
                disposition="inline",
                filename=f"{chart.name}.png",
            )
    return message


def deliver(
    message: EmailMessage, out_dir: Path, smtp_conn_id: str = "smtp_default"
) -> DeliveryOutcome:
    """Write `brief.eml`, then send it through `smtp_conn_id`.

    No connection configured: not an error (sent=False). Send failures are retried with a
    short backoff, then raised as PipelineError; the .eml stays on disk either way.
    """
    eml_path = write_eml(message, out_dir)
    if not _connection_configured(smtp_conn_id):
        detail = f"wrote {eml_path}; no SMTP connection {smtp_conn_id!r} is configured, not sent"
        log.warning("brief not emailed: %s", detail)
        return DeliveryOutcome(sent=False, eml_path=eml_path, detail=detail)
    refused = _send_with_retries(message, smtp_conn_id, eml_path)
    detail = f"sent to {message['To']} via {smtp_conn_id!r}; copy at {eml_path}"
    if refused:
        detail += f"; refused by the server: {', '.join(sorted(refused))}"
        log.warning("some recipients were refused: %s", refused)
    log.info("brief emailed: %s", detail)
    return DeliveryOutcome(sent=True, eml_path=eml_path, detail=detail)


def send_message(message: EmailMessage, smtp_conn_id: str = "smtp_default") -> bool:
    """Send with retries; False when no connection is configured (nothing to send through)."""
    if not _connection_configured(smtp_conn_id):
        return False
    _send_with_retries(message, smtp_conn_id, None)
    return True


def write_eml(message: EmailMessage, out_dir: Path) -> Path:
    """Write the message atomically: a crash mid-write never leaves half an .eml behind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / EML_NAME
    partial = path.with_suffix(".eml.tmp")
    partial.write_bytes(message.as_bytes())
    partial.replace(path)
    return path


def _connection_configured(conn_id: str) -> bool:
    from airflow.providers.common.compat.sdk import AirflowNotFoundException
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    try:
        SmtpHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return False
    return True


def _send_with_retries(
    message: EmailMessage, conn_id: str, eml_path: Path | None
) -> dict[str, Any]:
    attempt = 0
    while True:
        attempt += 1
        try:
            return _send_once(message, conn_id)
        except Exception as error:
            if attempt > len(RETRY_DELAYS_SECONDS) or not _is_transient(error):
                raise PipelineError(
                    f"could not email the brief via {conn_id!r} after {attempt} attempt(s): "
                    f"{error!r}" + (f"; the message is saved at {eml_path}" if eml_path else ""),
                    experiment=message.get("X-AB-Experiment"),
                ) from error
            delay = RETRY_DELAYS_SECONDS[attempt - 1]
            log.warning("send attempt %d failed (%r); retrying in %.1fs", attempt, error, delay)
            time.sleep(delay)


def _send_once(message: EmailMessage, conn_id: str) -> dict[str, Any]:
    """One connection, one message. Returns the recipients the server refused (if only some)."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=conn_id) as hook:
        # The hook's send_email_smtp builds its own HTML-only message; we need our
        # multipart/alternative one, so send it on the client the hook connected and logged in.
        client = hook._smtp_client
        if not isinstance(client, smtplib.SMTP):  # None, or the hook's async client
            raise smtplib.SMTPServerDisconnected("the SMTP hook did not open a connection")
        return client.send_message(message)


def _is_transient(error: BaseException) -> bool:
    """Worth retrying: network trouble and 4xx replies. A 5xx reply will not change."""
    from airflow.providers.common.compat.sdk import AirflowException

    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in error.recipients.values())
    if isinstance(error, smtplib.SMTPResponseException):
        return 400 <= error.smtp_code < 500
    # OSError covers refused/reset connections, timeouts and SMTPServerDisconnected;
    # AirflowException is the hook's "Unable to connect to smtp server".
    return isinstance(error, OSError | AirflowException)
