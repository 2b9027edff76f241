"""results.json as a typed model: what a run writes, checked where it is written and read.

`Results` is the contract docs/results.md describes, key for key (tests/test_docs.py holds the
two together, and `docs/results.schema.json` is this model's JSON Schema, regenerated with
`ab-pipeline schema --results -o docs/results.schema.json`).

The pipeline keeps handing plain dicts around; the model is a gate on them:

- `validate_results(payload)` checks a payload exactly as it will be serialised (dates and other
  non-JSON values become strings, as `RunContext.write_json` writes them) and raises
  `ResultsInvalid` naming every bad field by its path (`metrics.ctr.comparisons.b.se: ...`);
- `load_results(path)` reads a results.json and returns it as a dict once it validates.

Parts whose keys are fixed forbid any other key (`extra="forbid"`), so a key written by the code
but not documented, or misspelled by a hand edit, is refused. Two parts are open by design and
say so in their docstrings: a gate outcome's top level (a gate may add a diagnostic) and the
`gates` object itself (a registered gate beyond the four named ones). Every number must be
finite: results.json is strict JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Decision = Literal["SHIP", "ITERATE", "STOP", "RERUN", "CONTINUE"]
HumanDecisionValue = Literal["SHIP", "ITERATE", "STOP", "RERUN"]
Status = Literal["interim", "final"]
CorrectionMethod = Literal["holm", "bh", "none"]
BudgetKind = Literal[
    "max_increase", "max_decrease", "max_relative_increase", "max_relative_decrease"
]
Day = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]
Pair = tuple[float, float]


class _Fixed(BaseModel):
    """A part whose keys are fixed: anything else is refused. Types are strict (no "1" for 1,
    no 0 for false) and numbers finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Open(BaseModel):
    """A part that may carry keys beyond its named ones (said why in each subclass)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


# ---- gates ----------------------------------------------------------------------------------


class GateOutcome(_Open):
    """Any gate's outcome: `passed` and a one-line `detail`.

    Open by design: a gate may add its own diagnostics next to these (the brief shows what it
    knows); the gates named in docs/results.md type theirs in the subclasses below.
    """

    passed: bool
    detail: str


class DataQualityCheck(_Fixed):
    name: str
    passed: bool
    detail: str
    unexpected_count: int
    examples: list[str]
    severity: Literal["error", "warning"]  # only an error fails the gate


class DataQualityGate(GateOutcome):
    """`gates.data_quality`: the Great Expectations suite's checks (open: see GateOutcome)."""

    checks: list[DataQualityCheck]
    suite: str


class SrmDayRow(_Fixed):
    day: Day
    counts: dict[str, int]
    p_value: float | None


class SrmPropertyRow(_Fixed):
    value: str | None
    counts: dict[str, int]
    p_value: float | None


class SrmDiagnosis(_Fixed):
    multiple_exposure_rate: float | None
    repeat_exposure_rate: float | None
    by_day: list[SrmDayRow] | None = None
    by_property: dict[str, list[SrmPropertyRow]] | None = None


class SrmGate(GateOutcome):
    """`gates.srm`: the chi-square test of the arm counts (open: see GateOutcome)."""

    p_value: float | None
    statistic: float | None
    alpha: float
    counts: dict[str, int]
    expected: dict[str, float]
    diagnosis: SrmDiagnosis | None = None


class ReceiptMismatch(_Fixed):
    field: str
    values: dict[str, list[str]]


class ReceiptGate(GateOutcome):
    """`gates.receipt`: one value per receipt field, the same in every arm (open: see
    GateOutcome)."""

    fields: list[str]
    mismatches: list[ReceiptMismatch]


class AssignmentExample(_Fixed):
    unit_id: str
    logged: str  # the arm logged (the first by name when several)
    expected: str


class EarlyExposureExample(_Fixed):
    unit_id: str
    first_exposed_at: str
    first_event_at: str


class EarlyExposures(_Fixed):
    event: str
    units: int
    early: int
    rate: float
    without_event: int
    examples: list[EarlyExposureExample]


class AssignmentGate(GateOutcome):
    """`gates.assignment`: logged arms against the hash, exposures before the event (open: see
    GateOutcome)."""

    method: str | None
    units: int
    mismatches: int | None
    rate: float | None
    examples: list[AssignmentExample]
    early_exposures: EarlyExposures | None


