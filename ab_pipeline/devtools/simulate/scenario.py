"""The scenario: one experiment's truth (`simulations/<experiment>.yaml`), parsed and checked;
the shape of the data it becomes."""

from __future__ import annotations

import math
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
    _problems_from,
    _Strict,
)
from ab_pipeline.core.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    pass

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
