"""Mean: the per-unit sum (or count) of matching events' `value` in the window, averaged over
units (0 for a unit without one; NULL until its window has elapsed), or a `sql:` SELECT's value.
Compared by Welch's t-test (CUPED-adjusted when configured); said in the metric's own unit."""

from __future__ import annotations

from typing import Any

from ab_pipeline.core.config import MeanMetric
from ab_pipeline.metrics.base import UnitValueKind
from ab_pipeline.stats.statistics import Comparison, MeanSummary, compare_means


class MeanKind(UnitValueKind[MeanMetric]):
    name = "mean"
    config_type = MeanMetric

    def per_unit_how(self, metric: MeanMetric) -> str | None:
        return metric.aggregate if metric.event is not None else None

    def compare(self, control: MeanSummary, treated: MeanSummary, alpha: float) -> Comparison:
        return compare_means(control, treated, alpha)

    def needs_values(self, metric: MeanMetric) -> bool:
        return metric.aggregate == "sum"

    def expected_value(
        self, metric: MeanMetric, count: float, any_event: float, value: Any, arm: str
    ) -> float:
        if metric.aggregate == "count":
            return count
        return count * float(value.expectation(arm))
