"""The experiment config contract (docs/config.md), as strict pydantic models.

Unknown fields are errors so a typo cannot pass silently. Loading is cheap (pydantic and yaml
only) because the DAG factory calls it at parse time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ab_pipeline.core.errors import ConfigError, ConfigProblem

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_KEY = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
KEY_PATTERN = _KEY  # public: the CLI checks the experiment keys it is given
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Airflow's cron presets (airflow.sdk.definitions.timetables._cron.CRON_PRESETS); the DAG factory
# hands the expression to a CronTriggerTimetable.
CRON_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}


def parse_duration(text: Any) -> timedelta:
    """`10m`, `36h`, `7d`, `2w` -> timedelta. Raises ValueError naming the bad text."""
    if isinstance(text, timedelta):
        return text
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration; write e.g. 10m, 36h or 7d")
    amount, unit = int(match.group(1)), match.group(2)
    if amount <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return timedelta(seconds=amount * _UNIT_SECONDS[unit])


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    Field(json_schema_extra={"type": "string", "pattern": _DURATION.pattern}),
    PlainSerializer(format_duration, return_type=str),
]


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError(f"{value!r} is not an email address")
    return value


class _Strict(BaseModel):
    # allow_inf_nan=False: `.inf` / `.nan` in YAML are floats to pydantic; no field of the
    # contract means anything non-finite (`min_lift: .inf` would make SHIP unreachable).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Hypothesis(_Strict):
    change: str = Field(min_length=1)
    metric: str
    direction: Literal["increase", "decrease"]
    mechanism: str | None = None


def _checked_select_text(sql: str) -> str:
    """User SQL (a metric's or a source's `sql:`) is one read-only SELECT.

    Parsed (sqlglot, imported only for configs with `sql:`) in every supported dialect that
    reads it; the run checks it again in its warehouse's own dialect.
    """
    from ab_pipeline.core.sql_safety import UnsafeSQL, checked_in_any_dialect

    try:
        checked_in_any_dialect(sql)
    except UnsafeSQL as error:
        raise ValueError(f"not one read-only SELECT: {error}") from None
    return sql


class SqlSource(_Strict):
    """A source given as a query in the warehouse's own dialect, returning the contract's
    columns (docs/warehouse.md): a team maps its own tables without building views."""

    sql: str = Field(min_length=1)

    @field_validator("sql")
    @classmethod
    def _one_select(cls, sql: str) -> str:
        return _checked_select_text(sql)


def _source_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "table"
    if isinstance(value, dict | SqlSource):
        return "sql"
    return None


# A table name, or `{sql: SELECT ...}`. The tag (`table` / `sql`) is dropped from error
# locations (`_problems_from`), so a bad query is reported at `source.events.sql`.
SourceRelation = Annotated[
    Annotated[str, Tag("table")] | Annotated[SqlSource, Tag("sql")],
    Discriminator(
        _source_kind,
        custom_error_type="source_relation",
        custom_error_message="give a table name ([schema.]identifier) or {sql: SELECT ...}",
    ),
]
SourceName = Literal["exposures", "events"]
# The columns a source query returns (docs/warehouse.md), in the contract's order.
SOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "exposures": (
        "experiment_key",
        "unit_id",
        "arm",
        "exposed_at",
        "is_internal",
        "is_bot",
        "properties",
    ),
    "events": ("unit_id", "event_name", "occurred_at", "value", "experiment_key"),
}


class Source(_Strict):
    conn_id: str = "ab_warehouse"
    exposures: SourceRelation = "exposures"
    events: SourceRelation = "events"
    # Where the run's scratch (units) table goes; default: the exposures table's schema, so a
    # schema-qualified source stays self-contained (an SQL source has none: the connection's
    # default schema).
    work_schema: str | None = None

    @field_validator("exposures", "events")
    @classmethod
    def _table_name(cls, value: str | SqlSource) -> str | SqlSource:
        # Table names are interpolated into SQL: allow only (schema.)identifier.
        if not isinstance(value, str):
            return value
        if not all(_IDENT.match(part) for part in value.split(".")) or value.count(".") > 1:
            raise ValueError(
                f"{value!r} is not a table name ([schema.]identifier); give a query as "
                "{sql: SELECT ...}"
            )
        return value

    @field_validator("work_schema")
    @classmethod
    def _schema_name(cls, value: str | None) -> str | None:
        if value is not None and not _IDENT.match(value):
            raise ValueError(f"{value!r} is not a schema name (identifier)")
        return value

    def table(self, which: SourceName) -> str | None:
        """The source's table name, or None when it is given as `{sql: ...}`."""
        relation = getattr(self, which)
        return relation if isinstance(relation, str) else None

    def sql(self, which: SourceName) -> str | None:
        """The source's query, or None when it is a table."""
        relation = getattr(self, which)
        return None if isinstance(relation, str) else relation.sql

    def describe(self, which: SourceName) -> str:
        """How messages name the source: its table, or `source.<which>.sql`."""
        return self.table(which) or f"source.{which}.sql"

    @property
    def units_schema(self) -> str | None:
        table = self.table("exposures")
        schema = table.rpartition(".")[0] if table else ""
        return self.work_schema or schema or None


