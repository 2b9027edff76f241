"""Spec linter: each checklist warning fires on a config made for it, and not on the samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import load_config, parse_config
from ab_pipeline.devtools.lint import lint_config
from ab_pipeline.devtools.simulate import load_scenario, simulate
from ab_pipeline.orchestration.cli import main
from ab_pipeline.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "dags" / "experiments").glob("*.yaml"))
REFUND = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"


def refund(**changes: Any) -> dict[str, Any]:
    data = dict(yaml.safe_load(REFUND.read_text()))
    data.update(changes)
    return data


def fields(data: dict[str, Any], warehouse: Warehouse | None = None) -> list[str]:
    return [w.field for w in lint_config(parse_config(data), warehouse)]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_the_samples_lint_clean(path: Path) -> None:
    assert lint_config(load_config(path)) == []


def test_a_hypothesis_without_mechanism() -> None:
    data = refund()
    del data["hypothesis"]["mechanism"]
    assert fields(data) == ["hypothesis.mechanism"]


def test_a_run_of_partial_weeks() -> None:
    [warning] = lint_config(parse_config(refund(end="2026-05-27")))
    assert warning.field == "end" and "24 days" in warning.reason and "28 days" in warning.reason


def test_no_risk_named() -> None:
    assert fields(refund(risks=[])) == ["risks"]


@pytest.mark.parametrize(
    ("risk", "topic"),
    [
        ("answers get slower (latency)", "latency"),
        ("more escalations to human agents", "escalation"),
        ("customers open more support tickets", "support"),
        ("refund revenue leaks", "revenue"),
    ],
)
def test_a_risk_topic_without_a_guardrail(risk: str, topic: str) -> None:
    data = refund(risks=[risk], guardrails={"grounding_failure_rate": {"max_increase": 0.005}})
    [warning] = lint_config(parse_config(data))
    assert warning.field == "guardrails" and f"({topic})" in warning.reason


def test_a_guardrail_covers_its_topic_by_name_event_or_description() -> None:
    # p95_latency_ms covers latency; escalation_rate covers escalation (sample guardrails).
    assert fields(refund(risks=["higher latency", "more escalations"])) == []
    metrics = refund()["metrics"]
    metrics["grounding_failure_rate"]["description"] = "answers that lead to a support ticket"
    assert fields(refund(metrics=metrics, risks=["more support tickets"])) == []


def test_a_stated_rate_that_cannot_reach_the_plan() -> None:
    plan = {**refund()["plan"], "expected_units_per_day": 400}
    [warning] = lint_config(parse_config(refund(plan=plan)))
    assert warning.field == "plan" and "9,336" in warning.reason and "5,600" in warning.reason
    plan["expected_units_per_day"] = 700  # 700 * 28 * 0.5 = 9,800 >= 9,336
    assert fields(refund(plan=plan)) == []


def test_an_observed_rate_from_the_warehouse(duckdb_warehouse: Warehouse) -> None:
    config = load_config(REFUND)
    # 4,000 customers over the run cannot reach the plan's 9,336 per arm.
    scenario = load_scenario(REPO / "simulations" / "refund-query-rewrite.yaml").with_units(4000)
    simulate(config, scenario, duckdb_warehouse.url)
    [warning] = lint_config(config, duckdb_warehouse)
    assert warning.field == "plan" and "observed over 28 days" in warning.reason
    assert lint_config(config, Warehouse(f"{duckdb_warehouse.url}.empty")) == []


def test_cli_warns_and_strict_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "refund.yaml"
    path.write_text(yaml.safe_dump(refund(risks=[])))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: risks: warning: no risk is named" in out and "ok (" in out
    assert main(["validate", "--strict", str(path)]) == 2
    assert f"{path}: risks: error: no risk is named" in capsys.readouterr().out
    assert main(["validate", "--strict", *map(str, SAMPLES)]) == 0


def misspelt_refund() -> dict[str, Any]:
    data = refund()
    data["metrics"]["p95_latency_ms"]["event"] = "answer_servd"
    data["metrics"]["resolution_rate"]["unless"]["event"] = "ticket_open"
    data["receipt"] = ["index", "generatr", "decoder"]
    return data


@pytest.fixture(params=["duckdb", "postgres"])
def simulated_warehouse(request: pytest.FixtureRequest) -> tuple[Warehouse, str]:
    if request.param == "duckdb":
        warehouse, schema = request.getfixturevalue("duckdb_warehouse"), ""
    else:
        warehouse, schema = request.getfixturevalue("postgres_schema")
    scenario = load_scenario(REPO / "simulations" / "refund-query-rewrite.yaml").with_units(300)
    simulate(load_config(REFUND), scenario, warehouse.url, schema=schema or None)
    return warehouse, schema


def test_event_names_and_receipt_fields_missing_from_the_warehouse_name_the_nearest(
    simulated_warehouse: tuple[Warehouse, str],
) -> None:
    warehouse, schema = simulated_warehouse
    data = misspelt_refund()
    if schema:
        data["source"] = {"exposures": f"{schema}.exposures", "events": f"{schema}.events"}
    warnings = {w.field: w.reason for w in lint_config(parse_config(data), warehouse)}
    table = f"{schema}.events" if schema else "events"
    assert warnings["metrics.p95_latency_ms.event"] == (
        f"no `answer_servd` events in {table}: the metric would have no data; "
        "did you mean `answer_served`?"
    )
    assert warnings["metrics.resolution_rate.unless.event"].endswith(
        "did you mean `ticket_opened`?"
    )
    assert warnings["receipt"].startswith("`generatr` is not a property of the exposures")
    assert warnings["receipt"].endswith("did you mean `generator`?")
    assert set(warnings) == {
        "plan",
        "metrics.p95_latency_ms.event",
        "metrics.resolution_rate.unless.event",
        "receipt",
    }
    clean = refund(source=data.get("source", {"exposures": "exposures", "events": "events"}))
    assert [w.field for w in lint_config(parse_config(clean), warehouse)] == ["plan"]


def test_cli_validate_with_a_warehouse_names_a_misspelt_event(
    duckdb_warehouse: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = load_scenario(REPO / "simulations" / "refund-query-rewrite.yaml").with_units(300)
    simulate(load_config(REFUND), scenario, duckdb_warehouse.url)
    path = tmp_path / "refund.yaml"
    path.write_text(yaml.safe_dump(misspelt_refund()))
    assert main(["validate", "--strict", "--warehouse", duckdb_warehouse.url, str(path)]) == 2
    out = capsys.readouterr().out
    assert (
        f"{path}: metrics.p95_latency_ms.event: error: no `answer_servd` events in events"
    ) in out


# --- sources given as `{sql: ...}` (validate --warehouse) -----------------------------------

TEAM_TABLES = [
    """CREATE TABLE assignments (user_key INTEGER, variant TEXT, seen_at TIMESTAMP,
       staff BOOLEAN)""",
    "CREATE TABLE app_log (user_key INTEGER, action TEXT, logged_at TEXT, amount INTEGER)",
]
EXPOSURES_QUERY = """SELECT 'refund-query-rewrite' AS experiment_key,
  CAST(user_key AS TEXT) AS unit_id, variant AS arm, seen_at AS exposed_at,
  staff AS is_internal, FALSE AS is_bot, CAST(NULL AS JSON) AS properties
