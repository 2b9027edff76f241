"""The scenario against its config: what to generate, per arm and metric, and the expected
values."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ab_pipeline.core.config import (
    ExperimentConfig,
    Metric,
)
from ab_pipeline.core.errors import ConfigProblem
from ab_pipeline.devtools.simulate.scenario import (
    _DAY,
    _UNRELATED,
    MeanTruth,
    ProportionTruth,
    QuantileTruth,
    Scenario,
    ScenarioError,
    _truth_kind,
)
from ab_pipeline.metrics import kind_of

if TYPE_CHECKING:
    pass

# --- the scenario against its config ----------------------------------------------------------

# A metric whose kind can simulate it (one generated event: `simulated_event`).
EventMetric = Metric


@dataclass(frozen=True)
class _Source:
    """One event stream the scenario generates: a metric with a truth of its own."""

    metric: str
    truth: ProportionTruth | MeanTruth | QuantileTruth
    code: int  # event-name code
    unless_code: int | None
    unless_s: int
    span_s: int  # in-window events fall in [first exposure, + span)
    windowed: bool  # whether the metric has a window (noise may then follow it)


@dataclass(frozen=True)
class _Plan:
    """Everything generation needs, checked against the config once."""

    config: ExperimentConfig
    scenario: Scenario
    arms: list[str]
    names: list[str]  # event names by code; the unrelated ones last
    unrelated: range  # codes of unrelated events (names no metric uses)
    sources: list[_Source]
    enroll_s: int  # first exposures fall in [start, + enroll_s)
    end_s: int  # seconds from start midnight to config.end + 1 day (exclusive)
    longest_s: int
    properties: list[str]  # distinct exposure-property JSON texts
    property_codes: list[int]  # (arm, platform, country) combination -> index into properties
    hashed: bool = False  # arms from ab_pipeline.core.assignment of the unit id
    first_event_code: int | None = None

    @property
    def prefix(self) -> str:
        return f"{self.config.key}:u"

    @property
    def id_width(self) -> int:
        return max(6, len(str(self.scenario.total_units)))


def _seconds(delta: timedelta | None) -> int:
    return int(delta.total_seconds()) if delta is not None else 0


def _event_metrics(config: ExperimentConfig) -> dict[str, EventMetric]:
    # Ratio metrics have no single `event` (numerator/denominator) and `sql:` metrics none at
    # all: their kinds give no simulated event, and the simulator skips them.
    return {
        name: m for name, m in config.metrics.items() if kind_of(m).simulated_event(m) is not None
    }


def _event_of(metric: EventMetric) -> str:
    """The metric's event (only event metrics reach the simulator; `sql:` ones cannot)."""
    event = kind_of(metric).simulated_event(metric)
    assert event is not None
    return event


def _longest_window(config: ExperimentConfig) -> int:
    windows = [_seconds(m.window) for m in _event_metrics(config).values() if m.window]
    return max(windows, default=_DAY)  # window-less metrics still get a day to happen in


def _check_arms(scenario: Scenario, arms: list[str]) -> list[ConfigProblem]:
    problems = []
    per_arm: list[tuple[str, dict[str, Any] | None]] = [
        ("assignment", scenario.assignment if isinstance(scenario.assignment, dict) else None),
        ("counts", scenario.counts),
        ("arm_properties", scenario.arm_properties or None),
    ]
    for name, truth in scenario.metrics.items():
        for fld in ("rate", "per_unit_mean"):
            per_arm.append((f"metrics.{name}.{fld}", getattr(truth, fld, None)))
        value = getattr(truth, "value", None)
        if value is not None:
            per_arm.append((f"metrics.{name}.value", value.centre))
    for where, mapping in per_arm:
        if mapping is None:
            continue
        if where == "arm_properties":
            unknown = sorted(set(mapping) - set(arms))
            if unknown:
                problems.append(ConfigProblem(where, f"unknown arms {unknown}"))
        elif sorted(mapping) != sorted(arms):
            problems.append(ConfigProblem(where, f"give exactly the arms {arms}"))
    return problems


def _check_metric(name: str, truth: Any, metric: EventMetric | None) -> list[str]:
    if metric is None:
        return ["not a metric of the config (or a `sql:` metric, which cannot be simulated)"]
    kind = kind_of(metric)
    if _truth_kind(truth) != kind.name:
        return [f"the config's metric is a {kind.name}; its truth does not fit"]
    problems = []
    if isinstance(truth, ProportionTruth):
        if truth.unless_share and kind.unless_of(metric) is None:
            problems.append("unless_share needs an `unless` rule on the config's metric")
        for arm, rate in truth.rate.items():
            if rate / (1 - truth.unless_share) > 1:
                problems.append(f"rate {rate} for {arm} cannot be net of unless_share")
    if kind.needs_values(metric) and truth.value is None:
        problems.append("a metric that sums `value` needs a `value` distribution")
    return problems


def _derived_problem(
    metric: EventMetric, source: _Source | None, metrics: dict[str, EventMetric]
) -> str | None:
    """Why a metric without its own truth cannot be read off another metric's events."""
    if source is None:
        return "no truth given and no other metric generates its events; add metrics.<name>"
    generator = metrics[source.metric]
    if metric.window != generator.window:
        return f"shares its event with {source.metric} but not its window; align the windows"
    if kind_of(metric).unless_of(metric) is not None:
        return "a metric with `unless` needs its own truth"
    if kind_of(generator).unless_of(generator) is not None:
        return f"{source.metric} has an `unless` rule; give this metric its own event"
    if kind_of(metric).needs_values(metric) and getattr(source.truth, "value", None) is None:
        return f"needs values: add a `value` distribution to metrics.{source.metric}"
    return None