class Audience(_Strict):
    exclude_internal: bool = True
    exclude_bots: bool = True


class Unless(_Strict):
    event: str = Field(min_length=1)
    within: Duration


def _signed_offset(text: Any) -> timedelta:
    """`0`, `-1d`, `+2h`: an offset from the unit's first exposure (sign allowed)."""
    if isinstance(text, timedelta):
        return text
    raw = str(text).strip()
    if raw in ("0", "0s", "0m", "0h", "0d"):
        return timedelta(0)
    sign = -1 if raw.startswith("-") else 1
    return sign * parse_duration(raw.lstrip("+-"))


class Cuped(_Strict):
    """CUPED covariate: a metric counted over [exposure - lookback, exposure + until).

    `until` defaults to 0 (the window ends at the first exposure); a positive `until` would let
    the treatment move the covariate and bias the estimate, so it is a config error.
    """

    covariate: str = "same"
    lookback: Duration
    until: Annotated[
        timedelta,
        BeforeValidator(_signed_offset),
        Field(json_schema_extra={"type": "string"}),
        PlainSerializer(lambda v: "0" if not v else ("-" + format_duration(-v)), return_type=str),
    ] = timedelta(0)

    @model_validator(mode="after")
    def _pre_exposure(self) -> Cuped:
        if self.until > timedelta(0):
            raise ValueError(
                "the covariate window reaches past the first exposure (until > 0): a CUPED "
                "covariate must be measured before exposure"
            )
        if -self.until >= self.lookback:
            raise ValueError("the covariate window is empty: lookback must exceed -until")
        return self


class _MetricBase(_Strict):
    event: str | None = None
    sql: str | None = None
    window: Duration | None = None
    description: str | None = None
    cuped: Cuped | None = None

    @field_validator("sql")
    @classmethod
    def _one_select(cls, sql: str | None) -> str | None:
        return None if sql is None else _checked_select_text(sql)

    @model_validator(mode="after")
    def _event_or_sql(self) -> _MetricBase:
        if (self.event is None) == (self.sql is None):
            raise ValueError("give exactly one of `event` or `sql`")
        if self.sql is not None and self.window is not None:
            raise ValueError("`window` applies to `event` metrics; a `sql` metric defines its own")
        if self.sql is not None and self.cuped is not None and self.cuped.covariate == "same":
            raise ValueError("`cuped.covariate: same` needs an `event` metric")
        return self


class ProportionMetric(_MetricBase):
    """Share of units with at least one matching event in the window (optionally `unless`)."""

    type: Literal["proportion"]
    unless: Unless | None = None

    @model_validator(mode="after")
    def _unless_needs_event(self) -> ProportionMetric:
        if self.unless is not None and self.sql is not None:
            raise ValueError("`unless` applies to `event` metrics only")
        return self


