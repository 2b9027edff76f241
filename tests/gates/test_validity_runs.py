"""Whole runs whose data cannot give a number: a misspelt or silent metric event, events
logged before exposure, non-finite values, contract columns of another type. Each must end as
a RERUN brief naming what to fix (never a comparison of zeros or NaNs), or, for columns the
extract cannot read, as a pipeline error naming them; results.json is always strict JSON."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import load_config
from ab_pipeline.core.errors import PipelineError
from ab_pipeline.devtools.simulate import parse_scenario, simulate
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.warehouse import Warehouse, dispose_all
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "dags" / "experiments" / "refund-query-rewrite.yaml"
SCENARIO = REPO_ROOT / "simulations" / "refund-query-rewrite.yaml"
FINAL = date(2026, 5, 31)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A healthy 4,000-unit readout (SHIP or STOP on its own), simulated once per module."""
    path = tmp_path_factory.mktemp("simulated") / "warehouse.duckdb"
    data = yaml.safe_load(SCENARIO.read_text())
    data.update(units=4000, seed=7)
    simulate(load_config(CONFIG), parse_scenario(data), f"duckdb:///{path}")
    dispose_all()
    return path


@pytest.fixture
def warehouse(simulated: Path, tmp_path: Path) -> Warehouse:
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(simulated, copy)
    yield Warehouse(f"duckdb:///{copy}")
    dispose_all()


def strict_json(path: Path) -> dict[str, Any]:
    def refuse(token: str) -> Any:
        raise AssertionError(f"{path.name} holds {token}: not strict JSON")

    return dict(json.loads(path.read_text(), parse_constant=refuse))


def readout(warehouse: Warehouse, out: Path, config: Path = CONFIG) -> dict[str, Any]:
    ctx = RunContext(config, FINAL, warehouse.url, out)
    run_pipeline(ctx, deliver=False)
    results = strict_json(ctx.run_dir / "results.json")
    brief = (ctx.run_dir / "brief.txt").read_text() + (ctx.run_dir / "brief.html").read_text()
    results["_brief"] = " ".join(brief.split())
    return results


def config_with(tmp_path: Path, **metric_events: str) -> Path:
    data = yaml.safe_load(CONFIG.read_text())
    for metric, event in metric_events.items():
        data["metrics"][metric]["event"] = event
    path = tmp_path / CONFIG.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_healthy_readout_is_analysed(warehouse: Warehouse, tmp_path: Path) -> None:
    results = readout(warehouse, tmp_path / "briefs")
    assert results["decision"] in ("SHIP", "STOP", "ITERATE") and not results["gate_failures"]


