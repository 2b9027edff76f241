"""Plans and progress (ab_pipeline/readout/progress.py): the results.json `plan` block and the
brief's
"smallest effect detectable now" / "days left" follow the same rules as `ab-pipeline plan`."""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
import pytest
from scipy import stats

from ab_pipeline.core.config import parse_config
from ab_pipeline.core.errors import ConfigError
from ab_pipeline.readout.progress import detectable_now, plan_summary, progress
from ab_pipeline.stats.statistics import (
    sample_size_means,
    sample_size_non_inferiority,
    sample_size_two_proportions,
)
from tests.warehouse_fixtures import experiment_data

METRICS = {
    "resolved": {"type": "proportion", "event": "solved"},
    "minutes": {"type": "mean", "event": "session", "aggregate": "sum"},
    "escalated": {"type": "proportion", "event": "escalated"},
}


def config(plan: dict[str, Any], primary: str = "resolved", **fields: Any) -> Any:
    guardrails = {"escalated": {"max_relative_increase": 0.1}}
    data = experiment_data("plan-check", METRICS, primary, guardrails=guardrails, **fields)
    return parse_config(data | {"plan": plan})


def test_the_plan_block_uses_the_powered_formula_and_splits_alpha_across_arms() -> None:
    one = plan_summary(config({"baseline": 0.006, "mde": 0.003}))
    assert one is not None and one["required_per_arm"] == 12983 and "Fleiss" in one["formula"]
    three_arms = {"control": 0.4, "a": 0.3, "b": 0.3}
    two = plan_summary(config({"baseline": 0.006, "mde": 0.003}, arms=three_arms))
    assert two is not None and two["alpha_per_comparison"] == pytest.approx(0.025)
    assert two["required_per_arm"] == sample_size_two_proportions(0.006, 0.003, 0.025).per_arm
    textbook = plan_summary(config({"baseline": 0.38, "mde": 0.02, "formula": "pooled"}))
    assert textbook is not None and textbook["required_per_arm"] == 9246
    assert textbook["formula_name"] == "pooled"


def test_a_mean_primary_is_planned_from_its_sd() -> None:
    summary = plan_summary(config({"baseline": 14.0, "sd": 12.0, "mde": 1.0}, primary="minutes"))
    assert summary is not None
    assert summary["required_per_arm"] == sample_size_means(12.0, 1.0).per_arm == 2261


def test_a_planned_guardrail_gets_its_non_inferiority_size() -> None:
    plan = {"baseline": 0.38, "mde": 0.02, "guardrails": {"escalated": {"baseline": 0.06}}}
    summary = plan_summary(config(plan))
    assert summary is not None
    size = summary["guardrail_sizes"]["escalated"]
    expected = sample_size_non_inferiority(0.06, 0.1, relative=True, harmful_up=True)
    assert size["required_per_arm"] == expected.per_arm
    assert size["budget_kind"] == "max_relative_increase" and size["assumed_effect"] == 0.0
    # At that size and no true effect, the log-scale bound clears +10% with ~80% probability.
    se = np.sqrt(2 * 0.94 / (size["required_per_arm"] * 0.06))
    assert stats.norm.cdf(np.log1p(0.1) / se - stats.norm.ppf(0.95)) == pytest.approx(0.8, abs=2e-3)


@pytest.mark.parametrize(
    "plan,primary,field",
    [
        ({"baseline": 1.5, "mde": 0.02}, "resolved", "plan.baseline"),
        ({"baseline": 0.38, "mde": 0.0}, "resolved", "plan"),
        ({"baseline": 0.99, "mde": 0.02}, "resolved", "plan"),
        ({"baseline": 14.0, "mde": 1.0}, "minutes", "give `sd`"),
        ({"baseline": 0.5, "mde": 0.1}, "minutes", "plan.sd"),
        (
            {"baseline": 0.38, "mde": 0.02, "guardrails": {"nope": {"baseline": 0.1}}},
            "resolved",
            "plan.guardrails.nope",
        ),
    ],
)
def test_impossible_plans_are_config_errors_naming_the_field(
    plan: dict[str, Any], primary: str, field: str
) -> None:
    with pytest.raises(ConfigError) as error:
        config(plan, primary=primary)
    assert field in str(error.value)


