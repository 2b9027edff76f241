"""The product end to end: simulated warehouse -> `ab-pipeline run` (the real DAG through
`dag.test()`, SQLite metadata) -> results.json, brief and an email at a real SMTP server.

Every run is a separate `ab-pipeline` process, as a user or CI would start it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.local_services import Inbox, serving_smtp, smtp_connection

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "dags" / "experiments"
CLI = str(Path(sys.executable).with_name("ab-pipeline"))

pytestmark = pytest.mark.slow


@dataclass
class World:
    root: Path
    warehouse: str
    out: Path
    env: dict[str, str]
    inbox: Inbox

    def run(
        self, config: Path, run_date: str, warehouse: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                CLI,
                "run",
                str(config),
                "--date",
                run_date,
                "--warehouse",
                warehouse or self.warehouse,
                "--out",
                str(self.out),
            ],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
        )

    def results(self, key: str, run_date: str) -> dict[str, Any]:
        return dict(json.loads((self.out / key / run_date / "results.json").read_text()))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("e2e")
    warehouse = f"duckdb:///{root / 'warehouse.duckdb'}"
    inbox = Inbox()
    with serving_smtp(inbox) as controller:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(root / "airflow"),
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp_connection(controller.port)),
            "AB_PIPELINE_SENDER": "readouts@example.com",
        }
        subprocess.run(
            [CLI, "simulate", "--warehouse", warehouse],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        yield World(root, warehouse, root / "briefs", env, inbox)


def email_for(world: World, key: str, decision: str) -> tuple[list[str], Message]:
    found = [(to, m) for to, m in world.inbox.messages if f"{key}: {decision}" in str(m["Subject"])]
    assert found, f"no email for {key} {decision}; got {world.inbox.subjects()}"
    return found[-1]


def html_part(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/html":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode(part.get_content_charset() or "utf-8")
    raise AssertionError("no text/html part")


def primary_counts_sentence(results: dict[str, Any]) -> str:
    """The plain-language counts the brief must contain, from results.json's own numbers."""
    arms = results["metrics"][results["hypothesis"]["metric"]]["arms"]
    treated = arms["treatment"]
    return f"{treated['successes']:,} of {treated['units']:,}"


@pytest.mark.parametrize(
    "key,decision",
    [
        ("refund-query-rewrite", "SHIP"),
        ("delivery-estimate", "SHIP"),
        ("onboarding-checklist", "SHIP"),
    ],
)
def test_sample_experiment_final_readout(world: World, key: str, decision: str) -> None:
    config = EXPERIMENTS / f"{key}.yaml"
    end = {
        "refund-query-rewrite": "2026-05-31",
        "delivery-estimate": "2026-04-26",
        "onboarding-checklist": "2026-03-29",
    }[key]
    done = world.run(config, end)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{key} {end}: {decision} (final); DAG run success" in done.stdout
    results = world.results(key, end)
    assert results["decision"] == decision and results["status"] == "final"
    assert all(gate is None or gate["passed"] for gate in results["gates"].values())
    primary = results["metrics"][results["hypothesis"]["metric"]]
    srm_counts = results["gates"]["srm"]["counts"]
    assert {arm: v["units"] for arm, v in primary["arms"].items()} == srm_counts
    comparison = primary["comparisons"]["treatment"]
    assert comparison["ci"][0] > 0 and comparison["p_value"] < 0.05
    brief = (world.out / key / end / "brief.html").read_text()
    assert decision in brief and primary_counts_sentence(results) in brief
    recipients, message = email_for(world, key, decision)
    assert sorted(recipients) == sorted(results["recipients"])
    assert primary_counts_sentence(results) in html_part(message)


def test_broken_assignment_gives_a_rerun_brief_an_email_and_a_failed_dag_run(world: World) -> None:
    done = world.run(EXPERIMENTS / "search-ranking-v2.yaml", "2026-06-14")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "search-ranking-v2 2026-06-14: RERUN (final); DAG run failed" in done.stdout
    results = world.results("search-ranking-v2", "2026-06-14")
    srm = results["gates"]["srm"]
    assert not srm["passed"] and srm["counts"] == {"control": 3050, "treatment": 3738}
    assert srm["p_value"] < 0.001
    assert results["metrics"] == {} and results["gate_failures"] == ["srm"]
    brief = (world.out / "search-ranking-v2" / "2026-06-14" / "brief.html").read_text()
    assert "RERUN" in brief and "3,050" in brief and "3,738" in brief
    _, message = email_for(world, "search-ranking-v2", "RERUN")
    assert "3,738" in html_part(message)


def test_interim_readout_continues(world: World) -> None:
    done = world.run(EXPERIMENTS / "refund-query-rewrite.yaml", "2026-05-15")
    assert done.returncode == 0, done.stderr[-3000:]
    results = world.results("refund-query-rewrite", "2026-05-15")
    assert results["decision"] == "CONTINUE" and results["status"] == "interim"
    srm_total = sum(results["gates"]["srm"]["counts"].values())
    final_total = (
        sum(world.results("refund-query-rewrite", "2026-05-31")["gates"]["srm"]["counts"].values())
        if (world.out / "refund-query-rewrite" / "2026-05-31").exists()
        else None
    )
    assert srm_total > 0 and (final_total is None or srm_total < final_total)
    assert (
        "interim"
        in (world.out / "refund-query-rewrite" / "2026-05-15" / "brief.txt").read_text().lower()
    )


def test_a_broken_pipeline_exits_non_zero_without_a_brief(world: World) -> None:
    empty = f"duckdb:///{world.root / 'empty.duckdb'}"
    done = world.run(EXPERIMENTS / "delivery-estimate.yaml", "2026-04-20", warehouse=empty)
    assert done.returncode == 1
    assert "pipeline broke" in done.stderr
    assert not (world.out / "delivery-estimate" / "2026-04-20" / "results.json").exists()


def test_an_invalid_config_is_refused_before_anything_runs(world: World, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (EXPERIMENTS / "delivery-estimate.yaml")
        .read_text()
        .replace("window: 3d", "window: 3 days", 1)
    )
    done = world.run(bad, "2026-04-26")
    assert done.returncode == 2
    assert "metrics.order_completion.window" in done.stderr