class MeanMetric(_MetricBase):
    """Per-unit sum (or count) of `value` in the window, averaged over units."""

    type: Literal["mean"]
    aggregate: Literal["sum", "count"] = "sum"


class QuantileMetric(_Strict):
    """A quantile of `value` over all matching events of enrolled units."""

    type: Literal["quantile"]
    event: str = Field(min_length=1)
    quantile: float = Field(gt=0, lt=1)
    window: Duration | None = None
    description: str | None = None


class RatioPart(_Strict):
    """One side of a ratio: per-unit sum (or count) of an event's `value` in the window."""

    event: str = Field(min_length=1)
    aggregate: Literal["sum", "count"] = "count"


class RatioMetric(_Strict):
    """sum over units of numerator / sum over units of denominator (e.g. clicks per session)."""

    type: Literal["ratio"]
    numerator: RatioPart
    denominator: RatioPart
    window: Duration | None = None
    description: str | None = None


Metric = Annotated[
    ProportionMetric | MeanMetric | QuantileMetric | RatioMetric, Field(discriminator="type")
]


class MetricRef(_Strict):
    """A metric of the catalog (ab_pipeline.core.catalog), by name, with this experiment's
    overrides.

    Resolved into the catalog's definition before the config is validated; only the JSON Schema
    shows it (an editor accepts `{ref: name}` where a metric goes).
    """

    ref: str = Field(pattern=_IDENT.pattern)
    window: Duration | None = None
    cuped: Cuped | None = None


@dataclass(frozen=True)
class MetricSource:
    """Where a referenced metric's definition came from: its catalog name and file."""

    catalog_metric: str
    catalog_file: str


class Guardrail(_Strict):
    """A budget on treatment - control. Exactly one budget kind."""

    max_increase: float | None = Field(default=None, ge=0)
    max_decrease: float | None = Field(default=None, ge=0)
    max_relative_increase: float | None = Field(default=None, ge=0)
    max_relative_decrease: float | None = Field(default=None, ge=0)
    # Non-inferiority by default: the one-sided bound on harm must sit inside the budget.
    evidence: Literal["point", "interval"] = "interval"

    @model_validator(mode="after")
    def _one_budget(self) -> Guardrail:
        given = [name for name, value in self.budgets().items() if value is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of max_increase, max_decrease, max_relative_increase, "
                f"max_relative_decrease (got {', '.join(given) or 'none'})"
            )
        return self

    def budgets(self) -> dict[str, float | None]:
        return {
            "max_increase": self.max_increase,
            "max_decrease": self.max_decrease,
            "max_relative_increase": self.max_relative_increase,
            "max_relative_decrease": self.max_relative_decrease,
        }

    @property
    def budget_kind(self) -> str:
        return next(name for name, value in self.budgets().items() if value is not None)

    @property
    def budget(self) -> float:
        value = self.budgets()[self.budget_kind]
        assert value is not None
        return value

    @property
    def harmful_direction(self) -> Literal["increase", "decrease"]:
        return "increase" if self.budget_kind.endswith("increase") else "decrease"

    @property
    def relative(self) -> bool:
        return self.budget_kind.startswith("max_relative")


class CatalogEntryFields(_Strict):
    """What a catalog entry has besides the metric's own fields (ab_pipeline.core.catalog)."""

    description: str = Field(min_length=1)
    owner: str
    # The budget an experiment gets when it lists the metric as a guardrail without one.
    guardrail: Guardrail | None = None

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: str) -> str:
        return _email(value)


class GuardrailPlan(_Strict):
    """What a guardrail's non-inferiority sample size needs besides its budget: the control
    rate (proportion) or mean, and for a mean metric the per-unit standard deviation."""

    baseline: float
    sd: float | None = Field(default=None, gt=0)


