"""Metric kinds: one module per metric type, each owning its SQL, statistics and text.

See `ab_pipeline.metrics.base` for what a kind provides and `ab_pipeline.metrics.registry`
for which config model each kind handles.
"""

from ab_pipeline.metrics.base import MetricKind
from ab_pipeline.metrics.registry import KINDS, in_column_order, kind_named, kind_of, text_kind

__all__ = ["KINDS", "MetricKind", "in_column_order", "kind_named", "kind_of", "text_kind"]