class Gates(_Open):
    """`gates`: the four named gates, each null when it did not run.

    Open by design: a gate added to the gate registry appears under its own name, checked as
    a `GateOutcome` (`passed`, `detail`) until it is named here and in docs/results.md.
    """

    data_quality: DataQualityGate | None
    srm: SrmGate | None
    receipt: ReceiptGate | None
    assignment: AssignmentGate | None
    __pydantic_extra__: dict[str, GateOutcome | None] = Field(init=False)


# ---- metrics --------------------------------------------------------------------------------


class ArmValue(_Fixed):
    """One arm of one metric: `units` (a quantile: `events`), its `value`, and per type
    `successes` (proportion) or `numerator` / `denominator` (ratio)."""

    units: int | None = None
    events: int | None = None
    value: float | None
    successes: int | None = None
    numerator: float | None = None
    denominator: float | None = None


class OneSided(_Fixed):
    level: float
    absolute: tuple[float | None, float | None]
    relative: tuple[float | None, float | None] | None


class Correction(_Fixed):
    method: CorrectionMethod
    family: int
    alpha: float


class CupedInfo(_Fixed):
    covariate: str
    lookback: str
    until: str
    theta: float
    variance_reduction: float
    se_unadjusted: float
    absolute_unadjusted: float
    ci_unadjusted: Pair


class SequentialLook(_Fixed):
    method: str
    look: int
    planned_looks: int
    information_fraction: float
    alpha_spent: float
    boundary: float | None
    z: float | None
    crossed: bool


class Comparison(_Fixed):
    """A treatment arm against control, on the metric's own scale."""

    absolute: float
    ci: Pair
    relative: float | None
    relative_ci: Pair | None
    relative_se_log: float | None
    relative_method: str | None
    p_value: float | None
    se: float | None
    method: str
    discrete: bool
    note: str | None = None
    one_sided: OneSided
    p_value_adjusted: float | None = None
    correction: Correction | None = None
    cuped: CupedInfo | None = None
    sequential: SequentialLook | None = None


class Metric(_Fixed):
    role: Literal["primary", "guardrail", "secondary"]
    type: Literal["proportion", "mean", "ratio", "quantile"]
    unit_label: str
    description: str | None
    arms: dict[str, ArmValue]
    comparisons: dict[str, Comparison]


# ---- checks, settings, plan, progress ---------------------------------------------------------


class Check(_Fixed):
    """One check behind the decision; `blocking: false` marks one that never changes it."""

    name: str
    passed: bool
    detail: str
    metric: str | None
    arm: str | None
    observed: float | None
    bound: float | None
    budget: float | None
    budget_kind: BudgetKind | Literal["min_lift"] | None
    outcome: (
        Literal[
            "pass",
            "harmed",
            "not_shown_within_budget",
            "not_evaluable",
            "not_proven",
            "below_min_lift",
        ]
        | None
    ) = None
    units_needed_per_arm: int | None = None
    blocking: bool | None = None


class Hypothesis(_Fixed):
    change: str
    metric: str
    direction: Literal["increase", "decrease"]
    mechanism: str | None


class AnalysisSettings(_Fixed):
    alpha: float
    correction: CorrectionMethod
    sequential: Literal["none", "obrien_fleming"]
    looks: int | None
    planned_looks: int | None
    guardrails_spend_primary_alpha: Literal[False]


class GuardrailPlan(_Fixed):
    baseline: float
    sd: float | None


class GuardrailSize(_Fixed):
    required_per_arm: int
    formula: str
    budget: float
    budget_kind: BudgetKind
    baseline: float
    assumed_effect: float


class Plan(_Fixed):
    """The config's plan plus the sizes it implies."""

    sd: float | None
    baseline: float
    mde: float
    alpha: float
    power: float
    expected_units_per_day: float | None
    guardrails: dict[str, GuardrailPlan]
    required_per_arm: int
    formula: str
    formula_name: Literal["fleiss", "pooled", "unpooled"]
    alpha_per_comparison: float
    comparisons: int
    correction: CorrectionMethod
    guardrail_sizes: dict[str, GuardrailSize]


class Progress(_Fixed):
    planned_per_arm: int
    enrolled_per_arm: dict[str, int]
    fraction: float
    mde_now: float | None
    mde_planned: float
    formula: str
    alpha_per_comparison: float
    enrolment_per_day: float
    days_left: int | None
    days_to_end: int


# ---- novelty, history, changes, human decisions --------------------------------------------


