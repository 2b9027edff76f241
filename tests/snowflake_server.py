"""A fakesnow server (Snowflake's HTTP API over DuckDB) as a separate process, for tests.

Airflow tasks and `ab-pipeline` commands run in other processes than the test, so fakesnow's
in-process patching cannot reach them: the server answers the real Snowflake connector over
HTTP on a loopback port. Its databases are DuckDB files in a folder of the test's
(`FakeSnow(db_path=...)`, one `<DATABASE>.db` per database), so what one client wrote every
other client, and anyone opening the files after the server stopped, sees.

Run as a script: `python tests/snowflake_server.py PORT FOLDER`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What the connector needs to reach the local server; user and password are not checked.
DATABASE = "AB_TEST"
SCHEMA = "PUBLIC"


def url_for(port: int, database: str = DATABASE, schema: str = SCHEMA) -> str:
    """The pipeline's warehouse URL of a fakesnow server on a loopback port."""
    return (
        f"snowflake://fake:snow@fakesnow/{database}/{schema}"
        f"?host=127.0.0.1&port={port}&protocol=http&network_timeout=30"
    )


@contextmanager
def serving_fakesnow(folder: Path, port: int | None = None) -> Iterator[str]:
    """A fakesnow server storing its databases in `folder`; yields its warehouse URL."""
    import socket

    from tests.local_services import free_port, stop_server

    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, __file__, str(port), str(folder)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"fakesnow exited with {process.returncode}: see {folder / 'server.log'}"
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"fakesnow did not listen on 127.0.0.1:{port} within 60 s"
                    ) from None
                time.sleep(0.2)
        yield url_for(port)
    finally:
        stop_server(process, log)


def _serve(port: int, folder: str) -> None:
    import fakesnow.server
    import uvicorn
    from fakesnow.instance import FakeSnow

    # Every session shares this instance: databases are files in `folder`, not in memory.
    fakesnow.server.shared_fs = FakeSnow(db_path=folder)
    uvicorn.run(fakesnow.server.app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2])
