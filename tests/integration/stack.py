"""A real Airflow deployment in processes: the same topology as docker-compose.yaml.

PostgreSQL metadata database (throwaway), CeleryExecutor with Redis as broker, and Airflow's own
components: api-server, scheduler, dag-processor, triggerer, one `airflow celery worker`.
Every process is started in its own process group and killed (group-wide) on exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.local_services import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
# The worker's name, unique per run: Celery refuses to start a second worker with a name
# already running on this machine (another checkout's test, say). Its tasks report it.
WORKER_NAME_ENV = "AB_TEST_CELERY_WORKER_NAME"
# The compose services that this stack mirrors (tests/test_compose.py checks the file).
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer", "worker")


def wait_for(what: str, check: Callable[[], bool], timeout: float, step: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    api_port: int
    metadata_url: str
    worker_name: str = field(default_factory=lambda: f"ab-celery-worker-{uuid.uuid4().hex[:8]}")
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.log(name).parent.mkdir(parents=True, exist_ok=True)
        out = self.log(name).open("wb")
        self.processes[name] = subprocess.Popen(
            [AIRFLOW, *args],
            env={**self.env, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() kills its children too
            cwd=self.root,
        )

    def airflow(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    def assert_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        if dead:
            tails = {n: self.log(n).read_text(errors="replace")[-1500:] for n in dead}
            raise RuntimeError(f"components exited: {dead}\n{json.dumps(tails, indent=1)}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            # Grandchildren that outlived their parent (celery pool, api-server workers, ...).
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(self.metadata_url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                return [dict(r._mapping) for r in connection.execute(text(sql), params or {})]
        finally:
            engine.dispose()


def stack_environment(
    root: Path, metadata_db: str, broker_db: int, api_port: int, extra: dict[str, str]
) -> dict[str, str]:
    """Configuration by environment only, as in docker-compose.yaml."""
    server = "postgresql+psycopg2://postgres@127.0.0.1:5432"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{server}/{metadata_db}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{broker_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://postgres@127.0.0.1:5432/{metadata_db}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AB_PIPELINE_BRIEFS_DIR": str(root / "briefs"),
        "PYTHONPATH": str(REPO),
        **extra,
    }
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    return env


def prepare_dags(root: Path, configs: list[Path]) -> None:
    """A dags folder like the deployed one: the DAG file and the chosen experiment configs."""
    folder = root / "dags" / "experiments"
    folder.mkdir(parents=True)
    (root / "dags" / "ab_experiments.py").write_text(
        (REPO / "dags" / "ab_experiments.py").read_text()
    )
    for config in configs:
        (folder / config.name).write_text(config.read_text())


@contextmanager
def running_stack(
    root: Path, metadata_db: str, extra_env: dict[str, str], configs: list[Path]
) -> Iterator[Stack]:
    api_port = free_port()
    broker_db = 8 + uuid.uuid4().int % 8  # a Redis database of its own, flushed afterwards
    env = stack_environment(root, metadata_db, broker_db, api_port, extra_env)
    prepare_dags(root, configs)
    stack = Stack(root, env, api_port, env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        stack.airflow("db", "migrate", timeout=300)
        stack.start("api-server", "api-server", "--port", str(api_port))
        stack.start("scheduler", "scheduler")
        stack.start("dag-processor", "dag-processor")
        stack.start("triggerer", "triggerer")
        # The worker names itself: task instances record this hostname (proof they ran there).
        stack.start(
            "worker",
            "celery",
            "worker",
            "--celery-hostname",
            stack.worker_name,
            "--concurrency",
            "2",
            "--without-gossip",
            "--without-mingle",
            env={
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.integration.stack.worker_hostname",
                WORKER_NAME_ENV: stack.worker_name,
            },
        )
        yield stack
    finally:
        stack.stop()
        _flush_redis(broker_db)


def worker_hostname() -> str:
    """The hostname callable the worker's tasks report (AIRFLOW__CORE__HOSTNAME_CALLABLE)."""
    return os.environ[WORKER_NAME_ENV]


def _flush_redis(db: int) -> None:
    import redis

    with suppress(redis.RedisError):
        redis.Redis(host="127.0.0.1", port=6379, db=db).flushdb()