class Plan(_Strict):
    """The primary's planned sample size (docs/statistics.md, Planning).

    Proportion primary: `baseline` is the control rate and `mde` the absolute change (signed;
    `baseline + mde` must stay a rate). Mean or ratio primary: `sd` is the per-unit standard
    deviation (for a ratio, of the linearised (X - R Y) / mean Y) and `mde` is in the metric's
    unit. `formula`: fleiss (default; reaches the stated power), pooled (the textbook 2p(1-p))
    or unpooled. `guardrails`: baselines for each guardrail's non-inferiority sample size.
    """

    # sd precedes baseline so the baseline's check knows which kind of plan it is.
    sd: float | None = Field(default=None, gt=0)
    baseline: float
    mde: float
    alpha: float = Field(default=0.05, gt=0, lt=1)
    power: float = Field(default=0.8, gt=0, lt=1)
    formula: Literal["fleiss", "pooled", "unpooled"] = "fleiss"
    # Stated enrolment (units per day, all arms): lets the linter check the plan is reachable
    # before any data exists.
    expected_units_per_day: float | None = Field(default=None, gt=0)
    guardrails: dict[str, GuardrailPlan] = {}

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("sd") is None and not 0 < value < 1:
            raise ValueError(
                f"{value:g}: a rate must be greater than 0 and less than 1 (give `sd` to plan "
                "a mean or ratio metric)"
            )
        return value

    @model_validator(mode="after")
    def _change(self) -> Plan:
        if self.mde == 0:
            raise ValueError("mde must not be 0")
        if self.sd is None and not 0 < self.baseline + self.mde < 1:
            raise ValueError(
                f"baseline + mde = {self.baseline + self.mde:g} must stay between 0 and 1"
            )
        return self


class AssignmentCheck(_Strict):
    """What the assignment gate checks besides the hash (ab_pipeline/gates/assignment.py)."""

    # The event that shows the unit could see the variant (e.g. the page the change is on): an
    # exposure logged before the unit's first such event was logged too early.
    first_event: str | None = Field(default=None, min_length=1)
    # Fail the gate when more than this share of units was exposed early; None: report only.
    max_early_rate: float | None = Field(default=None, ge=0, le=1)


class DecisionRule(_Strict):
    min_lift: float = Field(default=0.0, ge=0)
    srm_alpha: float = Field(default=0.001, gt=0, lt=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)


class Analysis(_Strict):
    """Pre-declared analysis settings (docs/statistics.md).

    correction: across the primary comparisons of several treatment arms (guardrails do not
    spend the primary's alpha). sequential: `none` makes every interim readout CONTINUE;
    `obrien_fleming` allows an interim SHIP/STOP when the Lan-DeMets O'Brien-Fleming-type
    boundary is crossed at one of `looks` equally spaced looks (default: one per day).
    """

    correction: Literal["holm", "bh", "none"] = "holm"
    sequential: Literal["none", "obrien_fleming"] = "none"
    looks: int | None = Field(default=None, ge=1, le=400)


