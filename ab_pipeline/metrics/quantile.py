"""Quantile: a quantile of `value` over all matching events of enrolled units (e.g. p95
latency). The extract counts each unit's events with a value (N_i of the clustered variance)
and stores a histogram of their values; the analysis reads exact order statistics through it
(`ab_pipeline.analysis.quantile_summaries`). Compared by the Deng-Knoblich-Lu clustered
interval; said in the metric's own unit."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Any, ClassVar

from ab_pipeline.config import QuantileMetric
from ab_pipeline.formatting import fmt_count, fmt_num
from ab_pipeline.metrics.base import (
    MetricKind,
    SqlParams,
    before_window_end,
    quantile_count_column,
)
from ab_pipeline.statistics import Comparison, QuantileSummary, compare_quantiles
from ab_pipeline.warehouse import Warehouse, quote_ident

if TYPE_CHECKING:
    from ab_pipeline.config import ExperimentConfig


class QuantileKind(MetricKind[QuantileMetric]):
    name = "quantile"
    config_type = QuantileMetric
    column_order: ClassVar[int] = 2
    stores_histogram: ClassVar[bool] = True

    # ---- extract ----------------------------------------------------------------------------

    def events(self, metric: QuantileMetric) -> list[str]:
        return [metric.event]

    def event_fields(self, metric: QuantileMetric) -> dict[str, str]:
        return {"event": metric.event}

    def pass_aggregates(self, name: str, metric: QuantileMetric, params: SqlParams) -> str:
        """Per unit: the metric's events with a value (N_i of the clustered variance)."""
        window = before_window_end(metric.window)
        match = f"ev.event_name = {params.bind(metric.event)} AND ev.value IS NOT NULL{window}"
        column = quote_ident(quantile_count_column(name))
        return f",\n      SUM(CASE WHEN {match} THEN 1 ELSE 0 END) AS {column}"

    def unit_columns(self, name: str, metric: QuantileMetric, alias: str) -> str:
        column = quote_ident(quantile_count_column(name))
        return f",\n  COALESCE({alias}.{column}, 0) AS {column}"

    # ---- analysis ---------------------------------------------------------------------------

    def read_per_arm(
        self,
        warehouse: Warehouse,
        config: ExperimentConfig,
        name: str,
        metric: QuantileMetric,
        units_table: str,
        run_date: date,
    ) -> dict[str, QuantileSummary]:
        # The order-statistics machinery is the analysis's (its tests patch its pieces there);
        # imported here because the analysis imports the kinds.
        from ab_pipeline.analysis import quantile_summaries

        return quantile_summaries(warehouse, config, name, metric, units_table, run_date)

    def arm_entry(self, summary: QuantileSummary) -> dict[str, Any]:
        return {"events": summary.n, "value": summary.estimate}

    def compare(
        self, control: QuantileSummary, treated: QuantileSummary, alpha: float
    ) -> Comparison:
        return compare_quantiles(control, treated, alpha)

    # ---- text -------------------------------------------------------------------------------

    def plain_sentence(
        self, treated: Mapping[str, Any], control: Mapping[str, Any], units: str
    ) -> str:
        return (
            f"{fmt_num(treated['value'])} over {fmt_count(treated['events'])} events vs "
            f"{fmt_num(control['value'])} over {fmt_count(control['events'])} events"
        )

    # ---- simulation -------------------------------------------------------------------------

    def simulated_event(self, metric: QuantileMetric) -> str | None:
        return metric.event

    def needs_values(self, metric: QuantileMetric) -> bool:
        return True

    def expected_value(
        self, metric: QuantileMetric, count: float, any_event: float, value: Any, arm: str
    ) -> float:
        return float(value.quantile(arm, metric.quantile))
