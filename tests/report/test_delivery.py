"""Email delivery against a real SMTP server (aiosmtpd on 127.0.0.1), through Airflow's SmtpHook."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.core.errors import PipelineError
from ab_pipeline.report import delivery
from ab_pipeline.report.brief import render_brief
from ab_pipeline.report.delivery import SENDER_ENV, build_message, default_sender, deliver
from tests.local_services import free_port, serving_smtp, smtp_connection

FIXTURES = Path(__file__).parents[1] / "fixtures"
REPO = Path(__file__).resolve().parents[2]
CONN_ENV = "AIRFLOW_CONN_SMTP_DEFAULT"
SENDER = "ab-pipeline@localhost"


class Recorder:
    """aiosmtpd handler that keeps every envelope it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


class RejectRecipients(Recorder):
    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        return "550 5.1.1 no such mailbox"


def point_smtp_default_at(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    # Fail fast: our own retry loop does the retrying.
    conn = smtp_connection(port, timeout=5, retry_limit=0)
    monkeypatch.setenv(CONN_ENV, json.dumps(conn))


@pytest.fixture
def smtp_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    handler = Recorder()
    with serving_smtp(handler) as controller:
        point_smtp_default_at(monkeypatch, controller.port)
        yield handler


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "RETRY_DELAYS_SECONDS", (0.01, 0.01))


def ship_message() -> tuple[dict[str, Any], EmailMessage]:
    results = json.loads((FIXTURES / "results_ship.json").read_text())
    return results, build_message(results, render_brief(results), SENDER)


def parts(message: email.message.Message) -> dict[str, str]:
    """Text and HTML bodies by content type, looking inside multipart/related."""
    found: dict[str, str] = {}
    for part in message.walk():
        if part.get_content_type() in ("text/plain", "text/html"):
            found[part.get_content_type()] = part.get_content()
    return found


def inline_images(message: email.message.Message) -> dict[str, bytes]:
    """Content-ID (without <>) -> PNG bytes of every inline image part."""
    return {
        str(part["Content-ID"]).strip("<>"): part.get_content()
        for part in message.walk()
        if part.get_content_type() == "image/png"
    }


def cid_references(html: str) -> set[str]:
    return set(re.findall(r'src="cid:([^"]+)"', html))


def test_build_message_is_text_and_html_alternatives() -> None:
    results, message = ship_message()
    assert message.get_content_type() == "multipart/alternative"
    assert message["To"] == "support-leads@example.com, pm-refunds@example.com"
    assert message["From"] == SENDER
    assert message["Subject"] == "[ab-pipeline] refund-query-rewrite: SHIP (final, 2026-05-31)"
    assert message["X-AB-Decision"] == "SHIP"
    # alternative: [text/plain, related: [text/html, image/png...]]; the last is preferred.
    plain, related = message.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html_part, *images = related.iter_parts()
    assert html_part.get_content_type() == "text/html" and images
    assert all(i.get_content_disposition() == "inline" for i in images)
    body = parts(message)
    assert "840 of 2,000" in body["text/plain"] and "+4.0 pp" in body["text/html"]
    assert "data:" not in body["text/html"]  # mail clients block data: URIs
    assert cid_references(body["text/html"]) == set(inline_images(message))


def test_plain_text_part_says_what_the_html_says() -> None:
    results, message = ship_message()
    body = parts(message)
    for phrase in (
        "SHIP",
        "[+1.0 pp, +7.0 pp]",
        "+10.5%",
        "shipping threshold +2.0 pp",
        "Days until the planned end",
        "What changed since the previous readout",
        "INTERIM",
        results["config_sha256"],
    ):
        assert phrase in body["text/plain"] and phrase in body["text/html"], phrase


def test_hostile_text_is_escaped_in_the_email(smtp_server: Recorder, tmp_path: Path) -> None:
    results = json.loads((FIXTURES / "results_hostile.json").read_text())
    deliver(build_message(results, render_brief(results), SENDER), tmp_path)
    [envelope] = smtp_server.envelopes
    received = email.message_from_bytes(envelope.content, policy=email.policy.default)
    html = parts(received)["text/html"]
    assert "<script" not in html.lower() and "<img src=x" not in html
    assert "&lt;script&gt;alert(" in html
    assert "&lt;script&gt;" not in parts(received)["text/plain"]  # text stays verbatim


def test_default_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SENDER_ENV, raising=False)
    assert default_sender() == "ab-pipeline@localhost"
    monkeypatch.setenv(SENDER_ENV, "experiments@example.com")
    assert default_sender() == "experiments@example.com"


def test_deliver_sends_through_the_smtp_connection(smtp_server: Recorder, tmp_path: Path) -> None:
    results, message = ship_message()
    outcome = deliver(message, tmp_path)

    assert outcome.sent and outcome.eml_path == tmp_path / "brief.eml"
    [envelope] = smtp_server.envelopes
    assert envelope.mail_from == SENDER
    assert envelope.rcpt_tos == results["recipients"]
    received = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert received["Subject"] == "[ab-pipeline] refund-query-rewrite: SHIP (final, 2026-05-31)"
    assert received.get_content_type() == "multipart/alternative"
    body = parts(received)
    assert set(body) == {"text/plain", "text/html"}
    html = body["text/html"]
    # Every chart arrives as an inline PNG part that the HTML references by CID.
    images = inline_images(received)
    assert images and cid_references(html) == set(images)
    assert all(png.startswith(b"\x89PNG\r\n") for png in images.values())
    assert "840 of 2,000 customer_accounts (42.0%) vs 760 of 2,000 (38.0%)" in html
    assert "+4.0 pp" in html and "[+1.0 pp, +7.0 pp]" in html and "+10.5%" in html
    assert "SHIP" in body["text/plain"]
    saved = email.message_from_bytes(outcome.eml_path.read_bytes(), policy=email.policy.default)
    assert saved["Subject"] == received["Subject"]


