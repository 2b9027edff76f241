"""Reduced calibration suite (fixed seeds): the full one is benchmarks/calibration.py.

Rates must sit within Monte-Carlo error of their target (|z| <= 3.5 MC standard errors), and
interval coverage within 2 points of 95% with enough repetitions (>= 2,000: 3.5 MC standard
errors = 1.7 points) that an interval covering 92.5% fails, while seeds keep the run
deterministic. The whole file runs in about 30 s on one core.
"""

from __future__ import annotations

import pytest

from ab_pipeline.devtools import calibration
from ab_pipeline.devtools.calibration import Row

TOLERANCE_Z = 3.5
COVERAGE_POINTS = 0.02


def within_error(row: Row) -> bool:
    return abs(row.z) <= TOLERANCE_Z


def covers_95(row: Row) -> bool:
    return row.reps >= 2000 and abs(row.measured - 0.95) <= COVERAGE_POINTS and within_error(row)


def test_aa_false_positive_rate_is_alpha() -> None:
    row = calibration.aa_false_positives(10000)
    assert within_error(row), row


@pytest.mark.parametrize(
    "scenario,reps",
    [("proportion", 10000), ("mean", 3000), ("ratio", 3000)],
)
def test_interval_coverage_is_95_percent(scenario: str, reps: int) -> None:
    rows = calibration.SCENARIOS[scenario](reps)
    rows = rows if isinstance(rows, tuple) else (rows,)
    assert rows and all(covers_95(r) for r in rows), rows


def test_clustered_quantile_interval_covers_95_percent() -> None:
    [clustered] = calibration.coverage_quantile(2000, include_iid=False)
    assert covers_95(clustered), clustered


def test_iid_quantile_interval_undercovers_clustered_events() -> None:
    """Why the clustered method exists: ignoring units undercovers badly on the same data."""
    clustered, naive = calibration.coverage_quantile(200)
    assert naive.measured < clustered.measured - 0.08


def test_power_at_the_mde_is_the_planned_80_percent() -> None:
    row = calibration.power_at_mde(10000)
    assert within_error(row) and abs(row.measured - 0.8) <= 0.015, row


def test_cuped_shrinks_the_standard_error_without_bias() -> None:
    bias, se_ratio, coverage = calibration.cuped(2000)
    assert within_error(bias), bias
    assert se_ratio.measured < 0.9, se_ratio
    assert covers_95(coverage), coverage


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("per_arm", calibration.GUARDRAIL_SIZES)
def test_a_guardrail_at_its_budget_passes_alpha_of_the_time(relative: bool, per_arm: int) -> None:
    """Relative budgets on the log scale and absolute ones, small and large samples."""
    row = calibration.guardrail_pass_at_budget(20000, relative=relative, per_arm=per_arm)
    assert within_error(row) and abs(row.measured - calibration.ALPHA) <= 0.006, row


def test_peeking_naive_about_25_percent_sequential_at_most_alpha() -> None:
    naive, sequential = calibration.peeking(4000)
    assert 0.20 <= naive.measured <= 0.30, naive
    assert sequential.measured <= calibration.ALPHA + TOLERANCE_Z * sequential.mc_se, sequential