def test_a_misspelt_guardrail_event_is_a_rerun_naming_metric_and_event(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    """Today's `answer_servd` turned SHIP into 'p95_latency_ms breached its limit'."""
    results = readout(
        warehouse, tmp_path / "briefs", config_with(tmp_path, p95_latency_ms="answer_servd")
    )
    assert results["decision"] == "RERUN" and results["gate_failures"] == ["data_quality"]
    named = "no `answer_servd` events for enrolled units (metric p95_latency_ms)"
    assert named in results["decision_reason"]
    assert named in results["_brief"].replace("&#96;", "`")
    assert results["metrics"] == {}


def test_a_primary_event_that_never_occurs_is_a_rerun(warehouse: Warehouse, tmp_path: Path) -> None:
    warehouse.execute("DELETE FROM events WHERE event_name = 'marked_solved'")
    results = readout(warehouse, tmp_path / "briefs")
    assert results["decision"] == "RERUN"
    assert (
        "no `marked_solved` events for enrolled units (metric resolution_rate)"
        in (results["decision_reason"])
    )


def test_events_logged_before_exposure_are_a_rerun(warehouse: Warehouse, tmp_path: Path) -> None:
    warehouse.execute(
        "UPDATE events e SET occurred_at = x.first - INTERVAL '1 minute' FROM "
        "(SELECT unit_id, MIN(exposed_at) AS first FROM exposures GROUP BY unit_id) x "
        "WHERE x.unit_id = e.unit_id"
    )
    results = readout(warehouse, tmp_path / "briefs")
    assert results["decision"] == "RERUN"
    for metric, event in [
        ("resolution_rate", "marked_solved"),
        ("p95_latency_ms", "answer_served"),
    ]:
        assert (
            f"no `{event}` events for enrolled units (metric {metric})"
            in (results["decision_reason"])
        )


@pytest.mark.parametrize("bad", ["'NaN'", "'Infinity'", "'-Infinity'", "1e308"])
def test_non_finite_values_are_a_rerun_and_never_reach_results(
    warehouse: Warehouse, tmp_path: Path, bad: str
) -> None:
    warehouse.execute(
        f"UPDATE events SET value = CAST({bad} AS DOUBLE) WHERE event_name = 'answer_served' "
        "AND unit_id IN (SELECT unit_id FROM events WHERE event_name = 'answer_served' LIMIT 2)"
    )
    results = readout(warehouse, tmp_path / "briefs")
    assert results["decision"] == "RERUN" and results["metrics"] == {}
    assert "events_value_finite" in results["decision_reason"]
    assert "`answer_served` (metric p95_latency_ms)" in results["decision_reason"]


def test_run_files_refuse_non_finite_numbers(tmp_path: Path) -> None:
    # results.json itself is refused by its model, naming the field
    # (tests/readout/test_results_model.py).
    ctx = RunContext(CONFIG, FINAL, f"duckdb:///{tmp_path}/unused.duckdb", tmp_path)
    with pytest.raises(ValueError, match="not JSON compliant"):
        ctx.write_json("metrics.json", {"value": math.nan})


def test_a_run_with_nobody_enrolled_still_writes_strict_results(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    """No units: the plan's 'MDE reachable now' is infinite; results.json says null."""
    warehouse.execute("UPDATE exposures SET arm = 'ctrl' WHERE arm = 'control'")
    warehouse.execute("UPDATE exposures SET arm = 'treat' WHERE arm = 'treatment'")
    results = readout(warehouse, tmp_path / "briefs")
    assert results["decision"] == "RERUN" and results["progress"]["mde_now"] is None


def test_an_integer_arm_is_a_rerun_naming_the_column(warehouse: Warehouse, tmp_path: Path) -> None:
    warehouse.execute(
        [
            "UPDATE exposures SET arm = CASE arm WHEN 'control' THEN '0' ELSE '1' END",
            "ALTER TABLE exposures ALTER COLUMN arm TYPE INTEGER",
        ]
    )
    results = readout(warehouse, tmp_path / "briefs")
    assert results["decision"] == "RERUN"
    assert "contract_column_types" in results["decision_reason"]
    assert "exposures.arm is INTEGER" in results["decision_reason"]


def test_text_timestamps_stop_the_extract_naming_the_columns(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    warehouse.execute("ALTER TABLE events ALTER COLUMN occurred_at TYPE VARCHAR")
    with pytest.raises(PipelineError, match=r"events\.occurred_at is VARCHAR\): timestamps"):
        readout(warehouse, tmp_path / "briefs")


RUN_IN_ZONE = """
import json, sys
from datetime import date
from pathlib import Path
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
ctx = RunContext(Path(sys.argv[1]), date(2026, 5, 31), sys.argv[2], Path(sys.argv[3]))
run_pipeline(ctx, deliver=False)
results = json.loads((ctx.run_dir / "results.json").read_text())
print(json.dumps([results["decision"], results["decision_reason"]]))
"""


def test_timestamptz_exposures_give_the_same_rerun_in_every_time_zone(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    """Read in each worker's own zone, TIMESTAMPTZ gave STOP under UTC, RERUN in Kolkata."""
    warehouse.execute("ALTER TABLE exposures ALTER COLUMN exposed_at TYPE TIMESTAMPTZ")
    dispose_all()
    outcomes = []
    for zone in ("UTC", "Asia/Kolkata"):
        done = subprocess.run(
            [sys.executable, "-c", RUN_IN_ZONE, str(CONFIG), warehouse.url, str(tmp_path / zone)],
            env={**os.environ, "TZ": zone},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
            cwd=REPO_ROOT,
        )
        outcomes.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert outcomes[0] == outcomes[1]
    decision, reason = outcomes[0]
    assert decision == "RERUN"
    assert "exposures.exposed_at is TIMESTAMP WITH TIME ZONE" in reason


def test_on_postgresql_a_misspelt_event_and_nan_values_are_one_rerun(
    postgres_schema: tuple[Warehouse, str], tmp_path: Path
) -> None:
    warehouse, schema = postgres_schema
    data = yaml.safe_load(SCENARIO.read_text())
    data.update(units=1500, seed=7)
    simulate(load_config(CONFIG), parse_scenario(data), warehouse.url, schema=schema)
    warehouse.execute(
        f"UPDATE {schema}.events SET value = 'NaN' WHERE event_name = 'answer_served' "
        f"AND unit_id IN (SELECT unit_id FROM {schema}.events LIMIT 3)"
    )
    config = yaml.safe_load(CONFIG.read_text())
    config["source"] = {"exposures": f"{schema}.exposures", "events": f"{schema}.events"}
    config["metrics"]["escalation_rate"]["event"] = "escalatd"
    path = tmp_path / CONFIG.name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    results = readout(warehouse, tmp_path / "briefs", path)
    assert results["decision"] == "RERUN" and results["metrics"] == {}
    reason = results["decision_reason"]
    assert "no `escalatd` events for enrolled units (metric escalation_rate)" in reason
    assert "events_value_finite" in reason and "`answer_served` (metric p95_latency_ms)" in reason