class Cohort(_Fixed):
    exposure_day: Day
    days_since_exposure: int
    absolute: float
    se: float
    ci: Pair
    units: dict[str, int]


class Trend(_Fixed):
    slope: float
    se: float
    p_value: float
    intercept: float
    cohorts: int
    method: str


class NoveltyArm(_Fixed):
    by_cohort_day: list[Cohort]
    trend: Trend | None
    flagged: bool


class Novelty(_Fixed):
    metric: str
    arm: str
    alpha: float
    by_cohort_day: list[Cohort]
    trend: Trend | None
    flagged: bool
    by_arm: dict[str, NoveltyArm]


class HistoryPrimary(_Fixed):
    absolute: float
    ci: tuple[float | None, float | None]


class HistoryEntry(_Fixed):
    run_date: Day
    decision: Decision
    status: Status | None
    primary: HistoryPrimary | None


class Change(_Fixed):
    kind: str
    detail: str


class HumanDecision(_Fixed):
    run_date: Day
    decision: HumanDecisionValue
    by: str
    note: str
    follow_up: Day
    recorded_at: str
    pipeline_decision: Decision | None
    disagrees: bool


# ---- metric definitions (the catalog) --------------------------------------------------------


class MetricDefinition(_Fixed):
    """The definition a metric was analysed with (ab_pipeline.core.catalog)."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    catalog_metric: str | None
    catalog_file: str | None
    # The metric's own config fields (docs/config.md), as resolved: typed by the config model.
    definition: dict[str, Any]


class DefinitionChange(_Fixed):
    metric: str
    fields: list[str]
    previous_run_date: Day
    previous_sha256: str
    sha256: str
    catalog_metric: str | None
    catalog_file: str | None
    previous_catalog_file: str | None


# ---- the file -------------------------------------------------------------------------------


class Results(_Fixed):
    """One run's results.json (docs/results.md)."""

    experiment: str
    version: int
    title: str
    owner: str
    recipients: list[str]
    unit: str
    arms: dict[str, float]
    control: str
    start: Day
    end: Day
    run_date: Day
    status: Status
    decision: Decision
    decision_reason: str
    config_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    config_path: str
    code_version: str
    hypothesis: Hypothesis
    plan: Plan | None
    risks: list[str]
    gates: Gates
    gate_failures: list[str]
    analysis: AnalysisSettings
    progress: Progress | None
    metrics: dict[str, Metric]
    checks: list[Check]
    novelty: Novelty | None
    human_decisions: list[HumanDecision]
    metric_definitions: dict[str, MetricDefinition]
    # Added with `history`, when the readout is stored (absent before).
    definition_changes: list[DefinitionChange] | None = None
    # Added when the readout is stored in the results tables (absent before, and without them).
    history: list[HistoryEntry] | None = None
    # The brief computes `changes` itself unless a run reports them.
    changes: list[Change] | None = None


# ---- checking -------------------------------------------------------------------------------


class ResultsInvalid(ValueError):
    """A results.json payload that does not match the contract; says where."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listed = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source} is not a valid results.json (docs/results.md):\n{listed}")


def _path(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _problems(error: ValidationError) -> list[str]:
    problems = []
    # Every union of the model is `X | None` (nullable, untagged), so each location is a path
    # of keys and list indexes only: an arm named "A" stays in it.
    for item in error.errors(include_url=False):
        problem = f"{_path(item['loc'])}: {item['msg']}"
        if problem not in problems:
            problems.append(problem)
    return problems


def validate_results(payload: Any, source: str = "results.json") -> Results:
    """The payload as the model, checked as it would be written (json.dumps with
    default=str); raises ResultsInvalid naming each bad field's path."""
    # NaN/inf survive this round trip so that the model, not json.dumps, names where they are.
    text = json.dumps(payload, default=str)
    try:
        return Results.model_validate_json(text)
    except ValidationError as error:
        raise ResultsInvalid(source, _problems(error)) from None


def load_results(path: str | Path) -> dict[str, Any]:
    """A results.json file as a dict, once it validates (ResultsInvalid otherwise; a file that
    is not JSON raises ValueError, a missing one OSError)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    try:
        Results.model_validate_json(text)
    except ValidationError as error:
        raise ResultsInvalid(str(path), _problems(error)) from None
    return dict(data)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of results.json (docs/results.schema.json)."""
    schema = Results.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ab-pipeline results.json"
    return schema