def _enroll_seconds(config: ExperimentConfig, scenario: Scenario, longest: int) -> int:
    end_s = ((config.end - config.start).days + 1) * _DAY
    room = end_s - longest
    if scenario.enroll_days is None:
        if room <= 0:
            raise ValueError("the experiment is shorter than its longest window")
        return room
    wanted = scenario.enroll_days * _DAY
    if wanted > room:
        raise ValueError(
            f"{scenario.enroll_days} enrolment days leave no room for the longest window before "
            f"{config.end}; at most {room // _DAY}"
        )
    return wanted


def _property_texts(config: ExperimentConfig, scenario: Scenario) -> tuple[list[str], list[int]]:
    """Distinct exposure-property JSON texts, and the text of each (arm, platform, country)."""
    texts: list[str] = []
    codes = []
    for arm in config.arms:
        for platform in scenario.platforms:
            for country in scenario.countries:
                props = {"platform": platform, "country": country, **scenario.properties}
                props.update(scenario.arm_properties.get(arm, {}))
                text = json.dumps(props, separators=(",", ":"))
                if text not in texts:
                    texts.append(text)
                codes.append(texts.index(text))
    return texts, codes


def build_plan(config: ExperimentConfig, scenario: Scenario) -> _Plan:
    """Check the scenario against its config; raises ScenarioError naming the fields."""
    arms = list(config.arms)
    problems = _check_arms(scenario, arms)
    if scenario.experiment != config.key:
        problems.append(ConfigProblem("experiment", f"is not the config's key {config.key!r}"))
    metrics = _event_metrics(config)
    names: list[str] = []
    sources: list[_Source] = []
    longest = _longest_window(config)
    for name, truth in scenario.metrics.items():
        metric = metrics.get(name)
        problems += [
            ConfigProblem(f"metrics.{name}", p) for p in _check_metric(name, truth, metric)
        ]
        if metric is None:
            continue
        unless = kind_of(metric).unless_of(metric)
        for event in [_event_of(metric)] + ([unless.event] if unless else []):
            if event in names:
                problems.append(
                    ConfigProblem(f"metrics.{name}", f"event {event!r} is generated twice")
                )
            else:
                names.append(event)
        span = _seconds(metric.window) or longest
        if unless and not 2 <= _seconds(unless.within) < span:
            problems.append(
                ConfigProblem(
                    f"metrics.{name}",
                    "`unless.within` must be 2s or more and shorter than the window to simulate",
                )
            )
        sources.append(
            _Source(
                metric=name,
                truth=truth,
                code=names.index(_event_of(metric)),
                unless_code=names.index(unless.event) if unless else None,
                unless_s=_seconds(unless.within) if unless else 0,
                span_s=span,
                windowed=metric.window is not None,
            )
        )
    by_event = {names[s.code]: s for s in sources}
    for name, metric in metrics.items():
        if name not in scenario.metrics:
            reason = _derived_problem(metric, by_event.get(_event_of(metric)), metrics)
            if reason:
                problems.append(ConfigProblem(f"metrics.{name}", reason))
    try:
        enroll_s = _enroll_seconds(config, scenario, longest)
    except ValueError as error:
        problems.append(ConfigProblem("enroll_days", str(error)))
        enroll_s = 0
    hashed = _hashed(config, scenario)
    if scenario.arm_flip_share and not hashed:
        problems.append(ConfigProblem("arm_flip_share", "needs hash assignment"))
    first_event_code = None
    if scenario.first_event is not None:
        if scenario.first_event.event in names:
            problems.append(ConfigProblem("first_event.event", "is a metric's event"))
        first_event_code = len(names)
        names.append(scenario.first_event.event)
    if problems:
        raise ScenarioError(scenario.path, problems)
    generated = len(names)
    properties, property_codes = _property_texts(config, scenario)
    names += [n for n in _UNRELATED if n not in names and n not in _all_event_names(config)]
    return _Plan(
        config=config,
        scenario=scenario,
        arms=arms,
        names=names,
        unrelated=range(generated, len(names)),
        sources=sources,
        enroll_s=enroll_s,
        end_s=((config.end - config.start).days + 1) * _DAY,
        longest_s=longest,
        properties=properties,
        property_codes=property_codes,
        hashed=hashed,
        first_event_code=first_event_code,
    )


def _hashed(config: ExperimentConfig, scenario: Scenario) -> bool:
    if scenario.assignment is None and scenario.counts is None:
        return config.assignment == "hash"
    return scenario.assignment == "hash"


def _all_event_names(config: ExperimentConfig) -> set[str]:
    names = set()
    for metric in _event_metrics(config).values():
        names.add(_event_of(metric))
        if (unless := kind_of(metric).unless_of(metric)) is not None:
            names.add(unless.event)
    return names


def expected_values(config: ExperimentConfig, scenario: Scenario) -> dict[str, dict[str, float]]:
    """The true value of every simulated metric per arm, as the pipeline should estimate it."""
    plan = build_plan(config, scenario)
    metrics = _event_metrics(config)
    by_event = {plan.names[s.code]: s for s in plan.sources}
    values = {}
    for name, metric in metrics.items():
        source = by_event[_event_of(metric)]
        values[name] = {arm: _expected(metric, source, arm) for arm in plan.arms}
    return values


def _expected(metric: EventMetric, source: _Source, arm: str) -> float:
    truth = source.truth
    if isinstance(truth, ProportionTruth):
        count, any_event = truth.rate[arm] * truth.events_per_converter, truth.rate[arm]
    else:
        lam = truth.per_unit_mean[arm] if isinstance(truth, MeanTruth) else truth.per_unit_events
        count, any_event = lam, 1 - math.exp(-lam)
    # build_plan made sure values exist where the metric's kind needs them
    return kind_of(metric).expected_value(metric, count, any_event, truth.value, arm)