def test_progress_reports_the_plan_and_the_effect_detectable_now_by_the_same_rules() -> None:
    experiment = config({"baseline": 0.006, "mde": 0.003})
    planned = sample_size_two_proportions(0.006, 0.003).per_arm
    # 10 days into a 28-day run with 3,000 and 3,100 units: 300 a day in the smaller arm.
    done = progress(experiment, {"control": 3000, "treatment": 3100}, date(2026, 5, 13))
    assert done is not None and done["planned_per_arm"] == planned
    assert done["fraction"] == pytest.approx(3000 / planned)
    assert done["days_left"] == int(np.ceil((planned - 3000) / 300))
    # The detectable effect at the planned size is the planned MDE (same formula, inverted),
    # larger at 3,000 per arm.
    assert detectable_now(experiment, planned) == pytest.approx(0.003, rel=2e-3)
    assert done["mde_now"] > 0.003
    assert done["mde_now"] == pytest.approx(detectable_now(experiment, 3000))
    # Two treatment arms: the split alpha needs more units for the same MDE.
    arms = {"control": 0.4, "a": 0.3, "b": 0.3}
    split = progress(config({"baseline": 0.006, "mde": 0.003}, arms=arms), {}, date(2026, 5, 13))
    assert split is not None and split["planned_per_arm"] > planned


def load_pre_period(warehouse: Any) -> dict[str, list[float]]:
    """400 users active in the 28 days before 2026-05-04: ~30% solve, session minutes vary;
    events before the window or from the start on must be ignored. Returns per-unit truth."""
    from datetime import datetime, timedelta

    from tests.warehouse_fixtures import create_contract_tables, insert_rows

    rng = np.random.default_rng(8)
    start = datetime(2026, 5, 4)
    create_contract_tables(warehouse)
    events, solved, minutes = [], [], []
    for i in range(400):
        unit, seen = f"u{i}", start - timedelta(days=int(rng.integers(1, 28)), hours=3)
        values = rng.exponential(12.0, int(rng.integers(1, 4)))
        for value in values:
            events.append((unit, "session", seen, float(value), None))
        solves = bool(rng.random() < 0.3)
        if solves:
            events.append((unit, "solved", seen + timedelta(hours=1), None, None))
        events.append((unit, "solved", start - timedelta(days=40), None, None))  # too early
        events.append((unit, "session", start + timedelta(hours=1), 999.0, None))  # too late
        solved.append(float(solves))
        minutes.append(float(values.sum()))
    insert_rows(warehouse, [], events)
    return {"solved": solved, "minutes": minutes}


def test_a_pre_period_query_gives_the_plan_its_baseline_and_sd(duckdb_warehouse: Any) -> None:
    from ab_pipeline.readout.progress import pre_period_moments

    truth = load_pre_period(duckdb_warehouse)
    proportion = config({"baseline": 0.38, "mde": 0.02})
    found = pre_period_moments(duckdb_warehouse, proportion, date(2026, 5, 4), 28)
    assert found["units"] == 400
    assert found["baseline"] == pytest.approx(np.mean(truth["solved"]))
    mean = config({"baseline": 14.0, "sd": 12.0, "mde": 1.0}, primary="minutes")
    found = pre_period_moments(duckdb_warehouse, mean, date(2026, 5, 4), 28)
    assert found["baseline"] == pytest.approx(np.mean(truth["minutes"]))
    assert found["sd"] == pytest.approx(np.std(truth["minutes"], ddof=1))


def test_cli_plans_a_config_from_the_warehouse_pre_period(
    duckdb_warehouse: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from ab_pipeline.orchestration.cli import main

    truth = load_pre_period(duckdb_warehouse)
    data = experiment_data(
        "plan-check", METRICS, "minutes", arms={"control": 0.4, "a": 0.3, "b": 0.3}
    )
    path = tmp_path / "plan-check.yaml"
    path.write_text(yaml.safe_dump(data))
    url = duckdb_warehouse.url
    assert main(["plan", "--config", str(path), "--warehouse", url, "--mde", "2"]) == 0
    out = capsys.readouterr().out
    sd = float(np.std(truth["minutes"], ddof=1))
    expected = sample_size_means(sd, 2.0, comparisons=2).per_arm
    assert f"{expected:,} units per arm" in out and "400 units active" in out
    assert f"baseline {np.mean(truth['minutes']):.4g}, sd {sd:.4g}" in out
    assert "split over 2 treatment arms" in out
    assert (
        main(["plan", "--config", str(path), "--warehouse", url, "--mde", "2", "--lookback", "0"])
        == 2
    )
