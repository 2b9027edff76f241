"""The pipeline's stages in one process on exact simulated data: the reference
numbers come out of the warehouse, and each decision kind follows from the data."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import load_config
from ab_pipeline.devtools.simulate import parse_scenario, simulate
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[2]
REFUND_CONFIG = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
REFUND_SCENARIO = REPO / "simulations" / "refund-query-rewrite.yaml"
FINAL = date(2026, 5, 31)


def exact_refund_scenario(**changes: Any) -> dict[str, Any]:
    """The textbook case: 2,000 customers per arm, exactly 760 vs 840 resolved."""
    data = yaml.safe_load(REFUND_SCENARIO.read_text())
    data.pop("units", None)
    data.pop("assignment", None)
    data.update(
        counts={"control": 2000, "treatment": 2000}, exact=True, internal_share=0.0, bot_share=0.0
    )
    data.update(changes)
    return dict(data)


def run(
    tmp_path: Path,
    warehouse: Warehouse,
    scenario: dict[str, Any],
    config_changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    config_data = yaml.safe_load(REFUND_CONFIG.read_text())
    # Textbook reproductions: 2,000 per arm proves no +0.5 pp budget, so use point evidence.
    for guardrail in config_data["guardrails"].values():
        guardrail["evidence"] = "point"
    config_data.update(config_changes or {})
    config_path = tmp_path / "refund-query-rewrite.yaml"
    config_path.write_text(yaml.safe_dump(config_data))
    config = load_config(config_path)
    simulate(config, parse_scenario(scenario), warehouse.url)
    ctx = RunContext(config_path, FINAL, warehouse.url, tmp_path / "briefs")
    run_pipeline(ctx, deliver=False)
    return dict(json.loads((ctx.run_dir / "results.json").read_text()))


def checks(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in results["checks"]}


def test_reference_numbers_come_out_of_the_warehouse_and_ship(
    tmp_path: Path, duckdb_warehouse: Warehouse
) -> None:
    results = run(tmp_path, duckdb_warehouse, exact_refund_scenario())
    primary = results["metrics"]["resolution_rate"]
    assert primary["arms"]["control"] | {"value": 0} == {
        "units": 2000,
        "successes": 760,
        "value": 0,
    }
    assert primary["arms"]["treatment"]["successes"] == 840
    comparison = primary["comparisons"]["treatment"]
    assert comparison["absolute"] == pytest.approx(0.04)
    assert comparison["se"] == pytest.approx(0.0155, abs=1e-4)
    assert comparison["ci"] == pytest.approx([0.0097, 0.0703], abs=1e-4)
    assert comparison["relative"] == pytest.approx(0.105, abs=5e-4)
    assert comparison["p_value"] == pytest.approx(0.0098, abs=1e-4)
    assert results["gates"]["srm"]["counts"] == {"control": 2000, "treatment": 2000}
    assert results["decision"] == "SHIP"
    latency = checks(results)["guardrail:p95_latency_ms"]
    assert latency["passed"] and 40 < latency["observed"] < 120  # about +80 ms
    brief = (tmp_path / "briefs" / "refund-query-rewrite" / "2026-05-31" / "brief.txt").read_text()
    assert "840 of 2,000" in brief and "760 of 2,000" in brief and "+4.0 pp" in brief


def test_latency_over_budget_stops(tmp_path: Path, duckdb_warehouse: Warehouse) -> None:
    scenario = exact_refund_scenario()
    # p95 = median * exp(1.645 * 0.35): a median of 900 -> 1,075 ms moves p95 by about +310 ms.
    scenario["metrics"]["p95_latency_ms"]["value"]["median"] = {"control": 900, "treatment": 1075}
    results = run(tmp_path, duckdb_warehouse, scenario)
    latency = checks(results)["guardrail:p95_latency_ms"]
    assert not latency["passed"] and latency["observed"] > 250
    assert results["decision"] == "STOP"


def test_a_higher_min_lift_iterates(tmp_path: Path, duckdb_warehouse: Warehouse) -> None:
    results = run(
        tmp_path,
        duckdb_warehouse,
        exact_refund_scenario(),
        {"decision": {"min_lift": 0.05, "srm_alpha": 0.001}},
    )
    assert results["decision"] == "ITERATE"
    assert not checks(results)["observed_lift_threshold"]["passed"]
    assert checks(results)["positive_lift_interval"]["passed"]


def test_a_changed_receipt_reruns_and_names_the_field(
    tmp_path: Path, duckdb_warehouse: Warehouse
) -> None:
    scenario = exact_refund_scenario(arm_properties={"treatment": {"decoder": "v3"}})
    results = run(tmp_path, duckdb_warehouse, scenario)
    assert results["decision"] == "RERUN" and results["metrics"] == {}
    receipt = results["gates"]["receipt"]
    assert receipt["mismatches"] == [
        {"field": "decoder", "values": {"control": ["v2"], "treatment": ["v3"]}}
    ]


def test_a_data_quality_failure_reruns_with_counts_and_examples(
    tmp_path: Path, duckdb_warehouse: Warehouse
) -> None:
    scenario = exact_refund_scenario()
    config = load_config(REFUND_CONFIG)
    simulate(config, parse_scenario(scenario), duckdb_warehouse.url)
    duckdb_warehouse.execute(
        "UPDATE exposures SET arm = 'treatmnet' WHERE unit_id IN "
        "(SELECT unit_id FROM exposures WHERE arm = 'treatment' ORDER BY unit_id LIMIT 3)"
    )
    ctx = RunContext(REFUND_CONFIG, FINAL, duckdb_warehouse.url, tmp_path / "briefs")
    run_pipeline(ctx, deliver=False)
    results = json.loads((ctx.run_dir / "results.json").read_text())
    assert results["decision"] == "RERUN"
    failed = [
        c
        for c in results["gates"]["data_quality"]["checks"]
        if not c["passed"] and c["severity"] == "error"
    ]
    arm_check = next(c for c in failed if c["name"] == "exposures_arm_in_config")
    assert arm_check["unexpected_count"] >= 3 and "treatmnet" in arm_check["examples"]
    assert "data_quality" in results["gate_failures"]
    brief = (ctx.run_dir / "brief.html").read_text()
    assert "treatmnet" in brief and "exposures_arm_in_config" in brief


HOLD_WAREHOUSE = """
import sys, time
from sqlalchemy import text
from ab_pipeline.warehouse import Warehouse
with Warehouse(sys.argv[1]).connect() as connection:
    connection.execute(text("SELECT 1"))
    print("holding", flush=True)
    time.sleep(60)
