"""`ab-pipeline simulate`: seeded, realistic experiment data in the warehouse contract.

A scenario (`simulations/<experiment>.yaml`) states the truth of one experiment: how many units
enrol, how they are really assigned, and each metric's true value per arm. `simulate` writes
exposures and events for it into a warehouse (DuckDB file or PostgreSQL), creating the
contract tables when missing and replacing only this experiment's rows, so several experiments
share one warehouse and a re-run is idempotent.

The data follows the semantics the extraction SQL implements, so observed values match the
truth up to sampling error (exactly, for proportions, with `exact: true`):

- enrollment is the unit's first exposure; repeat exposures come later, in the same arm;
- a proportion converter has >= 1 matching event inside [first exposure, + window); with
  `unless`, a non-converter may have an in-window event spoiled by an `unless` event within
  `within` after it, and some converters get an `unless` event later than `within`;
- mean and quantile metrics get a Poisson number of events per unit inside the window;
- noise that must not change the truth: metric events before the first exposure and after the
  window, unrelated events, untagged events, internal and bot units (excluded downstream);
- every exposure lies in [start, end] and every event before config.end + 1 day, so a final
  readout on config.end sees no data from the future.

Generation is vectorised numpy over chunks of units (memory bounded by the chunk, not by the
run): global per-arm totals (arm sizes, exclusions, converters) are drawn first and handed out
to chunks by hypergeometric draws, which is distributed exactly like independent per-unit draws
and also makes `counts` and `exact` work when streaming. numpy, pandas and duckdb are imported
inside functions: the CLI imports this module.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    model_validator,
)

from ab_pipeline.core.config import (
    ExperimentConfig,
    Metric,
    _problems_from,
    _Strict,
    load_config,
)
from ab_pipeline.core.errors import ConfigError, ConfigProblem
from ab_pipeline.core.paths import DEFAULT_WAREHOUSE, EXPERIMENTS, SIMULATIONS
from ab_pipeline.metrics import kind_of
from ab_pipeline.warehouse import dialect_of, normalize_url, quote_ident, redacted

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

CHUNK_UNITS = 200_000  # ~2M events a chunk; the same seed and chunk size give the same data
_DAY = 86_400
_STATUS = ("included", "internal", "bot")
_UNRELATED = ("page_view", "search", "settings_opened", "notification_clicked")
_EXPOSURES_DDL = """CREATE TABLE IF NOT EXISTS {table} (
  experiment_key TEXT      NOT NULL,
  unit_id        TEXT      NOT NULL,
  arm            TEXT      NOT NULL,
  exposed_at     TIMESTAMP NOT NULL,
  is_internal    BOOLEAN   DEFAULT FALSE,
  is_bot         BOOLEAN   DEFAULT FALSE,
  properties     JSON
)"""
_EVENTS_DDL = """CREATE TABLE IF NOT EXISTS {table} (
  unit_id        TEXT      NOT NULL,
  event_name     TEXT      NOT NULL,
  occurred_at    TIMESTAMP NOT NULL,
  value          DOUBLE PRECISION,
  experiment_key TEXT
)"""
_EXPOSURE_COLUMNS = "experiment_key, unit_id, arm, exposed_at, is_internal, is_bot, properties"
_EVENT_COLUMNS = "unit_id, event_name, occurred_at, value, experiment_key"


class ScenarioError(ConfigError):
    """A scenario file is invalid, or does not fit its experiment's config."""

    def __init__(self, path: str, problems: list[ConfigProblem]) -> None:
        super().__init__(path, problems)
        lines = "\n".join(f"  {path}: {p}" for p in problems)
        self.args = (f"invalid simulation scenario {path}:\n{lines}",)


# --- the scenario ---------------------------------------------------------------------------


Share = Annotated[float, Field(ge=0, lt=1)]
Probability = Annotated[float, Field(ge=0, le=1)]


class FirstEventTruth(_Strict):
    """A `first_event` per unit (the moment it could see the variant), for the assignment gate:
    just before the first exposure, or after it for an `early_share` of units (logged early)."""

    event: str = Field(min_length=1)
    early_share: Share = 0.0