FROM assignments"""
EVENTS_QUERY = """SELECT CAST(user_key AS TEXT) AS unit_id, action AS event_name,
  CAST(logged_at AS TIMESTAMP) AS occurred_at, CAST(amount AS DOUBLE PRECISION) AS value,
  CAST(NULL AS TEXT) AS experiment_key
FROM app_log"""


@pytest.fixture(params=["duckdb", "postgres"])
def team_warehouse(request: pytest.FixtureRequest) -> Warehouse:
    """A warehouse with a team's own tables (not the contract's), in its default schema."""
    if request.param == "duckdb":
        warehouse: Warehouse = request.getfixturevalue("duckdb_warehouse")
    else:
        admin, schema = request.getfixturevalue("postgres_schema")
        warehouse = Warehouse(f"{admin.url}?options=-csearch_path%3D{schema}")
    warehouse.execute(TEAM_TABLES)
    return warehouse


def validate_with_queries(
    tmp_path: Path, warehouse: Warehouse, exposures: str, events: str
) -> tuple[int, str]:
    path = tmp_path / "refund.yaml"
    source = {"exposures": {"sql": exposures}, "events": {"sql": events}}
    path.write_text(yaml.safe_dump(refund(source=source), sort_keys=False))
    code = main(["validate", "--warehouse", warehouse.url, str(path)])
    return code, str(path)


def test_validate_runs_source_queries_that_match_the_contract(
    team_warehouse: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, path = validate_with_queries(tmp_path, team_warehouse, EXPOSURES_QUERY, EVENTS_QUERY)
    out = capsys.readouterr().out
    assert code == 0, out
    assert ": error:" not in out and f"{path}: ok (refund-query-rewrite" in out
    # The other warehouse checks read through the query too (its table holds no event yet).
    assert "no `marked_solved` events in source.events.sql" in out


def test_validate_names_a_column_a_source_query_lacks(
    team_warehouse: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = EVENTS_QUERY.replace("CAST(amount AS DOUBLE PRECISION) AS value,", "")
    code, path = validate_with_queries(tmp_path, team_warehouse, EXPOSURES_QUERY, events)
    out = capsys.readouterr().out
    assert code == 2  # an error without --strict: the run could not read the source
    assert f"{path}: source.events.sql: error: the query returns no column `value`" in out


def test_validate_names_a_column_a_source_query_mistypes(
    team_warehouse: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = EVENTS_QUERY.replace("CAST(logged_at AS TIMESTAMP)", "logged_at")
    exposures = EXPOSURES_QUERY.replace("variant AS arm", "user_key AS arm")
    code, path = validate_with_queries(tmp_path, team_warehouse, exposures, events)
    out = capsys.readouterr().out
    text = "VARCHAR" if team_warehouse.dialect == "duckdb" else "TEXT"
    assert code == 2
    assert f"{path}: source.exposures.sql: error: column `arm` is INTEGER" in out
    assert f"{path}: source.events.sql: error: column `occurred_at` is {text}" in out


def test_validate_says_when_a_source_query_does_not_run(
    team_warehouse: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = EVENTS_QUERY.replace("FROM app_log", "FROM app_logs")
    code, path = validate_with_queries(tmp_path, team_warehouse, EXPOSURES_QUERY, events)
    out = capsys.readouterr().out
    assert code == 2
    assert f"{path}: source.events.sql: error: does not run in the warehouse: " in out
    assert "app_logs" in out
