"""docker-compose.yaml checked statically (no Docker engine here): it parses, has every service
the README names, sets every setting the code reads, and mirrors the integration test's stack."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ab_pipeline.core.config import load_config
from tests.integration.stack import COMPONENTS, stack_environment

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yaml"
INFRA = {"postgres", "warehouse", "redis", "mailpit", "airflow-init"}
AIRFLOW_COMPONENTS = set(COMPONENTS)


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def env_of(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in (services()[service].get("environment") or {}).items()}


def test_it_parses_and_has_the_whole_topology() -> None:
    assert set(services()) >= INFRA | AIRFLOW_COMPONENTS
    commands = {name: " ".join(services()[name]["command"]) for name in AIRFLOW_COMPONENTS}
    assert commands["scheduler"] == "airflow scheduler"
    assert commands["dag-processor"] == "airflow dag-processor"
    assert commands["triggerer"] == "airflow triggerer"
    assert commands["worker"].startswith("airflow celery worker")
    assert commands["api-server"].startswith("airflow api-server")
    assert "db migrate" in " ".join(services()["airflow-init"]["command"])


def test_every_service_the_readme_names_exists() -> None:
    deploy = (REPO / "README.md").read_text().split("## Deploy", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z][a-z-]+)`", deploy)) & (set(services()) | _candidates())
    assert named, "the README's Deploy section names no services"
    assert named <= set(services()), named - set(services())


def _candidates() -> set[str]:
    return {"webserver", "flower", "airflow-worker", "airflow-scheduler", "celery-worker"}


def test_every_service_has_a_health_check_or_runs_once() -> None:
    for name, service in services().items():
        assert "healthcheck" in service or name == "airflow-init", name


def test_the_airflow_services_share_the_image_and_the_mounts() -> None:
    for name in AIRFLOW_COMPONENTS | {"airflow-init"}:
        service = services()[name]
        assert service["build"] == "." and service["image"] == "ab-pipeline:local", name
        mounts = {m.split(":")[1] for m in service["volumes"]}
        for folder in ("dags", "plugins", "expectations", "templates"):
            assert f"/opt/ab-pipeline/{folder}" in mounts, (name, folder)


def test_the_environment_the_code_reads_is_set() -> None:
    env = env_of("scheduler")
    read = set()
    for path in (REPO / "ab_pipeline").rglob("*.py"):
        read |= set(re.findall(r"\"(AB_PIPELINE_[A-Z_]+)\"", path.read_text()))
    assert read and read <= set(env), read - set(env)
    for config in (REPO / "dags" / "experiments").glob("*.yaml"):
        assert f"AIRFLOW_CONN_{load_config(config).source.conn_id.upper()}" in env
    assert "AIRFLOW_CONN_SMTP_DEFAULT" in env
    for worker_side in AIRFLOW_COMPONENTS:
        assert env_of(worker_side) == env, worker_side


def test_same_airflow_settings_as_the_integration_stack(tmp_path: Path) -> None:
    """What the integration test configures, compose configures too (values differ by host)."""
    tested = stack_environment(tmp_path, "meta", 9, 8080, {})
    airflow_keys = {k for k in tested if k.startswith("AIRFLOW__")}
    # Host-only settings: free ports for log servers, faster polling for a short test.
    host_only = {
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL",
        "AIRFLOW__API__PORT",
        "AIRFLOW__API__HOST",
    }
    missing = airflow_keys - host_only - set(env_of("scheduler"))
    assert not missing, missing
    env = env_of("scheduler")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert tested["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")


def test_no_secret_is_written_into_the_file() -> None:
    """Passwords are `${VAR:-local default}` references, set in .env for a real deployment."""
    env = env_of("scheduler")
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_CONN_AB_WAREHOUSE"):
        assert re.search(r"://\w+:\$\{[A-Z_]+:-[^}]*\}@", env[key]), key
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${")


def test_the_image_installs_the_same_lock() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY requirements.lock" in dockerfile
    assert re.search(r"pip install --requirement requirements.lock", dockerfile)
    assert "FROM python:3.11" in dockerfile  # pyproject: requires-python ~3.11