"""


def published(run_dir: Path) -> dict[str, bytes]:
    return {
        name: (run_dir / name).read_bytes()
        for name in ("results.json", "brief.html", "brief.txt", "brief.eml")
    }


def readout_rows(warehouse: Warehouse) -> list[tuple[str, str]]:
    rows = warehouse.query("SELECT decision, attempt_id FROM ab_readouts ORDER BY written_at")
    return [(r["decision"], r["attempt_id"]) for r in rows]


def test_a_failing_rerun_keeps_the_published_readout_and_its_rows(
    tmp_path: Path, duckdb_warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import subprocess
    import sys

    from ab_pipeline.core.errors import PipelineError
    from ab_pipeline.orchestration.pipeline import GATES, stage_extract, stage_gate
    from ab_pipeline.readout.decision_records import latest_final_results

    config = load_config(REFUND_CONFIG)
    simulate(config, parse_scenario(exact_refund_scenario()), duckdb_warehouse.url)
    briefs = tmp_path / "briefs"

    def context(attempt: str, url: str = duckdb_warehouse.url) -> RunContext:
        return RunContext(REFUND_CONFIG, FINAL, url, briefs, attempt=attempt)

    first = context("scheduled__2026-06-01T00:00:00+00:00")
    run_pipeline(first)  # delivers: no SMTP connection here, so the .eml is written only
    before = published(first.run_dir)
    graded = json.loads(before["results.json"])["decision"]  # STOP: interval evidence at 2,000
    assert graded in ("SHIP", "ITERATE", "STOP")

    # 1. The warehouse is missing (a path nobody can create).
    with pytest.raises(PipelineError, match="extraction failed"):
        run_pipeline(context("manual__missing", f"duckdb:///{tmp_path}/gone/warehouse.duckdb"))
    # 2. The warehouse stays locked by another process beyond the wait.
    monkeypatch.setenv("AB_PIPELINE_WAREHOUSE_LOCK_TIMEOUT", "0.5")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WAREHOUSE, duckdb_warehouse.url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with pytest.raises(PipelineError, match="timed out .* waiting for the DuckDB warehouse"):
            run_pipeline(context("manual__locked"))
    finally:
        holder.kill()
        holder.wait(timeout=10)
    monkeypatch.delenv("AB_PIPELINE_WAREHOUSE_LOCK_TIMEOUT")
    # 3. Killed after the gates, before the brief.
    killed = context("manual__killed")
    table = stage_extract(killed)
    for gate in GATES:
        stage_gate(killed, gate, table)

    assert published(first.run_dir) == before
    assert readout_rows(duckdb_warehouse) == [(graded, first.attempt_id)]
    assert (briefs / config.key / "2026-05-31.attempt-manual__killed" / "gates").is_dir()
    decided = latest_final_results(briefs, config.key, duckdb_warehouse)
    assert decided is not None and decided["decision"] == graded

    # A re-run whose data broke publishes a RERUN brief; the earlier row stays queryable and is
    # still what the date stands on for `decide` and for later readouts' history.
    duckdb_warehouse.execute(
        "UPDATE exposures SET arm = 'treatmnet' WHERE unit_id IN "
        "(SELECT unit_id FROM exposures WHERE arm = 'treatment' ORDER BY unit_id LIMIT 3)"
    )
    monkeypatch.setenv("AB_PIPELINE_KEEP_RUN_TABLES", "0")
    rerun = context("manual__rerun")
    run_pipeline(rerun)
    now = published(rerun.run_dir)
    assert json.loads(now["results.json"])["decision"] == "RERUN"
    assert now["brief.eml"] != before["brief.eml"]  # this attempt's email, in the published dir
    assert [d for d, _ in readout_rows(duckdb_warehouse)] == [graded, "RERUN"]
    [standing] = duckdb_warehouse.query("SELECT decision FROM ab_latest_readouts")
    assert standing["decision"] == graded
    decided = latest_final_results(briefs, config.key, duckdb_warehouse)
    assert decided is not None and decided["decision"] == graded
    # Publishing cleared the failed attempts' directories; the run's scratch tables are gone.
    assert sorted(p.name for p in (briefs / config.key).iterdir()) == ["2026-05-31"]
    assert not duckdb_warehouse.query(
        "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'ab_units__%' "
        "OR table_name LIKE 'ab_qhist__%'"
    )


def test_stages_in_separate_processes_find_their_attempt(
    tmp_path: Path, duckdb_warehouse: Warehouse
) -> None:
    """Each task builds its own RunContext: the attempt's directory follows from the run id."""
    from ab_pipeline.orchestration.pipeline import (
        GATES,
        stage_brief,
        stage_extract,
        stage_gate,
        stage_validity,
    )

    simulate(
        load_config(REFUND_CONFIG), parse_scenario(exact_refund_scenario()), duckdb_warehouse.url
    )

    def task(run_id: str) -> RunContext:  # a fresh context per task, as dag_factory makes them
        return RunContext(REFUND_CONFIG, FINAL, duckdb_warehouse.url, tmp_path / "briefs", run_id)

    table = stage_extract(task("manual__a"))
    for gate in GATES:
        stage_gate(task("manual__a"), gate, table)
    stage_validity(task("manual__a"))
    from ab_pipeline.orchestration.pipeline import stage_analyse

    stage_analyse(task("manual__a"), table)
    with pytest.raises(Exception, match="broke before a decision"):
        stage_brief(task("manual__b"))  # another run's brief finds none of this run's files
    summary = stage_brief(task("manual__a"))
    assert summary["decision"] in ("SHIP", "ITERATE", "STOP")
    assert Path(summary["brief"]) == task("manual__a").run_dir / "brief.html"
    # The brief task run again after it published starts from what it published.
    assert stage_brief(task("manual__a"))["decision"] == summary["decision"]
