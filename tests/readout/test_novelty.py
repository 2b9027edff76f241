"""Novelty view: a simulated fading lift is flagged, a steady one is not."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from ab_pipeline.core.config import load_config
from ab_pipeline.devtools.simulate import parse_scenario, simulate
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.readout.novelty import weighted_trend
from ab_pipeline.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[2]
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


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_a_ratio_primary_gets_cohorts_with_the_delta_method_variance(
    engine: str, request: pytest.FixtureRequest
) -> None:
    """A ratio primary has no `m_<primary>` column: its cohorts come from the numerator and
    denominator columns, each cohort's difference and SE as the analysis's ratio comparison."""
    from ab_pipeline.core.config import parse_config
    from ab_pipeline.readout.novelty import novelty_view
    from ab_pipeline.stats.statistics import RatioSummary, compare_ratios
    from tests.warehouse_fixtures import experiment_data

    if engine == "duckdb":
        warehouse, table = request.getfixturevalue("duckdb_warehouse"), "units"
    else:
        warehouse, schema = request.getfixturevalue("postgres_schema")
        table = f"{schema}.units"
    metrics = {
        "Clicks_Per_Session": {
            "type": "ratio",
            "numerator": {"event": "click"},
            "denominator": {"event": "session"},
        }
    }
    config = parse_config(experiment_data("ratio-novelty", metrics, "Clicks_Per_Session"))
    rng = np.random.default_rng(5)
    rows = []
    for i in range(4 * 2 * 60):
        day, arm = date(2026, 5, 4 + i % 4), ("control", "treatment")[i // 4 % 2]
        sessions = int(rng.integers(1, 5))
        clicks = int(rng.binomial(sessions * 3, 0.3 + (0.05 if arm == "treatment" else 0)))
        rows.append({"u": f"u{i}", "a": arm, "t": day, "x": clicks, "y": sessions})
    warehouse.execute(
        f"CREATE TABLE {table} (unit_id TEXT, arm TEXT, first_exposed_at TIMESTAMP, "
        '"m_Clicks_Per_Session__num" DOUBLE PRECISION, '
        '"m_Clicks_Per_Session__den" DOUBLE PRECISION)'
    )
    from sqlalchemy import text

    with warehouse.connect() as connection:
        connection.execute(text(f"INSERT INTO {table} VALUES (:u, :a, :t, :x, :y)"), rows)
    view = novelty_view(warehouse, config, table, date(2026, 5, 10))
    assert view is not None and view["metric"] == "Clicks_Per_Session"
    assert len(view["by_cohort_day"]) == 4 and view["trend"] is not None

    def summary(day: date, arm: str) -> RatioSummary:
        xs = np.array([r["x"] for r in rows if r["t"] == day and r["a"] == arm], dtype=float)
        ys = np.array([r["y"] for r in rows if r["t"] == day and r["a"] == arm], dtype=float)
        return RatioSummary(len(xs), xs.sum(), ys.sum(), xs @ xs, ys @ ys, xs @ ys)

    for cohort in view["by_cohort_day"]:
        day = date.fromisoformat(cohort["exposure_day"])
        expected = compare_ratios(summary(day, "control"), summary(day, "treatment"))
        assert cohort["absolute"] == pytest.approx(expected.absolute, rel=1e-9)
        assert cohort["se"] == pytest.approx(expected.se, rel=1e-9)
