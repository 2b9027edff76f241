"""A BigQuery emulator (bqemulator: BigQuery's REST API over DuckDB) as a separate process.

The emulator pins sqlglot and DuckDB versions the project's lock cannot share, so it lives in
its own venv, `.venv-bq` (`make bq-emulator`, from requirements-bq-emulator.lock), and runs
as a server on loopback ports; the pipeline reaches it with google-cloud-bigquery's client,
as it would reach BigQuery (`?api_endpoint=http://127.0.0.1:PORT`). DuckDB loads the
emulator's spatial extension from `$HOME/.duckdb`: the server runs with HOME=.venv-bq/home,
where `make bq-emulator` linked the extension shipped by a PyPI package.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-bq"
PROJECT = "ab-test"
DATASET = "ab"


def url_for(port: int, dataset: str | None = None) -> str:
    """The pipeline's warehouse URL of an emulator on a loopback port (no default dataset
    unless `dataset`)."""
    path = f"/{dataset}" if dataset else ""
    return f"bigquery://{PROJECT}{path}?api_endpoint=http://127.0.0.1:{port}"


@contextmanager
def serving_bigquery(folder: Path) -> Iterator[str]:
    """An emulator (state in memory) with an empty dataset `ab`; yields its warehouse URL,
    which names no default dataset (see docs/engines.md: the emulator cannot create a
    temporary table in a job that has one)."""
    from tests.local_services import free_port, stop_server

    program = VENV / "bin" / "bqemulator"
    if not program.exists():
        raise RuntimeError(f"{program} is missing: run `make bq-emulator`")
    folder.mkdir(parents=True, exist_ok=True)
    port, grpc_port = free_port(), free_port()
    log = (folder / "server.log").open("wb")
    command = [str(program), "start", "--rest-port", str(port), "--grpc-port", str(grpc_port)]
    command += ["--project", PROJECT, "--ephemeral", "--log-level", "warning"]
    env = {**os.environ, "HOME": str(VENV / "home")}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_for(process, port, folder)
        url = url_for(port)
        _create_dataset(url_for(port, DATASET))
        yield url
    finally:
        stop_server(process, log)


def _wait_for(process: subprocess.Popen[bytes], port: int, folder: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"bqemulator exited with {process.returncode}: see {folder}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"bqemulator did not listen on port {port} in 90 s") from None
            time.sleep(0.3)


def _create_dataset(url: str) -> None:
    from ab_pipeline.warehouse.bigquery_client import bigquery_client

    bigquery_client(url).create_dataset(f"{PROJECT}.{DATASET}", exists_ok=True)
