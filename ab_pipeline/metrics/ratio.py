"""Ratio: sum over units of a numerator over sum over units of a denominator (e.g. clicks per
session), each a per-unit sum or count of one event in the window. Compared by the delta
method; said in the metric's own unit."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from ab_pipeline.core.config import RatioMetric
from ab_pipeline.metrics.base import (
    MetricKind,
    SqlParams,
    before_window_end,
    conditional_aggregate,
    day_of,
    ratio_columns,
    windowed_column,
)
from ab_pipeline.stats.statistics import Comparison, RatioSummary, compare_ratios, ratio_variance
from ab_pipeline.warehouse import Warehouse, quote_ident
from ab_pipeline.warehouse.run_tables import EXPOSURE_DAY


class RatioKind(MetricKind[RatioMetric]):
    name = "ratio"
    config_type = RatioMetric
    column_order: ClassVar[int] = 1

    # ---- extract ----------------------------------------------------------------------------

    def events(self, metric: RatioMetric) -> list[str]:
        return [metric.numerator.event, metric.denominator.event]

    def event_fields(self, metric: RatioMetric) -> dict[str, str]:
        return {
            "numerator.event": metric.numerator.event,
            "denominator.event": metric.denominator.event,
        }

    def pass_aggregates(self, name: str, metric: RatioMetric, params: SqlParams) -> str:
        """SUMs of the numerator and denominator events in the window, per unit."""
        window = before_window_end(metric.window)
        parts = []
        for part, column in zip(
            (metric.numerator, metric.denominator), ratio_columns(name), strict=True
        ):
            match = f"ev.event_name = {params.bind(part.event)}{window}"
            parts.append(
                f",\n      {conditional_aggregate(part.aggregate, match)} AS {quote_ident(column)}"
            )
        return "".join(parts)

    def unit_columns(self, name: str, metric: RatioMetric, alias: str) -> str:
        return "".join(
            windowed_column(metric.window, f"COALESCE({alias}.{column}, 0)", column)
            for column in map(quote_ident, ratio_columns(name))
        )

    # ---- analysis ---------------------------------------------------------------------------

    def scan_sums(self, name: str) -> dict[str, str]:
        x, y = map(quote_ident, ratio_columns(name))
        return {
            "n": f"COUNT({x})",
            "x": f"SUM({x})",
            "y": f"SUM({y})",
            "xx": f"SUM({x} * {x})",
            "yy": f"SUM({y} * {y})",
            "xy": f"SUM({x} * {y})",
        }

    def summary_from_sums(self, sums: Mapping[str, Any]) -> RatioSummary:
        sx, sy, sxx, syy, sxy = (float(sums[k] or 0.0) for k in ("x", "y", "xx", "yy", "xy"))
        return RatioSummary(int(sums["n"] or 0), sx, sy, sxx, syy, sxy)

    def arm_entry(self, summary: RatioSummary) -> dict[str, Any]:
        return {
            "units": summary.n,
            "value": summary.ratio if summary.den else None,
            "numerator": summary.num,
            "denominator": summary.den,
        }

    def compare(self, control: RatioSummary, treated: RatioSummary, alpha: float) -> Comparison:
        return compare_ratios(control, treated, alpha)

    def cohort_stats(
        self, warehouse: Warehouse, name: str, units_table: str
    ) -> list[dict[str, Any]]:
        """Per cohort: R = sum(num) / sum(den), with the delta-method variance
        n var(R) = (var(num) - 2 R cov(num, den) + R^2 var(den)) / mean(den)^2 (the analysis's
        ratio method). A cohort without any denominator has no ratio and is left out."""
        num, den = map(quote_ident, ratio_columns(name))
        rows = warehouse.query(
            f"""
        SELECT {EXPOSURE_DAY} AS day, arm, COUNT({num}) AS n,
               SUM({num}) AS sx, SUM({den}) AS sy, VAR_SAMP({num}) AS vx,
               VAR_SAMP({den}) AS vy, COVAR_SAMP({num}, {den}) AS cxy
        FROM {quote_ident(units_table)}
        WHERE {num} IS NOT NULL AND {den} IS NOT NULL
        GROUP BY {EXPOSURE_DAY}, arm
        ORDER BY 1, 2
        """
        )
        stats = []
        for row in rows:
            n, sy = int(row["n"]), float(row["sy"] or 0.0)
            if sy <= 0:
                continue
            ratio, mean_y = float(row["sx"] or 0.0) / sy, sy / n
            vx, vy, cxy = (float(row[k] or 0.0) for k in ("vx", "vy", "cxy"))
            var = (vx - 2 * ratio * cxy + ratio**2 * vy) / mean_y**2
            stats.append(
                {
                    "day": day_of(row["day"]),
                    "arm": str(row["arm"]),
                    "n": n,
                    "mean": ratio,
                    "var": var,
                }
            )
        return stats

    # ---- planning ---------------------------------------------------------------------------

    def pre_period_parts(
        self, metric: RatioMetric
    ) -> tuple[tuple[str, str], tuple[str, str] | None] | None:
        return (
            (metric.numerator.event, metric.numerator.aggregate),
            (metric.denominator.event, metric.denominator.aggregate),
        )

    def pre_period_moments(
        self, metric: RatioMetric, n: int, sx: float, sy: float, sxx: float, syy: float, sxy: float
    ) -> dict[str, Any]:
        sd = math.sqrt(ratio_variance(n, sx, sy, sxx, syy, sxy) * n)
        return {"type": "ratio", "units": n, "baseline": sx / sy if sy else None, "sd": sd}