class ExperimentConfig(_Strict):
    key: str
    version: int = Field(ge=1)
    title: str = Field(min_length=1)
    owner: str
    recipients: list[str] = Field(min_length=1)
    hypothesis: Hypothesis
    unit: str = Field(min_length=1)
    arms: dict[str, float]
    control: str
    start: date
    end: date
    schedule: str | None = "@daily"
    source: Source = Source()
    audience: Audience = Audience()
    receipt: list[str] = []
    metrics: dict[str, Metric] = Field(min_length=1)
    primary: str
    guardrails: dict[str, Guardrail] = {}
    plan: Plan | None = None
    decision: DecisionRule = DecisionRule()
    analysis: Analysis = Analysis()
    risks: list[str] = []
    # `hash`: arms come from ab_pipeline.core.assignment (the gate recomputes them); `external`:
    # another system assigns, nothing to recompute.
    assignment: Literal["hash", "external"] = "external"
    assignment_check: AssignmentCheck | None = None
    # Metrics given as catalog references: name -> where the definition came from (set by
    # parse_config; not a field of the file).
    _metric_sources: dict[str, MetricSource] = PrivateAttr(default_factory=dict)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not _KEY.match(value):
            raise ValueError(
                f"{value!r}: use lowercase letters, digits and '-' (at most 63), starting with a "
                "letter or digit"
            )
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        """A cron expression or preset, checked here: Airflow would drop a bad one at parse time
        with an error naming only the DAG file."""
        if value is None:
            return None
        from croniter import croniter  # what Airflow's cron timetables validate with

        if value in ("@once", "@continuous"):
            raise ValueError(
                f"{value!r}: a readout runs on a cron schedule; use null for manual runs only"
            )
        expression = CRON_PRESETS.get(value, value)
        if not croniter.is_valid(expression):
            raise ValueError(
                f"{value!r} is not a cron expression (minute hour day month weekday, e.g. "
                f"'0 6 * * *'), one of {', '.join(CRON_PRESETS)}, or null (manual runs only)"
            )
        return value

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: str) -> str:
        return _email(value)

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [_email(v) for v in value]

    @field_validator("arms")
    @classmethod
    def _arms(cls, arms: dict[str, float]) -> dict[str, float]:
        if len(arms) < 2:
            raise ValueError("an experiment needs at least two arms")
        for name, share in arms.items():
            if not _IDENT.match(name):
                raise ValueError(f"arm {name!r}: use letters, digits and '_'")
            if not 0 < share < 1:
                raise ValueError(f"arm {name!r}: allocation {share} must be between 0 and 1")
        total = sum(arms.values())
        if abs(total - 1) > 1e-6:
            raise ValueError(f"allocations must sum to 1 (they sum to {total:g})")
        return arms

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, metrics: dict[str, Any]) -> dict[str, Any]:
        for name in metrics:
            if not _IDENT.match(name):
                raise ValueError(f"metric {name!r}: use letters, digits and '_'")
        return metrics

    @field_validator("receipt")
    @classmethod
    def _receipt(cls, fields: list[str]) -> list[str]:
        for name in fields:
            if not _IDENT.match(name):
                raise ValueError(f"receipt field {name!r}: use letters, digits and '_'")
        return fields

    @model_validator(mode="after")
    def _cross_references(self) -> ExperimentConfig:
        problems = []
        if self.control not in self.arms:
            problems.append(f"control {self.control!r} is not one of the arms {sorted(self.arms)}")
        if self.end < self.start:
            problems.append(f"end {self.end} is before start {self.start}")
        if self.primary not in self.metrics:
            problems.append(f"primary {self.primary!r} is not a defined metric")
        elif isinstance(self.metrics[self.primary], QuantileMetric):
            problems.append("the primary metric must be a proportion, a mean or a ratio")
        if self.hypothesis.metric != self.primary:
            problems.append(
                f"hypothesis.metric {self.hypothesis.metric!r} is not the primary {self.primary!r}"
            )
        for name in self.guardrails:
            if name not in self.metrics:
                problems.append(f"guardrail {name!r} is not a defined metric")
            elif name == self.primary:
                problems.append(f"guardrail {name!r} is the primary metric")
        problems += self._cuped_problems()
        problems += self._plan_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _cuped_problems(self) -> list[str]:
        problems = []
        for name, metric in self.metrics.items():
            cuped = getattr(metric, "cuped", None)
            if cuped is None or cuped.covariate == "same":
                continue
            other = self.metrics.get(cuped.covariate)
            if not isinstance(other, ProportionMetric | MeanMetric) or other.event is None:
                problems.append(
                    f"metric {name!r}: cuped.covariate {cuped.covariate!r} is not an event "
                    "proportion or mean metric"
                )
        return problems

    def _plan_problems(self) -> list[str]:
        if self.plan is None:
            return []
        problems = [
            f"plan.guardrails.{name}: not a guardrail of this experiment"
            for name in self.plan.guardrails
            if name not in self.guardrails
        ]
        primary = self.metrics.get(self.primary)
        if isinstance(primary, MeanMetric | RatioMetric) and self.plan.sd is None:
            problems.append(
                f"plan.sd: the primary {self.primary!r} is a {primary.type} metric; its plan "
                "needs the per-unit standard deviation"
            )
        return problems

    @property
    def metric_sources(self) -> dict[str, MetricSource]:
        """The metrics taken from the catalog, and where from; inline metrics are absent."""
        return dict(self._metric_sources)

    @property
    def planned_looks(self) -> int:
        """Looks the sequential rule plans for: `analysis.looks`, else one per day."""
        return self.analysis.looks or max((self.end - self.start).days, 1)

    @property
    def dag_id(self) -> str:
        return f"ab_{self.key.replace('-', '_')}"

    @property
    def treatments(self) -> list[str]:
        return [arm for arm in self.arms if arm != self.control]


