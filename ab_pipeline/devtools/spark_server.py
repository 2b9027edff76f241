"""A local Spark Connect server for tests, benchmarks and demos (`sc://127.0.0.1:<port>`).

The pyspark wheel ships a whole Spark: `sbin/start-connect-server.sh` starts the Spark
Connect server as a daemon (spark-daemon.sh), which `sbin/stop-connect-server.sh` stops by the
pid file in `SPARK_PID_DIR`. Every server here gets a folder of its own (pid file, logs, the
tables' files under `spark-warehouse/`, Spark's scratch space), so several can run side by side
and stopping one never touches another. Small on purpose: `local[2]` and a 1 GB driver.

    with SparkConnectServer(folder) as server:
        Warehouse(server.url)...

pyspark is imported inside functions only (it costs about a second and starts nothing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

STARTUP_TIMEOUT_S = 180.0  # about 30 s on two shared cores; more when the machine is busy
JAVA_HOMES = ("/usr/lib/jvm/java-17-openjdk-amd64", "/usr/lib/jvm/default-java")


def spark_home() -> Path:
    """The Spark the pyspark wheel ships (its jars, bin/ and sbin/)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SparkConnectServer:
    """One Spark Connect server in `folder`, listening on 127.0.0.1:`port`."""

    def __init__(self, folder: Path, port: int | None = None, driver_memory: str = "1g") -> None:
        self.folder = Path(folder).resolve()
        self.port = port or free_port()
        self.driver_memory = driver_memory
        self.started_in_s: float | None = None

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SPARK_HOME=str(spark_home()),
            SPARK_LOG_DIR=str(self.folder / "logs"),
            SPARK_PID_DIR=str(self.folder / "pids"),
            SPARK_CONF_DIR=str(self.folder / "conf"),
            SPARK_IDENT_STRING=f"ab{self.port}",
            SPARK_LOCAL_IP="127.0.0.1",
        )
        if not env.get("JAVA_HOME") and not shutil.which("java"):
            env["JAVA_HOME"] = next((h for h in JAVA_HOMES if Path(h).is_dir()), "")
        return env

    def start(self) -> SparkConnectServer:
        """Start the daemon and wait until a session answers a query (RuntimeError with the
        server log's tail when it does not within STARTUP_TIMEOUT_S)."""
        for sub in ("logs", "pids", "conf", "local", "warehouse"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        settings = {
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.sql.session.timeZone": "UTC",
            "spark.driver.memory": self.driver_memory,
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.local.dir": str(self.folder / "local"),
            "spark.sql.warehouse.dir": str(self.folder / "warehouse"),
            "spark.ui.enabled": "false",
            # Two cores: a few shuffle partitions instead of 200 near-empty tasks per join.
            "spark.sql.shuffle.partitions": "4",
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={self.folder / 'local'}",
        }
        command = [str(spark_home() / "sbin" / "start-connect-server.sh"), "--master", "local[2]"]
        for key, value in settings.items():
            command += ["--conf", f"{key}={value}"]
        began = time.monotonic()
        subprocess.run(
            command,
            env=self._environment(),
            cwd=self.folder,
            check=True,
            capture_output=True,
            timeout=120,
        )
        self._wait_until_answering(began)
        self.started_in_s = time.monotonic() - began
        return self

    def _wait_until_answering(self, began: float) -> None:
        from pyspark.sql import SparkSession

        last_error: Exception | None = None
        while time.monotonic() - began < STARTUP_TIMEOUT_S:
            if not self._port_open():
                time.sleep(1.0)
                continue
            session = None
            try:
                session = SparkSession.builder.remote(self.url).create()
                session.sql("SELECT 1").collect()
                return
            except Exception as error:  # still starting: the port opens before sessions work
                last_error = error
                time.sleep(1.0)
            finally:
                # An open client's exit hook calls the server; once the server is stopped, it
                # retries for minutes and holds up the process's exit.
                if session is not None:
                    with contextlib.suppress(Exception):
                        session.stop()
        self.stop()
        raise RuntimeError(
            f"Spark Connect server at {self.url} did not answer within {STARTUP_TIMEOUT_S:.0f} s "
            f"(last error: {last_error}); log tail:\n{self.log_tail()}"
        )

    def _port_open(self) -> bool:
        with socket.socket() as probe:
            probe.settimeout(1.0)
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def log_tail(self, lines: int = 40) -> str:
        logs = sorted((self.folder / "logs").glob("*.out"))
        if not logs:
            return "(no log)"
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the daemon (by its own pid file) and forget this process's sessions to it."""
        from ab_pipeline.warehouse.dialects.spark import close_sessions

        close_sessions(self.url)
        subprocess.run(
            [str(spark_home() / "sbin" / "stop-connect-server.sh")],
            env=self._environment(),
            cwd=self.folder,
            check=False,
            capture_output=True,
            timeout=120,
        )

    def __enter__(self) -> SparkConnectServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()