class ValueDistribution(_Strict):
    """The `value` of generated events: lognormal (median, sigma) or normal (mean, sd)."""

    distribution: Literal["lognormal", "normal"]
    median: dict[str, Annotated[float, Field(gt=0)]] | None = None
    sigma: float | None = Field(default=None, gt=0)
    mean: dict[str, float] | None = None
    sd: float | None = Field(default=None, ge=0)
    decimals: int = Field(default=2, ge=0, le=6)

    @model_validator(mode="after")
    def _parameters(self) -> ValueDistribution:
        wanted, unwanted = (
            (("median", "sigma"), ("mean", "sd"))
            if self.distribution == "lognormal"
            else (("mean", "sd"), ("median", "sigma"))
        )
        missing = [name for name in wanted if getattr(self, name) is None]
        extra = [name for name in unwanted if getattr(self, name) is not None]
        if missing or extra:
            raise ValueError(
                f"a {self.distribution} distribution takes {' and '.join(wanted)}"
                + (f" (missing {', '.join(missing)})" if missing else "")
                + (f" (not {', '.join(extra)})" if extra else "")
            )
        return self

    @property
    def centre(self) -> dict[str, float]:
        """Per-arm median (lognormal) or mean (normal)."""
        centre = self.median if self.distribution == "lognormal" else self.mean
        assert centre is not None
        return centre

    @property
    def spread(self) -> float:
        spread = self.sigma if self.distribution == "lognormal" else self.sd
        assert spread is not None
        return spread

    def expectation(self, arm: str) -> float:
        if self.distribution == "lognormal":
            return self.centre[arm] * math.exp(self.spread**2 / 2)
        return self.centre[arm]

    def quantile(self, arm: str, q: float) -> float:
        z = NormalDist().inv_cdf(q)
        if self.distribution == "lognormal":
            return self.centre[arm] * math.exp(self.spread * z)
        return self.centre[arm] + self.spread * z


class ProportionTruth(_Strict):
    """A proportion metric: the net converter rate per arm (after the `unless` rule)."""

    rate: dict[str, Probability]
    unless_share: Share = 0.0  # of units with an in-window event, the share spoiled by `unless`
    events_per_converter: float = Field(default=1.0, ge=1)  # mean in-window events of a converter
    value: ValueDistribution | None = None  # values on these events (e.g. order value)
    # A fading (novelty) effect: a unit first exposed d days after start has the lift
    # (rate - control rate) * exp(-decay * d). Per-unit coin flips (not with `exact`).
    decay: float | None = Field(default=None, gt=0)


class MeanTruth(_Strict):
    """A mean metric: a Poisson number of events per unit in the window, per arm."""

    per_unit_mean: dict[str, Annotated[float, Field(ge=0)]]
    value: ValueDistribution | None = None  # required when the metric sums `value`


class QuantileTruth(_Strict):
    """A quantile metric: a Poisson number of events per unit, values from `value`."""

    per_unit_events: float = Field(gt=0)
    value: ValueDistribution


def _truth_kind(data: Any) -> str | None:
    if isinstance(data, dict):
        keys = (("rate", "proportion"), ("per_unit_mean", "mean"), ("per_unit_events", "quantile"))
        return next((tag for key, tag in keys if key in data), None)
    kinds: dict[type, str] = {
        ProportionTruth: "proportion",
        MeanTruth: "mean",
        QuantileTruth: "quantile",
    }
    return kinds.get(type(data))


MetricTruth = Annotated[
    Annotated[ProportionTruth, Tag("proportion")]
    | Annotated[MeanTruth, Tag("mean")]
    | Annotated[QuantileTruth, Tag("quantile")],
    Discriminator(
        _truth_kind,
        custom_error_type="metric_truth",
        custom_error_message="give `rate` (proportion metric), `per_unit_mean` (mean metric) "
        "or `per_unit_events` (quantile metric)",
    ),
]


class Scenario(_Strict):
    """The truth of one simulated experiment (see the module docstring and simulations/)."""

    experiment: str
    seed: int = Field(ge=0)
    units: int | None = Field(default=None, gt=0)  # enrolled units, exclusions included
    # True per-unit probabilities (default: the plan), or `hash`: ab_pipeline.core.assignment of the
    # unit id (also the default when the config says `assignment: hash`).
    assignment: dict[str, Probability] | Literal["hash"] | None = None
    arm_flip_share: Share = 0.0  # hash only: units whose exposures log another arm (a bug)
    first_event: FirstEventTruth | None = None
    counts: dict[str, Annotated[int, Field(ge=0)]] | None = None  # exact arm sizes instead
    exact: bool = False  # converters per arm exactly round(rate * analysed units of the arm)
    enroll_days: int | None = Field(default=None, gt=0)
    internal_share: Share = 0.0
    bot_share: Share = 0.0
    repeat_exposure_share: Share = 0.0  # units with 1-2 more exposures (same arm) after the first
    properties: dict[str, str] = {}  # on every exposure (receipt fields)
    arm_properties: dict[str, dict[str, str]] = {}  # per-arm overrides: a broken receipt
    platforms: dict[str, float] = {"web": 0.55, "ios": 0.3, "android": 0.15}
    countries: dict[str, float] = {"US": 0.45, "GB": 0.2, "DE": 0.15, "FR": 0.1, "BR": 0.1}
    untagged_event_share: Share = 0.0  # events with experiment_key NULL
    outside_window_share: Share = 0.2  # units with metric events outside their windows too
    unrelated_events_per_unit: float = Field(default=2.0, ge=0)
    metrics: dict[str, MetricTruth] = Field(min_length=1)

    _path: str = PrivateAttr(default="<scenario>")

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        problems = []
        if self.counts is None and self.units is None:
            problems.append("give `units` (with coin-flip `assignment`) or `counts`")
        if self.counts is not None:
            if self.assignment is not None:
                problems.append("give `assignment` or `counts`, not both")
            if self.units is not None and self.units != sum(self.counts.values()):
                problems.append(f"units {self.units} is not the sum of counts")
            if sum(self.counts.values()) == 0:
                problems.append("counts must enrol at least one unit")
        if isinstance(self.assignment, dict):
            _check_shares("assignment", self.assignment, problems)
        if self.exact and any(getattr(m, "decay", None) for m in self.metrics.values()):
            problems.append("`decay` draws per-unit outcomes; it cannot be `exact`")
        _check_shares("platforms", self.platforms, problems)
        _check_shares("countries", self.countries, problems)
        if self.internal_share + self.bot_share >= 1:
            problems.append("internal_share + bot_share must be below 1")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def path(self) -> str:
        return self._path

    @property
    def total_units(self) -> int:
        return sum(self.counts.values()) if self.counts is not None else int(self.units or 0)

    def with_units(self, units: int) -> Scenario:
        """The same scenario at another size (counts scaled proportionally)."""
        if self.counts is None:
            changed = self.model_copy(update={"units": units})
        else:
            total = sum(self.counts.values())
            counts = {arm: round(n * units / total) for arm, n in self.counts.items()}
            changed = self.model_copy(update={"counts": counts, "units": None})
        changed._path = self._path
        return changed