_METRIC_TYPES = ("proportion", "mean", "quantile", "ratio")


def _problems_from(error: ValidationError) -> list[ConfigProblem]:
    problems = []
    for item in error.errors():
        # Drop the union tag pydantic inserts for discriminated metrics (metrics.x.proportion.y),
        # and only that: a field may share a tag's name (metrics.x.quantile.quantile).
        loc = [str(p) for p in item["loc"]]
        if len(loc) > 2 and loc[0] == "metrics" and loc[2] in _METRIC_TYPES:
            del loc[2]
        # Likewise a source's tag (source.events.sql.sql -> source.events.sql).
        if len(loc) > 2 and loc[0] == "source" and loc[2] in ("table", "sql"):
            del loc[2]
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see the JSON Schema)"
        problems.append(ConfigProblem(".".join(loc) or "(top level)", message))
    return problems


# Replaces `{ref: ...}` metrics by their catalog definitions before validation: returns the
# data, where each referenced metric came from, and the problems found. Installed by
# ab_pipeline.core.catalog (imported with the package), which builds on this module's models: the
# dependency goes catalog -> config only.
ReferenceResolver = Callable[
    [dict[str, Any], str], tuple[dict[str, Any], dict[str, "MetricSource"], list[ConfigProblem]]
]
reference_resolver: ReferenceResolver | None = None


def parse_config(data: Any, path: str = "<config>") -> ExperimentConfig:
    """Validate a config's data; `{ref: ...}` metrics are first resolved against the catalog of
    `path` (ab_pipeline.core.catalog), and every problem of either kind is reported together."""
    if not isinstance(data, dict):
        raise ConfigError(path, [ConfigProblem("(top level)", "expected a mapping of fields")])
    sources: dict[str, MetricSource] = {}
    problems: list[ConfigProblem] = []
    if reference_resolver is not None:
        data, sources, problems = reference_resolver(data, path)
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(path, problems + _problems_from(error)) from None
    if problems:
        raise ConfigError(path, problems)
    config._metric_sources = sources
    return config


# libyaml's safe loader parses faster than the pure-Python one (docs/benchmarks.md): the
# dag-processor loads every config on every parse. Same safety (no arbitrary objects); pure
# Python if absent.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate one YAML config. Raises ConfigError naming the file and fields."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except OSError as error:
        raise ConfigError(str(path), [ConfigProblem("(file)", str(error))]) from None
    except yaml.YAMLError as error:
        raise ConfigError(str(path), [ConfigProblem("(yaml)", str(error))]) from None
    return parse_config(data, str(path))


def config_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def json_schema() -> dict[str, Any]:
    schema = ExperimentConfig.model_json_schema(ref_template="#/$defs/{model}")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ab-pipeline experiment config"
    # A metric is inline (by `type`) or a catalog reference (`ref`), resolved before validation.
    ref_schema = MetricRef.model_json_schema(ref_template="#/$defs/{model}")
    schema["$defs"].update(ref_schema.pop("$defs", {}))
    schema["$defs"]["MetricRef"] = ref_schema
    metrics = schema["properties"]["metrics"]
    metrics["additionalProperties"] = {
        "anyOf": [metrics["additionalProperties"], {"$ref": "#/$defs/MetricRef"}]
    }
    return schema
