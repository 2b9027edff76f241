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
from datetime import date, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.local_services import Inbox, serving_smtp, smtp_connection

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "dags" / "experiments"
SIMULATIONS = REPO / "simulations"
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


@dataclass(frozen=True)
class Primary:
    """A sample experiment's primary proportion, as its YAML config defines it."""

    event: str
    window: str
    start: str
    end: str
    unless: tuple[str, str] | None = None


PRIMARY = {
    "refund-query-rewrite": Primary(
        "marked_solved", "1 day", "2026-05-04", "2026-05-31", ("ticket_opened", "10 minutes")
    ),
    "delivery-estimate": Primary("order_completed", "3 days", "2026-04-06", "2026-04-26"),
    "onboarding-checklist": Primary("activated", "7 days", "2026-03-02", "2026-03-29"),
}


PRIMARY_METRIC = {
    "refund-query-rewrite": "resolution_rate",
    "delivery-estimate": "order_completion",
    "onboarding-checklist": "activation_7d",
}


def counted_in_the_warehouse(world: World, key: str, run_date: str) -> dict[str, dict[str, int]]:
    """Per arm: enrolled units, units whose primary window has elapsed, and converters,
    counted straight from the simulated DuckDB file with SQL written here (not the product's).

    Enrolment: first exposure in [start, end] up to the run date, internal and bot units out,
    the arm of the first exposure. A converter has the event in [first exposure, + window); a
    spoiling `unless` event within its delay after it cancels that event.
    """
    import duckdb

    rule = PRIMARY[key]
    run_end = (date.fromisoformat(run_date) + timedelta(days=1)).isoformat()
    end = (date.fromisoformat(rule.end) + timedelta(days=1)).isoformat()
    unspoiled = ""
    if rule.unless:
        unspoiled = f"""AND NOT EXISTS (
            SELECT 1 FROM events t WHERE t.unit_id = s.unit_id AND t.event_name = '{rule.unless[0]}'
              AND t.occurred_at BETWEEN s.occurred_at
                                    AND s.occurred_at + INTERVAL '{rule.unless[1]}'
              AND t.occurred_at < TIMESTAMP '{run_end}')"""
    sql = f"""
    WITH mine AS (
      SELECT * FROM exposures WHERE experiment_key = '{key}'
        AND exposed_at >= TIMESTAMP '{rule.start}' AND exposed_at < TIMESTAMP '{end}'
        AND exposed_at < TIMESTAMP '{run_end}'),
    kept AS (
      SELECT unit_id, MIN(exposed_at) AS first_at FROM mine GROUP BY unit_id
      HAVING NOT COALESCE(bool_or(is_internal), FALSE) AND NOT COALESCE(bool_or(is_bot), FALSE)),
    enrolled AS (
      SELECT k.unit_id, k.first_at, MIN(m.arm) AS arm,
             k.first_at + INTERVAL '{rule.window}' <= TIMESTAMP '{run_end}' AS complete
      FROM kept k JOIN mine m ON m.unit_id = k.unit_id AND m.exposed_at = k.first_at
      GROUP BY k.unit_id, k.first_at),
    converted AS (
      SELECT DISTINCT e.unit_id FROM enrolled e JOIN events s ON s.unit_id = e.unit_id
      WHERE s.event_name = '{rule.event}' AND s.occurred_at >= e.first_at
        AND s.occurred_at < e.first_at + INTERVAL '{rule.window}' {unspoiled})
    SELECT arm, COUNT(*) AS enrolled, COUNT(*) FILTER (WHERE complete) AS units,
           COUNT(c.unit_id) FILTER (WHERE complete) AS successes
    FROM enrolled LEFT JOIN converted c USING (unit_id) GROUP BY arm"""
    path = world.warehouse.removeprefix("duckdb:///")
    with duckdb.connect(path, read_only=True) as connection:
        rows = connection.execute(sql).fetchall()
    return {arm: {"enrolled": n, "units": u, "successes": s} for arm, n, u, s in rows}


def assert_matches_statsmodels(comparison: dict[str, Any], counts: dict[str, Any]) -> None:
    """The primary comparison equals statsmodels' two-proportion z-test and Wald interval
    computed here from the independently counted successes."""
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

    c, t = counts["control"], counts["treatment"]
    _, p_value = proportions_ztest([t["successes"], c["successes"]], [t["units"], c["units"]])
    low, high = confint_proportions_2indep(
        t["successes"], t["units"], c["successes"], c["units"], method="wald", compare="diff"
    )
    lift = t["successes"] / t["units"] - c["successes"] / c["units"]
    assert comparison["absolute"] == pytest.approx(lift, rel=1e-9)
    assert comparison["p_value"] == pytest.approx(p_value, rel=1e-6, abs=1e-300)
    assert comparison["ci"] == pytest.approx([low, high], rel=1e-9)