def test_no_connection_writes_eml_and_does_not_fail(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_AB_PIPELINE_TEST_NOWHERE", raising=False)
    _, message = ship_message()
    with caplog.at_level(logging.WARNING, logger="ab_pipeline.report.delivery"):
        outcome = deliver(message, tmp_path, smtp_conn_id="ab_pipeline_test_nowhere")

    assert not outcome.sent
    assert outcome.eml_path.is_file()
    assert "no SMTP connection" in outcome.detail and str(outcome.eml_path) in outcome.detail
    assert "no SMTP connection" in caplog.text


def test_server_down_raises_pipeline_error_and_keeps_eml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    point_smtp_default_at(monkeypatch, free_port())  # nothing listens there
    _, message = ship_message()
    with (
        caplog.at_level(logging.WARNING, logger="ab_pipeline.report.delivery"),
        pytest.raises(PipelineError, match="after 3 attempt"),
    ):
        deliver(message, tmp_path)

    assert (tmp_path / "brief.eml").is_file()
    assert caplog.text.count("retrying") == 2


def test_permanent_rejection_is_not_retried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with serving_smtp(RejectRecipients()) as controller:
        point_smtp_default_at(monkeypatch, controller.port)
        _, message = ship_message()
        with pytest.raises(PipelineError, match="after 1 attempt"):
            deliver(message, tmp_path)
    assert (tmp_path / "brief.eml").is_file()


PROBE_DAG = """
import json
from pathlib import Path

import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False)
def brief_delivery_probe():
    @task
    def send() -> str:
        from ab_pipeline.report.brief import render_brief
        from ab_pipeline.report.delivery import build_message, deliver

        results = json.loads(Path({fixture!r}).read_text())
        message = build_message(results, render_brief(results), "ab-pipeline@localhost")
        outcome = deliver(message, Path({out!r}))
        assert outcome.sent, outcome
        return outcome.detail

    send()


brief_delivery_probe()
"""


@pytest.mark.slow
def test_deliver_inside_a_running_airflow_task(smtp_server: Recorder, tmp_path: Path) -> None:
    """In a task the connection comes through the task SDK, not straight from the env var."""
    dags, out = tmp_path / "dags", tmp_path / "out"
    dags.mkdir()
    fixture = str(FIXTURES / "results_ship.json")
    (dags / "probe.py").write_text(PROBE_DAG.format(fixture=fixture, out=str(out)))
    env = {
        **os.environ,  # carries AIRFLOW_CONN_SMTP_DEFAULT from the smtp_server fixture
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(REPO),
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    for command in (["db", "migrate"], ["dags", "test", "brief_delivery_probe"]):
        done = subprocess.run(
            [airflow, *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    [envelope] = smtp_server.envelopes
    assert envelope.rcpt_tos == ["support-leads@example.com", "pm-refunds@example.com"]
    assert (out / "brief.eml").is_file()


def test_owner_is_notified_when_a_dag_run_fails(smtp_server: Recorder) -> None:
    from ab_pipeline.orchestration.dag_factory import build_dags
    from ab_pipeline.report.notify import OwnerFailureNotifier

    dags = build_dags(REPO / "dags" / "experiments")
    dag = (
        dags["ab_refund-query-rewrite"]
        if "ab_refund-query-rewrite" in dags
        else next(d for d in dags.values() if d.dag_id.startswith("ab_refund"))
    )
    callbacks = dag.on_failure_callback
    [notifier] = callbacks if isinstance(callbacks, list) else [callbacks]
    assert isinstance(notifier, OwnerFailureNotifier)

    hostile = OwnerFailureNotifier("exp-1", "owner@example.com", "<script>alert(1)</script>")
    hostile({"run_id": "scheduled__2026-05-31", "reason": "task_failure", "dag": dag})
    [envelope] = smtp_server.envelopes
    assert envelope.rcpt_tos == ["owner@example.com"]
    received = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert received["Subject"] == "[ab-pipeline] exp-1: DAG run FAILED (scheduled__2026-05-31)"
    body = parts(received)
    assert "task_failure" in body["text/plain"] and dag.dag_id in body["text/plain"]
    assert "<script" not in body["text/html"] and "&lt;script&gt;" in body["text/html"]


def test_failure_notifier_without_smtp_only_logs(
    monkeypatch: pytest.MonkeyPatch, smtp_server: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    """smtp_default points at a live server: a notifier whose own connection is missing logs
    and sends nothing, rather than falling back to another connection."""
    from ab_pipeline.report.notify import OwnerFailureNotifier

    monkeypatch.delenv("AIRFLOW_CONN_AB_PIPELINE_TEST_NOWHERE", raising=False)
    notifier = OwnerFailureNotifier("exp-1", "o@example.com", "t", "ab_pipeline_test_nowhere")
    notifier({"run_id": "scheduled__2026-05-31"})

    assert smtp_server.envelopes == []
    # The notifier logs through Airflow's task SDK (structlog, rendered to stdout), not through
    # the stdlib logging that caplog captures.
    lines = [line for line in capsys.readouterr().out.splitlines() if "not emailed" in line]
    assert len(lines) == 1, lines
    assert "warning" in lines[0]
    assert "run failure of exp-1 not emailed (no SMTP connection)" in lines[0]