def _check_shares(name: str, shares: dict[str, float], problems: list[str]) -> None:
    if not shares or abs(sum(shares.values()) - 1) > 1e-6 or min(shares.values()) < 0:
        problems.append(f"{name}: give non-negative shares that sum to 1")


def parse_scenario(data: Any, path: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(path, [ConfigProblem("(top level)", "expected a mapping of fields")])
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as error:
        raise ScenarioError(path, _problems_from(error)) from None
    scenario._path = path
    return scenario


def load_scenario(path: Path) -> Scenario:
    """Read and validate one scenario YAML. Raises ScenarioError naming the file and fields."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ScenarioError(str(path), [ConfigProblem("(file)", str(error))]) from None
    except yaml.YAMLError as error:
        raise ScenarioError(str(path), [ConfigProblem("(yaml)", str(error))]) from None
    return parse_scenario(data, str(path))


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


# --- generation ---------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """One chunk of units with their exposures and events, as arrays."""

    number: np.ndarray  # global unit number (1-based)
    arm: np.ndarray
    status: np.ndarray  # index into _STATUS
    first: np.ndarray  # first exposure, seconds from start midnight
    exp_unit: np.ndarray  # exposure -> index into number
    exp_t: np.ndarray  # seconds from start midnight
    exp_internal: np.ndarray
    exp_bot: np.ndarray
    exp_arm: np.ndarray
    exp_props: np.ndarray
    ev_unit: np.ndarray
    ev_code: np.ndarray
    ev_t: np.ndarray
    ev_value: np.ndarray
    ev_tagged: np.ndarray


@dataclass
class _Events:
    """Event columns collected from the generators of one chunk."""

    unit: list[np.ndarray] = field(default_factory=list)
    code: list[np.ndarray] = field(default_factory=list)
    t: list[np.ndarray] = field(default_factory=list)
    value: list[np.ndarray] = field(default_factory=list)

    def add(
        self, unit: np.ndarray, code: int | np.ndarray, t: np.ndarray, value: np.ndarray | None
    ) -> None:
        import numpy as np

        self.unit.append(unit)
        self.code.append(np.broadcast_to(np.asarray(code, dtype=np.int16), len(unit)))
        self.t.append(t)
        self.value.append(value if value is not None else np.full(len(unit), np.nan))

    def arrays(self) -> tuple[np.ndarray, ...]:
        import numpy as np

        return tuple(np.concatenate(part) for part in (self.unit, self.code, self.t, self.value))


class _Generator:
    """Draws the experiment chunk by chunk from one seeded stream."""

    def __init__(self, plan: _Plan) -> None:
        import numpy as np

        self.plan = plan
        self.rng = np.random.default_rng(plan.scenario.seed)
        self.hash_arms = _hash_arms(plan) if plan.hashed else None
        self.cells = self._cells()  # remaining units per (arm, status)
        self.included = self.cells[:, 0].copy()  # remaining analysed units per arm
        self.good = {  # remaining analysed converters per proportion source and arm
            s.metric: self._converters(s.truth)
            for s in plan.sources
            if isinstance(s.truth, ProportionTruth)
        }

    def _cells(self) -> np.ndarray:
        import numpy as np

        scenario, arms = self.plan.scenario, self.plan.arms
        status = np.array(
            [
                1 - scenario.internal_share - scenario.bot_share,
                scenario.internal_share,
                scenario.bot_share,
            ]
        )
        status = np.clip(status, 0, 1)
        if scenario.counts is not None or self.hash_arms is not None:
            sizes = (
                np.bincount(self.hash_arms, minlength=len(arms))
                if self.hash_arms is not None
                else [scenario.counts[arm] for arm in arms]  # type: ignore[index]
            )
            rows = [self.rng.multinomial(size, status) for size in sizes]
            return np.array(rows, dtype=np.int64)
        assignment = scenario.assignment
        if not isinstance(assignment, dict):
            assignment = self.plan.config.arms
        p = np.outer([assignment[arm] for arm in arms], status).ravel()
        cells = self.rng.multinomial(scenario.total_units, p / p.sum())
        return cells.reshape(len(arms), len(_STATUS)).astype(np.int64)

    def _converters(self, truth: ProportionTruth) -> np.ndarray:
        import numpy as np

        rates = np.array([truth.rate[arm] for arm in self.plan.arms])
        if self.plan.scenario.exact:
            return np.floor(rates * self.included + 0.5).astype(np.int64)
        return self.rng.binomial(self.included, rates).astype(np.int64)

    def chunks(self, size: int) -> Iterator[_Chunk]:
        total = self.plan.scenario.total_units
        for start in range(0, total, size):
            yield self._chunk(start, min(size, total - start))

    def _chunk(self, start: int, n: int) -> _Chunk:
        import numpy as np

        rng, plan = self.rng, self.plan
        if self.hash_arms is not None:
            arm, status = self._hashed_labels(self.hash_arms[start : start + n])
        else:
            take = rng.multivariate_hypergeometric(self.cells.ravel(), n, method="marginals")
            self.cells -= take.reshape(self.cells.shape)
            labels = np.repeat(np.arange(take.size), take)
            rng.shuffle(labels)
            arm, status = labels // len(_STATUS), labels % len(_STATUS)
        first = rng.integers(0, plan.enroll_s, n)
        exposures = self._exposures(arm, status, first)
        if plan.scenario.arm_flip_share:
            exposures["exp_arm"] = self._flipped(arm)[exposures["exp_unit"]]
        events = _Events()
        for source in plan.sources:
            self._source_events(events, source, arm, status, first)
        if plan.first_event_code is not None:
            self._first_events(events, first)
        self._unrelated_events(events, first)
        unit, code, t, value = events.arrays()
        # Untagged events are an instrumentation warning, not a different truth.
        tagged = rng.random(len(unit)) >= plan.scenario.untagged_event_share
        self.included -= np.bincount(arm[status == 0], minlength=len(plan.arms))
        number = np.arange(start + 1, start + n + 1)
        return _Chunk(
            number,
            arm,
            status,
            first,
            **exposures,
            ev_unit=unit,
            ev_code=code,
            ev_t=t,
            ev_value=value,
            ev_tagged=tagged,
        )

    def _hashed_labels(self, arm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Arms fixed by the hash; statuses handed out from the arm's remaining cells."""
        import numpy as np

        status = np.zeros(len(arm), dtype=np.int64)
        for a in range(len(self.plan.arms)):
            rows = np.flatnonzero(arm == a)
            take = self.rng.multivariate_hypergeometric(self.cells[a], len(rows))
            self.cells[a] -= take
            labels = np.repeat(np.arange(len(_STATUS)), take)
            self.rng.shuffle(labels)
            status[rows] = labels
        return arm.astype(np.int64), status

    def _flipped(self, arm: np.ndarray) -> np.ndarray:
        """The arm logged for each unit: another arm for an `arm_flip_share` of them."""
        import numpy as np

        k = len(self.plan.arms)
        flip = self.rng.random(len(arm)) < self.plan.scenario.arm_flip_share
        other = (arm + self.rng.integers(1, k, len(arm))) % k
        return np.where(flip, other, arm)

    def _first_events(self, events: _Events, first: np.ndarray) -> None:
        """The unit's first `first_event`: up to 10 minutes before its first exposure (not before
        the start), or 1-60 minutes after it for the units whose exposure was logged early."""
        import numpy as np

        truth = self.plan.scenario.first_event
        assert truth is not None and self.plan.first_event_code is not None
        n = len(first)
        early = self.rng.random(n) < truth.early_share
        before = np.maximum(first - self.rng.integers(0, 600, n), 0)
        after = first + self.rng.integers(60, 3600, n)
        t = np.where(early, after, before)
        keep = t < self.plan.end_s
        events.add(np.arange(n)[keep], self.plan.first_event_code, t[keep], None)

    def _exposures(
        self, arm: np.ndarray, status: np.ndarray, first: np.ndarray
    ) -> dict[str, np.ndarray]:
        import numpy as np

        rng, plan, n = self.rng, self.plan, len(arm)
        repeat = rng.random(n) < plan.scenario.repeat_exposure_share
        extra = np.where(repeat, rng.integers(1, 3, n), 0)
        rows = np.repeat(np.arange(n), extra)
        later = first[rows] + rng.integers(1, plan.end_s - first[rows])
        unit = np.concatenate([np.arange(n), rows])
        t = np.concatenate([first, later])
        # Bots are flagged on their last generated exposure only: exclusion must look at any
        # exposure, not just the first.
        last = np.arange(n)
        if len(rows):
            ends = np.flatnonzero(np.r_[rows[1:] != rows[:-1], True])
            last[rows[ends]] = n + ends
        bot = np.zeros(len(unit), dtype=bool)
        bot[last[status == 2]] = True
        platform = rng.choice(len(plan.scenario.platforms), n, p=_probs(plan.scenario.platforms))
        country = rng.choice(len(plan.scenario.countries), n, p=_probs(plan.scenario.countries))
        combo = (arm * len(plan.scenario.platforms) + platform) * len(plan.scenario.countries)
        props = np.asarray(plan.property_codes)[combo + country]
        return {
            "exp_unit": unit,
            "exp_t": t,
            "exp_internal": status[unit] == 1,
            "exp_bot": bot,
            "exp_arm": arm[unit],
            "exp_props": props[unit],
        }

    def _converted(self, source: _Source, arm: np.ndarray, status: np.ndarray) -> np.ndarray:
        """Which units convert: exact per-arm totals among analysed units, coin flips otherwise."""
        import numpy as np

        rng = self.rng
        truth = source.truth
        assert isinstance(truth, ProportionTruth)
        good = self.good[source.metric]
        converted = np.zeros(len(arm), dtype=bool)
        for a in range(len(self.plan.arms)):
            pool = np.flatnonzero((arm == a) & (status == 0))
            if len(pool) == 0:
                continue
            k = rng.hypergeometric(good[a], self.included[a] - good[a], len(pool))
            converted[rng.choice(pool, k, replace=False)] = True
            good[a] -= k
        rates = np.array([truth.rate[a] for a in self.plan.arms])
        excluded = np.flatnonzero(status != 0)
        converted[excluded] = rng.random(len(excluded)) < rates[arm[excluded]]
        return converted

    def _decayed(self, truth: ProportionTruth, arm: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Per-unit coin flips at a rate whose lift over control fades with the exposure day."""
        import numpy as np

        assert truth.decay is not None
        rates = np.array([truth.rate[a] for a in self.plan.arms])
        control = truth.rate[self.plan.config.control]
        rate = control + (rates[arm] - control) * np.exp(-truth.decay * (first // _DAY))
        return self.rng.random(len(arm)) < rate

    def _values(self, source: _Source, arm: np.ndarray) -> np.ndarray | None:
        import numpy as np

        dist: ValueDistribution | None = getattr(source.truth, "value", None)
        if dist is None:
            return None
        centre = np.array([dist.centre[a] for a in self.plan.arms])[arm]
        noise = self.rng.standard_normal(len(arm)) * dist.spread
        raw = centre * np.exp(noise) if dist.distribution == "lognormal" else centre + noise
        return np.round(raw, dist.decimals)

    def _source_events(
        self,
        events: _Events,
        source: _Source,
        arm: np.ndarray,
        status: np.ndarray,
        first: np.ndarray,
    ) -> None:
        import numpy as np

        rng, truth = self.rng, source.truth
        if isinstance(truth, ProportionTruth):
            converted = (
                self._decayed(truth, arm, first)
                if truth.decay
                else self._converted(source, arm, status)
            )
            units = np.flatnonzero(converted)
            extra = truth.events_per_converter - 1
            counts = 1 + (rng.poisson(extra, len(units)) if extra > 0 else 0)
            rows = np.repeat(units, counts)
        else:
            lam = (
                np.array([truth.per_unit_mean[a] for a in self.plan.arms])[arm]
                if isinstance(truth, MeanTruth)
                else np.full(len(arm), truth.per_unit_events)
            )
            rows = np.repeat(np.arange(len(arm)), rng.poisson(lam))
        t = first[rows] + rng.integers(0, source.span_s, len(rows))
        events.add(rows, source.code, t, self._values(source, arm[rows]))
        if isinstance(truth, ProportionTruth) and source.unless_code is not None:
            self._unless_events(events, source, arm, first, converted, rows, t)
        self._outside_events(events, source, arm, first)

    def _unless_events(
        self,
        events: _Events,
        source: _Source,
        arm: np.ndarray,
        first: np.ndarray,
        converted: np.ndarray,
        rows: np.ndarray,
        t: np.ndarray,
    ) -> None:
        """Spoiled non-converters (unless within D), and converters with an unless after D."""
        import numpy as np

        rng, plan, truth = self.rng, self.plan, source.truth
        assert isinstance(truth, ProportionTruth) and source.unless_code is not None
        share, within = truth.unless_share, source.unless_s
        # Spoiling q of the non-converters makes spoiled / (converters + spoiled) = share.
        rates = np.array([truth.rate[a] for a in plan.arms])
        q = np.where(rates < 1, rates * share / ((1 - share) * np.maximum(1 - rates, 1e-12)), 0)
        spoiled = np.flatnonzero(~converted & (rng.random(len(arm)) < q[arm]))
        # The spoiled event sits early enough that its `unless` lands inside the window too.
        e_t = first[spoiled] + rng.integers(0, source.span_s - within, len(spoiled))
        u_t = e_t + rng.integers(1, within, len(spoiled))
        events.add(spoiled, source.code, e_t, self._values(source, arm[spoiled]))
        events.add(spoiled, source.unless_code, u_t, None)
        if len(rows) == 0:
            return
        # Converters: an unless event later than `within` after their last in-window event.
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        last_t = np.maximum.reduceat(t, starts)
        pick = rng.random(len(starts)) < share
        late = last_t[pick] + within + rng.integers(60, 6 * 3600, int(pick.sum()))
        keep = late < plan.end_s
        events.add(rows[starts][pick][keep], source.unless_code, late[keep], None)

    def _outside_events(
        self, events: _Events, source: _Source, arm: np.ndarray, first: np.ndarray
    ) -> None:
        """Metric events before the first exposure or after the window: never counted."""
        import numpy as np

        rng, plan = self.rng, self.plan
        units = np.flatnonzero(rng.random(len(arm)) < plan.scenario.outside_window_share)
        after = rng.random(len(units)) < 0.5 if source.windowed else np.zeros(len(units), bool)
        before_t = first[units] - rng.integers(60, 3 * _DAY, len(units))
        after_t = first[units] + source.span_s + rng.integers(60, source.span_s + 60, len(units))
        t = np.where(after, after_t, before_t)
        keep = t < plan.end_s
        units, t = units[keep], t[keep]
        events.add(units, source.code, t, self._values(source, arm[units]))
        if source.unless_code is not None:
            # A ticket before the unit was ever exposed spoils nothing.
            pre = units[t < first[units]]
            events.add(pre, source.unless_code, first[pre] - rng.integers(60, _DAY, len(pre)), None)

    def _unrelated_events(self, events: _Events, first: np.ndarray) -> None:
        """Events no metric reads (page views, searches), around the unit's exposure."""
        import numpy as np

        rng, plan = self.rng, self.plan
        per_unit = plan.scenario.unrelated_events_per_unit
        if not plan.unrelated or per_unit == 0:
            return
        rows = np.repeat(np.arange(len(first)), rng.poisson(per_unit, len(first)))
        t = first[rows] + rng.integers(-2 * _DAY, plan.longest_s, len(rows))
        code = rng.integers(plan.unrelated.start, plan.unrelated.stop, len(rows))
        keep = t < plan.end_s
        events.add(rows[keep], code[keep], t[keep], None)


def _hash_arms(plan: _Plan) -> np.ndarray:
    """Arm index of every unit (1..N) by ab_pipeline.core.assignment of its unit id."""
    import numpy as np

    from ab_pipeline.core.assignment import assign_many

    config, width = plan.config, plan.id_width
    ids = (f"{plan.prefix}{n:0{width}d}" for n in range(1, plan.scenario.total_units + 1))
    arms = assign_many(config.key, config.version, ids, config.arms)
    index = {arm: i for i, arm in enumerate(plan.arms)}
    return np.array([index[a] for a in arms], dtype=np.int64)


def _probs(shares: dict[str, float]) -> np.ndarray:
    import numpy as np

    p = np.array(list(shares.values()), dtype=float)
    return p / p.sum()


# --- writing ------------------------------------------------------------------------------------


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _frames(plan: _Plan, chunk: _Chunk, cutoff_s: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The chunk as two small-typed DataFrames; strings are built by the database, not Python."""
    import numpy as np
    import pandas as pd

    base = np.datetime64(plan.config.start.isoformat(), "s")

    def stamp(seconds: np.ndarray) -> np.ndarray:
        return (base + seconds).astype("datetime64[us]")

    x = chunk.exp_t < cutoff_s
    exposures = pd.DataFrame(
        {
            "n": chunk.number[chunk.exp_unit[x]],
            "arm": pd.Categorical.from_codes(chunk.exp_arm[x], categories=plan.arms),
            "t": stamp(chunk.exp_t[x]),
            "internal": chunk.exp_internal[x],
            "bot": chunk.exp_bot[x],
            "props": pd.Categorical.from_codes(chunk.exp_props[x], categories=plan.properties),
        }
    )
    e = chunk.ev_t < cutoff_s
    events = pd.DataFrame(
        {
            "n": chunk.number[chunk.ev_unit[e]],
            "name": pd.Categorical.from_codes(chunk.ev_code[e], categories=plan.names),
            "t": stamp(chunk.ev_t[e]),
            "v": chunk.ev_value[e],  # NaN reaches the database as NULL
            "tagged": chunk.ev_tagged[e],
        }
    )
    return exposures, events


def _unit_id_sql(plan: _Plan) -> str:
    return f"{_literal(plan.prefix)} || lpad(CAST(n AS VARCHAR), {plan.id_width}, '0')"


def _exposure_select(plan: _Plan, source: str) -> str:
    return (
        f"SELECT {_literal(plan.config.key)}, {_unit_id_sql(plan)}, CAST(arm AS VARCHAR), t, "
        f"internal, bot, CAST(props AS VARCHAR) FROM {source}"
    )


def _event_select(plan: _Plan, source: str) -> str:
    key = _literal(plan.config.key)
    return (
        f"SELECT {_unit_id_sql(plan)}, CAST(name AS VARCHAR), t, v, "
        f"CASE WHEN tagged THEN {key} END FROM {source}"
    )


class _Sink:
    """A warehouse transaction that takes DDL/DML text and DataFrame chunks."""

    def run(self, sql: str) -> None:
        raise NotImplementedError

    def write(self, table: str, columns: str, frame: pd.DataFrame, select: str) -> None:
        """Insert `select` (which reads the frame as `sim_chunk`) into `table`."""
        raise NotImplementedError

    def finish(self, commit: bool) -> None:
        raise NotImplementedError


class _DuckDBSink(_Sink):
    """Writes through the duckdb API: INSERT ... SELECT over a registered DataFrame.

    `preserve_insertion_order` is off while it writes: the insert then runs in parallel (row
    order in a table means nothing), much faster (docs/benchmarks.md). The setting is
    database-wide, so it is restored afterwards. Unit ids are built in SQL from integers, far
    cheaper than making Python strings.
    """

    def __init__(self, path: str) -> None:
        import duckdb

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(path)
        [(self.ordered,)] = self.con.execute(
            "SELECT current_setting('preserve_insertion_order')"
        ).fetchall()
        self.con.execute("SET preserve_insertion_order = false")
        self.con.execute("BEGIN TRANSACTION")

    def run(self, sql: str) -> None:
        self.con.execute(sql)

    def write(self, table: str, columns: str, frame: pd.DataFrame, select: str) -> None:
        self.con.register("sim_chunk", frame)
        try:
            self.con.execute(f"INSERT INTO {table} ({columns}) {select}")
        finally:
            self.con.unregister("sim_chunk")

    def finish(self, commit: bool) -> None:
        try:
            self.con.execute("COMMIT" if commit else "ROLLBACK")
            self.con.execute(f"SET preserve_insertion_order = {str(bool(self.ordered)).lower()}")
        finally:
            self.con.close()


class _PostgresSink(_Sink):
    """COPY FROM STDIN through the engine's raw psycopg2 connection, one transaction.

    An in-memory DuckDB formats each chunk as CSV (the same SELECT as the DuckDB path, so both
    warehouses get identical rows); psycopg2 streams the file to the server.
    """

    def __init__(self, url: str) -> None:
        import tempfile

        import duckdb

        from ab_pipeline.warehouse import Warehouse

        self.raw = Warehouse(url).engine().raw_connection()
        self.cursor = self.raw.cursor()
        self.formatter = duckdb.connect()
        self.tmp = tempfile.TemporaryDirectory(prefix="ab-simulate-")
        self.csv = Path(self.tmp.name) / "chunk.csv"

    def run(self, sql: str) -> None:
        self.cursor.execute(sql)

    def write(self, table: str, columns: str, frame: pd.DataFrame, select: str) -> None:
        self.formatter.register("sim_chunk", frame)
        try:
            target = _literal(str(self.csv))
            self.formatter.execute(f"COPY ({select}) TO {target} (FORMAT csv, HEADER false)")
        finally:
            self.formatter.unregister("sim_chunk")
        with self.csv.open("rb") as data:
            self.cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)", data)

    def finish(self, commit: bool) -> None:
        try:
            if commit:
                self.raw.commit()
            else:
                self.raw.rollback()
        finally:
            self.cursor.close()
            self.raw.close()
            self.formatter.close()
            self.tmp.cleanup()


def _open_sink(url: str) -> _Sink:
    dialect = dialect_of(url)
    if dialect == "duckdb":
        return _DuckDBSink(normalize_url(url).removeprefix("duckdb:///"))
    if dialect == "postgresql":
        return _PostgresSink(url)
    raise ValueError(f"simulate writes to DuckDB or PostgreSQL, not {dialect!r}")


def _table(name: str, schema: str | None) -> str:
    """The quoted table; `schema` applies to names the config did not qualify itself."""
    if schema and "." not in name:
        name = f"{schema}.{name}"
    return quote_ident(name)


def _prepare(sink: _Sink, plan: _Plan, exposures: str, events: str, schema: str | None) -> None:
    """Create the contract tables if missing and delete this experiment's rows only."""
    if schema:
        sink.run(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    sink.run(_EXPOSURES_DDL.format(table=exposures))
    sink.run(_EVENTS_DDL.format(table=events))
    sink.run(f"DELETE FROM {exposures} WHERE experiment_key = {_literal(plan.config.key)}")
    # The key is [a-z0-9-] (config validation), so the prefix holds no LIKE wildcard.
    sink.run(f"DELETE FROM {events} WHERE unit_id LIKE {_literal(plan.prefix + '%')}")


# --- the API ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationSummary:
    """What one simulation wrote. `enrolled` counts units per arm, `excluded` included."""

    experiment: str
    enrolled: dict[str, int]
    excluded: dict[str, int]  # internal or bot units (the pipeline drops them)
    exposures: int
    events: int
    seconds: float

    @property
    def analysed(self) -> dict[str, int]:
        return {arm: n - self.excluded[arm] for arm, n in self.enrolled.items()}

    def line(self) -> str:
        arms = " / ".join(f"{arm} {n:,}" for arm, n in self.analysed.items())
        return (
            f"{self.experiment}: {sum(self.enrolled.values()):,} units ({arms} after "
            f"{sum(self.excluded.values()):,} internal/bot), {self.exposures:,} exposures, "
            f"{self.events:,} events in {self.seconds:.2f} s"
        )


def simulate(
    config: ExperimentConfig,
    scenario: Scenario,
    warehouse_url: str,
    *,
    schema: str | None = None,
    as_of: date | None = None,
    chunk_units: int = CHUNK_UNITS,
) -> SimulationSummary:
    """Replace the experiment's exposures and events in the warehouse with simulated ones.

    `schema` qualifies the config's (unqualified) table names. `as_of` writes only what the
    warehouse would hold at the end of that day (for interim readouts without future data).
    One transaction: on any error nothing of this experiment changes.
    """
    import numpy as np

    began = time.perf_counter()
    plan = build_plan(config, scenario)
    cutoff = plan.end_s if as_of is None else min(plan.end_s, _day_end(config.start, as_of))
    exposures = _table(config.source.exposures, schema)
    events = _table(config.source.events, schema)
    counts = np.zeros((len(plan.arms), len(_STATUS)), dtype=np.int64)
    written = [0, 0]
    sink = _open_sink(warehouse_url)
    committed = False
    try:
        _prepare(sink, plan, exposures, events, schema)
        for chunk in _Generator(plan).chunks(chunk_units):
            seen = chunk.first < cutoff
            np.add.at(counts, (chunk.arm[seen], chunk.status[seen]), 1)
            exp_frame, ev_frame = _frames(plan, chunk, cutoff)
            sink.write(exposures, _EXPOSURE_COLUMNS, exp_frame, _exposure_select(plan, "sim_chunk"))
            sink.write(events, _EVENT_COLUMNS, ev_frame, _event_select(plan, "sim_chunk"))
            written[0] += len(exp_frame)
            written[1] += len(ev_frame)
        committed = True
    finally:
        sink.finish(commit=committed)
    return SimulationSummary(
        experiment=config.key,
        enrolled={arm: int(counts[i].sum()) for i, arm in enumerate(plan.arms)},
        excluded={arm: int(counts[i, 1:].sum()) for i, arm in enumerate(plan.arms)},
        exposures=written[0],
        events=written[1],
        seconds=time.perf_counter() - began,
    )


def _day_end(start: date, day: date) -> int:
    return ((day - start).days + 1) * _DAY


# --- the CLI ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ab-pipeline simulate",
        description="Write seeded, realistic exposures and events for experiments into a "
        "warehouse, replacing only those experiments' rows.",
    )
    parser.add_argument(
        "scenarios", nargs="*", type=Path, help="scenario YAML files (default: simulations/*.yaml)"
    )
    parser.add_argument("--warehouse", default=DEFAULT_WAREHOUSE, help="SQLAlchemy URL")
    parser.add_argument(
        "--experiments-dir",
        type=Path,
        default=EXPERIMENTS,
        help="where <experiment>.yaml configs are found",
    )
    parser.add_argument("--config", type=Path, help="the config (with a single scenario only)")
    parser.add_argument("--schema", help="schema for the (unqualified) contract tables")
    parser.add_argument(
        "--units", type=_positive, help="override the scenario's number of units (benchmarks)"
    )
    parser.add_argument(
        "--as-of",
        type=date.fromisoformat,
        help="write only the data that exists at the end of this day (YYYY-MM-DD)",
    )
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of units")
    return int(text)


def _simulate_one(path: Path, args: argparse.Namespace) -> SimulationSummary:
    scenario = load_scenario(path)
    config = load_config(args.config or args.experiments_dir / f"{scenario.experiment}.yaml")
    if args.units:
        scenario = scenario.with_units(args.units)
    return simulate(config, scenario, args.warehouse, schema=args.schema, as_of=args.as_of)


def main_simulate(args: list[str] | None = None) -> int:
    """`ab-pipeline simulate`: one line per experiment; exit 2 when a file is invalid."""
    options = _parser().parse_args(args)
    paths = options.scenarios or sorted(SIMULATIONS.glob("*.yaml"))
    if options.config and len(paths) != 1:
        print("simulate: --config needs exactly one scenario", file=sys.stderr)
        return 2
    if not paths:
        print("simulate: no scenarios found", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        try:
            summary = _simulate_one(path, options)
        except ConfigError as error:  # one bad file must not stop the others
            print(error, file=sys.stderr)
            status = 2
            continue
        print(f"{summary.line()} -> {redacted(options.warehouse)}")
    return status