def true_lift(key: str) -> float:
    """The simulated truth: treatment rate minus control rate in the scenario."""
    scenario = yaml.safe_load((SIMULATIONS / f"{key}.yaml").read_text())
    rate = scenario["metrics"][PRIMARY_METRIC[key]]["rate"]
    return float(rate["treatment"] - rate["control"])


def counts_phrases(counts: dict[str, dict[str, int]]) -> list[str]:
    """How the brief states the primary's counts: treatment first, then control."""
    t, c = counts["treatment"], counts["control"]
    return [f"{t['successes']:,} of {t['units']:,}", f"vs {c['successes']:,} of {c['units']:,}"]


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
    end = PRIMARY[key].end
    done = world.run(config, end)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{key} {end}: {decision} (final); DAG run success" in done.stdout
    results = world.results(key, end)
    assert results["decision"] == decision and results["status"] == "final"
    assert results["hypothesis"]["metric"] == PRIMARY_METRIC[key]
    assert all(gate is None or gate["passed"] for gate in results["gates"].values())

    counted = counted_in_the_warehouse(world, key, end)
    assert results["gates"]["srm"]["counts"] == {a: v["enrolled"] for a, v in counted.items()}
    primary = results["metrics"][PRIMARY_METRIC[key]]
    for arm, want in counted.items():
        assert want["units"] == want["enrolled"], arm  # every window has elapsed by `end`
        got = primary["arms"][arm]
        assert (got["units"], got["successes"]) == (want["units"], want["successes"]), arm
    comparison = primary["comparisons"]["treatment"]
    assert_matches_statsmodels(comparison, counted)
    assert comparison["ci"][0] < true_lift(key) < comparison["ci"][1]

    brief = (world.out / key / end / "brief.html").read_text()
    recipients, message = email_for(world, key, decision)
    assert sorted(recipients) == sorted(results["recipients"])
    for phrase in counts_phrases(counted):
        assert phrase in brief and phrase in html_part(message), phrase


def test_broken_assignment_gives_a_rerun_brief_an_email_and_a_failed_dag_run(world: World) -> None:
    done = world.run(EXPERIMENTS / "search-ranking-v2.yaml", "2026-06-14")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "search-ranking-v2 2026-06-14: RERUN (final); DAG run failed" in done.stdout
    results = world.results("search-ranking-v2", "2026-06-14")
    srm = results["gates"]["srm"]
    # The scenario's known truth: the caching bug delivers exactly these counts.
    truth = yaml.safe_load((SIMULATIONS / "search-ranking-v2.yaml").read_text())["counts"]
    assert not srm["passed"] and srm["counts"] == truth == {"control": 3050, "treatment": 3738}
    from scipy.stats import chisquare

    expected = chisquare([3050, 3738], [6788 / 2, 6788 / 2])
    assert srm["p_value"] == pytest.approx(expected.pvalue, rel=1e-9) and srm["p_value"] < 0.001
    assert results["metrics"] == {} and results["gate_failures"] == ["srm"]
    brief = (world.out / "search-ranking-v2" / "2026-06-14" / "brief.html").read_text()
    assert "RERUN" in brief and "3,050" in brief and "3,738" in brief
    _, message = email_for(world, "search-ranking-v2", "RERUN")
    assert "3,738" in html_part(message)


def test_interim_readout_continues(world: World) -> None:
    key, day = "refund-query-rewrite", "2026-05-15"
    done = world.run(EXPERIMENTS / f"{key}.yaml", day)
    assert done.returncode == 0, done.stderr[-3000:]
    results = world.results(key, day)
    assert results["decision"] == "CONTINUE" and results["status"] == "interim"
    counted = counted_in_the_warehouse(world, key, day)
    final = counted_in_the_warehouse(world, key, PRIMARY[key].end)
    srm = results["gates"]["srm"]["counts"]
    assert srm == {arm: v["enrolled"] for arm, v in counted.items()}
    assert 0 < sum(srm.values()) < sum(v["enrolled"] for v in final.values())
    # Units enrolled on the run date itself have not had their day yet: not counted as failures.
    primary = results["metrics"]["resolution_rate"]
    for arm, want in counted.items():
        assert 0 < want["units"] < want["enrolled"], arm
        got = primary["arms"][arm]
        assert (got["units"], got["successes"]) == (want["units"], want["successes"]), arm
    assert_matches_statsmodels(primary["comparisons"]["treatment"], counted)
    assert "interim" in (world.out / key / day / "brief.txt").read_text().lower()


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
