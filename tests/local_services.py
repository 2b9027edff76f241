"""Real local servers for tests: free loopback ports and an SMTP server that keeps what arrives."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller


def stop_server(process: subprocess.Popen[bytes], log: Any) -> None:
    """End a test server process (terminate, kill after 20 s) and close its log file."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Inbox:
    """aiosmtpd handler that keeps every message with its envelope recipients."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [str(message["Subject"]) for _, message in self.messages]


def smtp_connection(port: int, **extra: Any) -> dict[str, Any]:
    """An Airflow SMTP connection (JSON form) for plain SMTP on loopback: no SSL, no STARTTLS."""
    return {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 10, **extra},
    }


@contextmanager
def serving_smtp(handler: Any) -> Iterator[Controller]:
    """Run an aiosmtpd server for `handler` on a free loopback port until the block ends."""
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()
