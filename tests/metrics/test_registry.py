"""Every metric config model has exactly one kind, named as its `type:`."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from ab_pipeline.core.config import Metric, parse_config
from ab_pipeline.metrics import KINDS, in_column_order, kind_named, kind_of, text_kind
from ab_pipeline.metrics.registry import BY_CONFIG_TYPE
from tests.warehouse_fixtures import experiment_data


def config_metric_types() -> list[type]:
    union = get_args(Metric)[0]  # Annotated[<union>, Field(discriminator="type")]
    return list(get_args(union))


def test_every_metric_config_type_has_a_kind() -> None:
    missing = [t.__name__ for t in config_metric_types() if t not in BY_CONFIG_TYPE]
    assert not missing, f"metric config types without a kind in the registry: {missing}"


def test_every_kind_handles_a_metric_config_type_under_its_type_name() -> None:
    types = config_metric_types()
    for kind in KINDS:
        assert kind.config_type in types
        literal = kind.config_type.model_fields["type"].annotation
        assert get_args(literal) == (kind.name,)
    assert len({kind.name for kind in KINDS}) == len(KINDS)


def test_a_results_type_name_finds_its_kind_and_an_unknown_one_is_refused() -> None:
    for kind in KINDS:
        assert kind_named(kind.name) is kind
    with pytest.raises(ValueError, match="unknown metric type 'median'"):
        kind_named("median")
    with pytest.raises(TypeError, match="no metric kind handles str"):
        kind_of("proportion")


def test_a_results_type_this_version_does_not_know_reads_in_its_own_unit() -> None:
    assert text_kind("proportion") is kind_named("proportion")
    assert text_kind("median") is kind_named("mean")
    assert text_kind(None).format_difference(0.5) == "+0.500"


def test_units_table_columns_come_grouped_unit_values_then_ratios_then_quantiles() -> None:
    metrics: dict[str, Any] = {
        "lat": {"type": "quantile", "event": "served", "quantile": 0.9},
        "cps": {"type": "ratio", "numerator": {"event": "c"}, "denominator": {"event": "s"}},
        "conv": {"type": "proportion", "event": "buy"},
        "rev": {"type": "mean", "event": "buy"},
    }
    config = parse_config(experiment_data("order", metrics, "conv"))
    order = [(name, kind.name) for name, _, kind in in_column_order(config.metrics)]
    assert order == [("conv", "proportion"), ("rev", "mean"), ("cps", "ratio"), ("lat", "quantile")]
