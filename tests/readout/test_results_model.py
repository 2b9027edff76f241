"""results.json's typed contract (ab_pipeline.readout.results_model): what real runs and the
fixtures
write validates; a misspelt key, a NaN or a wrong type is refused naming its path, and never
written (RunContext.write_json, decision_records.annotate_archive) nor read (load_results)."""

from __future__ import annotations

import json
import math
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import load_config
from ab_pipeline.devtools.simulate import parse_scenario, simulate
from ab_pipeline.orchestration.cli import main
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.readout.decision_records import annotate_archive
from ab_pipeline.readout.results_model import (
    Results,
    ResultsInvalid,
    json_schema,
    load_results,
    validate_results,
)
from ab_pipeline.warehouse import dispose_all
from tests.conftest import REPO_ROOT

FIXTURES = Path(__file__).parents[1] / "fixtures"
KINDS = ("continue", "hostile", "iterate", "rerun", "ship", "stop")
ONBOARDING = REPO_ROOT / "dags" / "experiments" / "onboarding-checklist.yaml"
ONBOARDING_TRUTH = REPO_ROOT / "simulations" / "onboarding-checklist.yaml"
COMPARISON = ("metrics", "activation_7d", "comparisons", "treatment")


def fixture(kind: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"results_{kind}.json").read_text()))


def refused(payload: Any) -> list[str]:
    with pytest.raises(ResultsInvalid) as caught:
        validate_results(payload)
    return caught.value.problems


# ---- what is written validates ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_fixture_is_a_valid_results_json(kind: str) -> None:
    results = load_results(FIXTURES / f"results_{kind}.json")
    assert results == fixture(kind)  # the dict comes back as written, nothing added


