"""Reduced calibration suite (fixed seeds): the full one is benchmarks/calibration.py.

Each rate must sit within Monte-Carlo error of its target (|z| <= 3.5 MC standard errors), so a
broken formula fails here while seeds keep the run deterministic.
"""

from __future__ import annotations

import pytest

from ab_pipeline import calibration
from ab_pipeline.calibration import Row

TOLERANCE_Z = 3.5


def within_error(row: Row) -> bool:
    return abs(row.z) <= TOLERANCE_Z


def test_aa_false_positive_rate_is_alpha() -> None:
    row = calibration.aa_false_positives(2000)
    assert within_error(row), row


@pytest.mark.parametrize(
    "scenario,reps",
    [("proportion", 1500), ("mean", 600), ("ratio", 800), ("quantile", 300)],
)
def test_interval_coverage_is_95_percent(scenario: str, reps: int) -> None:
    rows = calibration.SCENARIOS[scenario](reps)
    rows = rows if isinstance(rows, tuple) else (rows,)
    used = [r for r in rows if "not used" not in r.name]
    assert used and all(within_error(r) for r in used), used


def test_iid_quantile_interval_undercovers_clustered_events() -> None:
    """Why the clustered method exists: ignoring units undercovers badly on the same data."""
    clustered, naive = calibration.coverage_quantile(200)
    assert naive.measured < clustered.measured - 0.08


def test_power_at_the_mde_is_the_planned_80_percent() -> None:
    row = calibration.power_at_mde(2000)
    assert within_error(row), row


def test_cuped_shrinks_the_standard_error_without_bias() -> None:
    bias, se_ratio, coverage = calibration.cuped(300)
    assert within_error(bias), bias
    assert se_ratio.measured < 0.9, se_ratio
    assert within_error(coverage), coverage


def test_peeking_naive_about_25_percent_sequential_at_most_alpha() -> None:
    naive, sequential = calibration.peeking(1500)
    assert 0.20 <= naive.measured <= 0.30, naive
    assert sequential.measured <= calibration.ALPHA + TOLERANCE_Z * sequential.mc_se, sequential
