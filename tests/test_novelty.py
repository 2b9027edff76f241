"""Novelty view: a simulated fading lift is flagged, a steady one is not."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from ab_pipeline.config import load_config
from ab_pipeline.novelty import weighted_trend
from ab_pipeline.pipeline import RunContext, run_pipeline
from ab_pipeline.simulate import parse_scenario, simulate
from ab_pipeline.warehouse import Warehouse

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
SCENARIO = REPO / "simulations" / "refund-query-rewrite.yaml"
FINAL = date(2026, 5, 31)


def readout(tmp_path: Path, warehouse: Warehouse, **resolution: Any) -> dict[str, Any]:
    data = yaml.safe_load(SCENARIO.read_text())
    data.update(units=16000, seed=7, internal_share=0.0, bot_share=0.0)
    data["metrics"]["resolution_rate"].update(resolution)
    config = load_config(CONFIG)
    simulate(config, parse_scenario(data), warehouse.url)
    ctx = RunContext(CONFIG, FINAL, warehouse.url, tmp_path / "briefs")
    run_pipeline(ctx, deliver=False)
    return dict(json.loads((ctx.run_dir / "results.json").read_text()))


def test_a_fading_lift_is_flagged(tmp_path: Path, duckdb_warehouse: Warehouse) -> None:
    results = readout(
        tmp_path, duckdb_warehouse, rate={"control": 0.38, "treatment": 0.50}, decay=0.15
    )
    novelty = results["novelty"]
    assert novelty["flagged"] and novelty["metric"] == "resolution_rate"
    assert novelty["trend"]["slope"] < 0 and novelty["trend"]["p_value"] < 0.05
    assert "weighted least squares" in novelty["trend"]["method"]
    cohorts = novelty["by_cohort_day"]
    assert len(cohorts) == 27  # one cohort per enrolment day (2026-05-04 .. 05-30)
    assert cohorts[0]["days_since_exposure"] == 27 and cohorts[-1]["days_since_exposure"] == 1
    assert cohorts[0]["absolute"] > 0.05 > cohorts[-1]["absolute"]
    check = next(c for c in results["checks"] if c["name"] == "novelty_risk")
    assert not check["passed"] and check["blocking"] is False and "novelty risk" in check["detail"]
    assert "novelty" not in results["decision_reason"]


def test_a_steady_lift_is_not_flagged(tmp_path: Path, duckdb_warehouse: Warehouse) -> None:
    results = readout(tmp_path, duckdb_warehouse, rate={"control": 0.38, "treatment": 0.42})
    novelty = results["novelty"]
    assert not novelty["flagged"] and novelty["trend"]["p_value"] > 0.05
    check = next(c for c in results["checks"] if c["name"] == "novelty_risk")
    assert check["passed"]
    assert "novelty" not in results["decision_reason"]  # a view: it never drives the decision


def test_the_trend_slope_is_weighted_least_squares() -> None:
    rng = np.random.default_rng(3)
    start = date(2026, 1, 1)
    xs = np.arange(10)
    ses = rng.uniform(0.01, 0.05, 10)
    ys = 0.05 - 0.002 * xs + rng.normal(0, ses)
    cohorts = [
        {"exposure_day": (start + timedelta(days=int(x))).isoformat(), "absolute": y, "se": s}
        for x, y, s in zip(xs, ys, ses, strict=True)
    ]
    trend = weighted_trend(cohorts, start)
    assert trend is not None
    slope, intercept = np.polyfit(xs, ys, 1, w=1 / ses)  # polyfit weights multiply residuals
    assert trend["slope"] == pytest.approx(slope) and trend["intercept"] == pytest.approx(intercept)
    assert trend["se"] == pytest.approx(
        1 / np.sqrt(np.sum((xs - np.average(xs, weights=1 / ses**2)) ** 2 / ses**2))
    )
    assert weighted_trend(cohorts[:2], start) is None