def every_feature_config(folder: Path) -> Path:
    """onboarding-checklist with every optional part of results.json switched on: hash
    assignment and its early-exposure check, a ratio metric, CUPED, a sequential rule and a
    planned guardrail."""
    data = yaml.safe_load(ONBOARDING.read_text())
    data["assignment"] = "hash"
    data["assignment_check"] = {"first_event": "page_viewed"}
    data["metrics"]["tickets_per_session"] = {
        "type": "ratio",
        "numerator": {"event": "support_ticket"},
        "denominator": {"event": "session_start"},
        "window": "7d",
    }
    data["metrics"]["sessions_7d"]["cuped"] = {"covariate": "same", "lookback": "3d"}
    data["analysis"] = {"sequential": "obrien_fleming", "looks": 4}
    data["plan"]["guardrails"] = {"support_ticket_rate": {"baseline": 0.1}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "onboarding-checklist.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The every-feature config simulated (4,000 units) and read out at an interim look and
    at its end, as the pipeline writes them."""
    root = tmp_path_factory.mktemp("every-feature")
    config = every_feature_config(root / "config")
    truth = yaml.safe_load(ONBOARDING_TRUTH.read_text())
    truth.pop("assignment")
    truth.update(units=4000, first_event={"event": "page_viewed"})
    url = f"duckdb:///{root / 'warehouse.duckdb'}"
    simulate(load_config(config), parse_scenario(truth), url)
    runs = []
    end = load_config(config).end
    for day in (end - timedelta(days=7), end):
        ctx = RunContext(config, day, url, root / "briefs")
        run_pipeline(ctx, deliver=False)
        runs.append(load_results(ctx.run_dir / "results.json"))
    dispose_all()
    return runs


def test_a_real_run_with_every_optional_part_validates(real_runs: list[dict[str, Any]]) -> None:
    interim, final = real_runs
    assert interim["status"] == "interim" and final["status"] == "final"
    for results in real_runs:
        model = validate_results(results)
        assert model.gates.assignment is not None and model.gates.assignment.early_exposures
        assert model.plan is not None and "support_ticket_rate" in model.plan.guardrail_sizes
        ratio = model.metrics["tickets_per_session"].arms["treatment"]
        assert ratio.numerator is not None and ratio.denominator is not None
        assert model.metrics["sessions_7d"].comparisons["treatment"].cuped is not None
        primary = model.metrics["activation_7d"].comparisons["treatment"]
        assert primary.sequential is not None and primary.correction is not None
        assert results["history"] is not None  # stored in the results tables: rewritten


# ---- what is refused, and where -------------------------------------------------------------


def at(results: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        results = results[key]
    return results


def test_a_misspelt_key_is_refused_naming_its_path() -> None:
    results = fixture("ship")
    comparison = results["metrics"]["resolution_rate"]["comparisons"]["treatment"]
    comparison["p_vaule"] = comparison.pop("p_value")
    assert refused(results) == [
        "metrics.resolution_rate.comparisons.treatment.p_value: Field required",
        "metrics.resolution_rate.comparisons.treatment.p_vaule: Extra inputs are not permitted",
    ]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_refused_naming_its_path(value: float) -> None:
    results = fixture("ship")
    results["checks"][1]["observed"] = value
    [problem] = refused(results)
    assert problem.startswith("checks[1].observed: Input should be a finite number")


def test_a_wrong_type_or_value_is_refused_naming_its_path() -> None:
    results = fixture("ship")
    results["gates"]["srm"]["passed"] = "yes"
    results["decision"] = "MAYBE"
    results["metrics"]["resolution_rate"]["arms"]["control"]["units"] = "2105"
    problems = refused(results)
    assert any(p.startswith("gates.srm.passed: Input should be a valid boolean") for p in problems)
    assert any(p.startswith("decision: Input should be 'SHIP'") for p in problems)
    assert any(
        p.startswith("metrics.resolution_rate.arms.control.units: Input should be a valid int")
        for p in problems
    )


def test_a_gate_beyond_the_named_ones_needs_passed_and_detail() -> None:
    results = fixture("ship")
    results["gates"]["freshness"] = {"passed": True, "detail": "fresh", "lag_hours": 2}
    extra = validate_results(results).gates.model_extra or {}
    assert extra["freshness"].passed and extra["freshness"].model_extra == {"lag_hours": 2}
    results["gates"]["freshness"] = {"detail": "fresh"}
    assert refused(results) == ["gates.freshness.passed: Field required"]


def test_history_and_changes_may_be_absent_but_not_misshapen() -> None:
    results = fixture("ship")
    del results["history"]
    assert validate_results(results).history is None
    results["changes"] = [{"kind": "sign flip"}]
    assert refused(results) == ["changes[0].detail: Field required"]


# ---- never written, never read ----------------------------------------------------------------


def test_write_json_never_writes_an_invalid_results_json(tmp_path: Path) -> None:
    ctx = RunContext(ONBOARDING, date(2026, 3, 29), "duckdb:///unused.duckdb", tmp_path)
    good = fixture("ship")
    path = ctx.write_json("results.json", good)
    bad = {**good, "decison": "SHIP"}
    with pytest.raises(ResultsInvalid, match="decison: Extra inputs are not permitted"):
        ctx.write_json("results.json", bad)
    assert json.loads(path.read_text()) == good  # the earlier file stands, untouched
    assert not path.with_suffix(".json.tmp").exists()


def test_annotate_archive_refuses_a_decision_record_the_contract_refuses(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(fixture("stop"), indent=2))
    before = (tmp_path / "results.json").read_text()
    record = {"run_date": "2026-05-31", "decision": "SHIP", "by": "lead@example.com"}
    with pytest.raises(ResultsInvalid, match=r"human_decisions\[0\]\.note: Field required"):
        annotate_archive(tmp_path, [record])
    assert (tmp_path / "results.json").read_text() == before


def test_load_results_names_the_file_and_the_field(tmp_path: Path) -> None:
    results = fixture("rerun")
    results["gates"]["srm"]["diagnosis"]["by_dya"] = []
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ResultsInvalid) as caught:
        load_results(path)
    assert str(caught.value).startswith(f"{path} is not a valid results.json")
    assert caught.value.problems == ["gates.srm.diagnosis.by_dya: Extra inputs are not permitted"]


# ---- the published schema ---------------------------------------------------------------------


def test_cli_schema_results_writes_the_results_schema(tmp_path: Path) -> None:
    target = tmp_path / "results.schema.json"
    assert main(["schema", "--results", "-o", str(target)]) == 0
    schema = json.loads(target.read_text())
    assert schema == json_schema() and schema["title"] == "ab-pipeline results.json"
    assert set(schema["required"]) <= set(Results.model_fields)


def test_decide_names_the_field_of_a_final_readout_the_contract_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = fixture("ship")
    results["gates"]["srm"]["p_value"] = "small"
    run_dir = tmp_path / "briefs" / results["experiment"] / results["run_date"]
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(results))
    code = main(
        [
            "decide", results["experiment"], "--decision", "ship", "--by", "me", "--note", "n",
            "--follow-up", "2026-07-01", "--warehouse", f"duckdb:///{tmp_path / 'w.duckdb'}",
            "--out", str(tmp_path / "briefs"),
        ]
    )  # fmt: skip
    assert code == 2
    message = capsys.readouterr().err
    assert message.startswith(f"decide: {run_dir / 'results.json'} is not a valid results.json")
    assert "gates.srm.p_value: Input should be a valid number" in message


def test_the_path_keeps_data_named_keys_as_they_are() -> None:
    results = fixture("hostile")
    name, metric = next(iter(results["metrics"].items()))
    arm = next(iter(metric["arms"]))
    metric["arms"][arm]["value"] = "high"
    [problem] = refused(results)
    assert problem.startswith(f"metrics.{name}.arms.{arm}.value: Input should be a valid number")
