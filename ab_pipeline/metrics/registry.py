"""Which kind handles which metric: one entry per metric config model of `ab_pipeline.core.config`.

A new metric type is its config model (added to `config.Metric`), its kind module here and its
test (tests/metrics/); `tests/metrics/test_registry.py` fails while a config type has no kind.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ab_pipeline.metrics.base import MetricKind
from ab_pipeline.metrics.mean import MeanKind
from ab_pipeline.metrics.proportion import ProportionKind
from ab_pipeline.metrics.quantile import QuantileKind
from ab_pipeline.metrics.ratio import RatioKind

KINDS: tuple[MetricKind[Any], ...] = (ProportionKind(), MeanKind(), QuantileKind(), RatioKind())

BY_CONFIG_TYPE: dict[type, MetricKind[Any]] = {kind.config_type: kind for kind in KINDS}
BY_NAME: dict[str, MetricKind[Any]] = {kind.name: kind for kind in KINDS}


def kind_of(metric: Any) -> MetricKind[Any]:
    """The kind of a metric's config model."""
    try:
        return BY_CONFIG_TYPE[type(metric)]
    except KeyError:
        raise TypeError(f"no metric kind handles {type(metric).__name__}") from None


def kind_named(name: str) -> MetricKind[Any]:
    """The kind of a results.json metric's `type`."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown metric type {name!r}") from None


def text_kind(name: object) -> MetricKind[Any]:
    """The kind whose text rules read a results.json metric of this `type`: one this version
    does not know (a hand-edited or newer file) reads in its own unit, as a mean does."""
    return BY_NAME.get(str(name), BY_NAME["mean"])


def in_column_order(
    metrics: Mapping[str, Any],
) -> Iterator[tuple[str, Any, MetricKind[Any]]]:
    """(name, metric, kind) grouped by the kinds' `column_order`, each group in config order:
    the order of the extract's columns."""
    ranked = sorted(enumerate(metrics.items()), key=lambda e: (kind_of(e[1][1]).column_order, e[0]))
    for _, (name, metric) in ranked:
        yield name, metric, kind_of(metric)
