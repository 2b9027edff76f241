"""The metric catalog: references resolve, overrides apply, every problem names its file and
field, and a readout records (and its brief reports) the definitions it used."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ab_pipeline.core import catalog
from ab_pipeline.core.config import MetricSource, json_schema, load_config, parse_config
from ab_pipeline.core.errors import ConfigError
from ab_pipeline.devtools.simulate import parse_scenario, simulate
from ab_pipeline.orchestration.cli import main
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.warehouse import Warehouse
from tests.orchestration.test_pipeline import exact_refund_scenario

REPO = Path(__file__).resolve().parents[2]
REFUND = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
DELIVERY = REPO / "dags" / "experiments" / "delivery-estimate.yaml"

SUPPORT = {
    "resolution_rate": {
        "description": "solved with no ticket soon after",
        "owner": "support-ml@example.com",
        "type": "proportion",
        "event": "marked_solved",
        "window": "1d",
        "unless": {"event": "ticket_opened", "within": "10m"},
    },
    "escalation_rate": {
        "description": "escalated to a human agent",
        "owner": "support-ml@example.com",
        "type": "proportion",
        "event": "escalated",
        "window": "1d",
        "guardrail": {"max_increase": 0.005, "evidence": "point"},
    },
    "p95_latency_ms": {
        "description": "95th percentile of answer latency",
        "owner": "platform@example.com",
        "type": "quantile",
        "event": "answer_served",
        "quantile": 0.95,
        "guardrail": {"max_increase": 150},
    },
}


class World:
    """A dags folder of its own: `metrics/` (the catalog) beside `experiments/`."""

    def __init__(self, root: Path) -> None:
        self.dags = root / "dags"
        self.metrics = self.dags / "metrics"
        self.experiments = self.dags / "experiments"
        self.metrics.mkdir(parents=True)
        self.experiments.mkdir()
        self.catalog("support", SUPPORT)

    def catalog(self, name: str, metrics: dict[str, Any]) -> Path:
        path = self.metrics / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"metrics": metrics}, sort_keys=False))
        return path

    def experiment(self, name: str = "refund.yaml", **changes: Any) -> Path:
        """The refund sample with resolution_rate, escalation_rate and p95 from the catalog."""
        data = yaml.safe_load(REFUND.read_text())
        data["metrics"].update(
            resolution_rate={"ref": "resolution_rate"},
            escalation_rate={"ref": "escalation_rate"},
            p95_latency_ms={"ref": "p95_latency_ms"},
        )
        data["guardrails"].update(escalation_rate={}, p95_latency_ms={"evidence": "point"})
        data["guardrails"]["grounding_failure_rate"]["evidence"] = "point"
        data.update(changes)
        path = self.experiments / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.delenv(catalog.METRICS_DIR_ENV, raising=False)
    return World(tmp_path)


def problems_of(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == str(path)
    return {p.field: p.reason for p in caught.value.problems}


# ---- resolution -------------------------------------------------------------------------------


def test_a_reference_resolves_to_the_catalog_definition_and_remembers_its_file(
    world: World,
) -> None:
    config = load_config(world.experiment())
    inline = load_config(REFUND)
    for name in ("resolution_rate", "escalation_rate", "p95_latency_ms"):
        got = config.metrics[name]
        assert got.model_copy(update={"description": None}) == inline.metrics[name]
        assert got.description == SUPPORT[name]["description"]
        assert config.metric_sources[name] == MetricSource(
            name, str(world.metrics / "support.yaml")
        )
    assert "grounding_failure_rate" not in config.metric_sources  # still inline


def test_window_and_cuped_overrides_apply_to_the_referencing_experiment_only(
    world: World,
) -> None:
    path = world.experiment()
    data = yaml.safe_load(path.read_text())
    data["metrics"]["escalation_rate"] = {
        "ref": "escalation_rate",
        "window": "2d",
        "cuped": {"lookback": "14d"},
    }
    path.write_text(yaml.safe_dump(data))
    overridden = load_config(path).metrics["escalation_rate"]
    assert overridden.window is not None and overridden.window.days == 2
    assert overridden.cuped is not None and overridden.cuped.lookback.days == 14
    other = load_config(world.experiment("other.yaml", key="other"))
    assert other.metrics["escalation_rate"].window.days == 1  # type: ignore[union-attr]
    assert other.metrics["escalation_rate"].cuped is None  # type: ignore[union-attr]


def test_a_guardrail_takes_the_catalog_budget_unless_it_gives_its_own(world: World) -> None:
    config = load_config(world.experiment())
    escalation = config.guardrails["escalation_rate"]  # `{}`: the catalog's budget and evidence
    assert (escalation.budget_kind, escalation.budget, escalation.evidence) == (
        "max_increase",
        0.005,
        "point",
    )
    latency = config.guardrails["p95_latency_ms"]  # own evidence, the catalog's budget
    assert (latency.budget, latency.evidence) == (150, "point")
    path = world.experiment(
        "own.yaml", key="own", guardrails={"escalation_rate": {"max_relative_increase": 0.2}}
    )
    own = load_config(path).guardrails["escalation_rate"]
    # A budget of its own makes the guardrail the experiment's, as for an inline metric.
    assert (own.budget_kind, own.budget, own.evidence) == (
        "max_relative_increase",
        0.2,
        "interval",
    )


def test_a_missing_reference_names_the_file_the_field_and_the_nearest_catalog_name(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    path = world.experiment()
    data = yaml.safe_load(path.read_text())
    data["metrics"]["escalation_rate"] = {"ref": "escalaton_rate"}
    path.write_text(yaml.safe_dump(data))
    found = problems_of(path)
    # Only the reference: no follow-on complaint about the guardrail that names the metric.
    assert list(found) == ["metrics.escalation_rate.ref"]
    assert "no metric 'escalaton_rate' in the catalog" in found["metrics.escalation_rate.ref"]
    assert "(nearest: 'escalation_rate')" in found["metrics.escalation_rate.ref"]
    assert main(["validate", str(path)]) == 2
    out = capsys.readouterr().out
    assert f"{path}: metrics.escalation_rate.ref: no metric 'escalaton_rate'" in out


def test_a_missing_reference_is_reported_with_the_configs_other_problems(world: World) -> None:
    path = world.experiment(schedule="every blue moon")
    data = yaml.safe_load(path.read_text())
    data["metrics"]["p95_latency_ms"] = {"ref": "p99_latency"}
    path.write_text(yaml.safe_dump(data))
    assert set(problems_of(path)) == {"metrics.p95_latency_ms.ref", "schedule"}


def test_a_reference_overrides_only_window_and_cuped(world: World) -> None:
    path = world.experiment()
    data = yaml.safe_load(path.read_text())
    data["metrics"]["resolution_rate"] = {"ref": "resolution_rate", "event": "solved"}
    path.write_text(yaml.safe_dump(data))
    reason = problems_of(path)["metrics.resolution_rate.event"]
    assert "overrides only window, cuped" in reason and "inline" in reason


def test_a_window_override_the_metric_cannot_take_is_named_at_the_experiment(
    world: World,
) -> None:
    world.catalog(
        "sql",
        {
            "handle_time": {
                "description": "minutes to close",
                "owner": "support-ml@example.com",
                "type": "mean",
                "sql": "SELECT unit_id, minutes AS value FROM handle_times",
            }
        },
    )
    path = world.experiment()
    data = yaml.safe_load(path.read_text())
    data["metrics"]["handle_time"] = {"ref": "handle_time", "window": "1d"}
    path.write_text(yaml.safe_dump(data))
    assert "`window` applies to `event` metrics" in problems_of(path)["metrics.handle_time"]


def test_a_name_defined_in_two_catalog_files_is_refused_naming_both(world: World) -> None:
    second = world.catalog("latency", {"p95_latency_ms": SUPPORT["p95_latency_ms"]})
    reason = problems_of(world.experiment())["metrics.p95_latency_ms.ref"]
    first = world.metrics / "support.yaml"
    assert f"{first}: metrics.p95_latency_ms: also defined in {second}" in reason
    assert f"{second}: metrics.p95_latency_ms: also defined in {first}" in reason
    # A config that does not use the name is unaffected.
    inline = yaml.safe_load(REFUND.read_text())
    load_config(
        world.experiment("inline.yaml", **{k: inline[k] for k in ("metrics", "guardrails")})
    )


def test_a_bad_catalog_field_names_the_catalog_file_and_field(world: World) -> None:
    broken = {**SUPPORT, "escalation_rate": {**SUPPORT["escalation_rate"], "window": "a day"}}
    broken["p95_latency_ms"] = {**SUPPORT["p95_latency_ms"], "quantil": 0.9}
    broken["resolution_rate"] = {
        k: v for k, v in SUPPORT["resolution_rate"].items() if k != "owner"
    }
    file = world.catalog("support", broken)
    found = problems_of(world.experiment())
    assert (
        f"{file}: metrics.escalation_rate.window: 'a day' is not a duration"
        in (found["metrics.escalation_rate.ref"])
    )
    assert (
        f"{file}: metrics.p95_latency_ms.quantil: unknown field"
        in (found["metrics.p95_latency_ms.ref"])
    )
    assert (
        f"{file}: metrics.resolution_rate.owner: Field required"
        in (found["metrics.resolution_rate.ref"])
    )
    listed = catalog.load_catalog(world.metrics).problems
    assert {p.field for p in listed} == {
        "metrics.escalation_rate.window",
        "metrics.p95_latency_ms.quantil",
        "metrics.resolution_rate.owner",
    }


def test_a_guardrail_without_a_budget_needs_one_in_the_catalog(world: World) -> None:
    path = world.experiment(guardrails={"resolution_rate": {}})
    data = yaml.safe_load(path.read_text())
    data["primary"] = data["hypothesis"]["metric"] = "grounding_failure_rate"
    path.write_text(yaml.safe_dump(data))
    reason = problems_of(path)["guardrails.resolution_rate"]
    assert "catalog metric 'resolution_rate'" in reason and "no `guardrail` budget" in reason


def test_the_catalog_is_beside_the_configs_folder_else_the_environment_else_the_repo(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = world.experiment()
    assert catalog.catalog_dir_for(config) == world.metrics.resolve()
    loose = tmp_path / "loose" / "refund.yaml"  # no metrics/ beside its folder
    loose.parent.mkdir()
    loose.write_text(config.read_text())
    assert catalog.catalog_dir_for(loose) == catalog.REPO_CATALOG
    assert (
        "no metric 'resolution_rate' in the catalog dags/metrics"
        in (problems_of(loose)["metrics.resolution_rate.ref"])
    )
    monkeypatch.setenv(catalog.METRICS_DIR_ENV, str(world.metrics))
    assert catalog.catalog_dir_for(loose) == world.metrics
    assert load_config(loose).metric_sources["resolution_rate"].catalog_metric == "resolution_rate"


# ---- the converted sample ---------------------------------------------------------------------

# delivery-estimate's metrics and guardrails as they were written inline before the catalog.
DELIVERY_INLINE = """
metrics:
  order_completion: {type: proportion, event: order_completed, window: 3d}
  repeat_contact_rate: {type: proportion, event: repeat_contact, window: 7d}
  escalation_complaints: {type: proportion, event: complaint_escalated, window: 7d}
  unresolved_issue_rate: {type: proportion, event: issue_unresolved, window: 7d}
  order_value: {type: mean, event: order_completed, window: 3d}
guardrails:
  repeat_contact_rate: {max_increase: 0.01}
  escalation_complaints: {max_increase: 0.005}
  unresolved_issue_rate: {max_relative_increase: 0.10}
"""


def test_the_converted_sample_resolves_to_the_inline_metrics_it_replaced() -> None:
    converted = load_config(DELIVERY)
    inline = parse_config(yaml.safe_load(DELIVERY.read_text()) | yaml.safe_load(DELIVERY_INLINE))
    assert set(converted.metric_sources) == {
        "repeat_contact_rate",
        "escalation_complaints",
        "order_value",
    }
    assert {
        name: metric.model_copy(update={"description": None})
        for name, metric in converted.metrics.items()
    } == inline.metrics
    assert converted.guardrails == inline.guardrails
    assert catalog.metric_definitions(converted).keys() == catalog.metric_definitions(inline).keys()
    for name, recorded in catalog.metric_definitions(inline).items():
        assert catalog.metric_definitions(converted)[name]["sha256"] == recorded["sha256"]


def test_the_json_schema_accepts_a_reference_and_refuses_a_typo_in_it() -> None:
    schema = json_schema()
    # Editors see YAML dates as strings, as JSON does.
    data = json.loads(json.dumps(yaml.safe_load(DELIVERY.read_text()), default=str))
    jsonschema.validate(data, schema)
    data["metrics"]["order_value"] = {"reff": "order_value"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


# ---- readouts ---------------------------------------------------------------------------------


def readout(world: World, warehouse: Warehouse, config: Path, day: date, attempt: str) -> Any:
    ctx = RunContext(config, day, warehouse.url, world.dags.parent / "briefs", attempt=attempt)
    run_pipeline(ctx, deliver=False)
    results = json.loads((ctx.run_dir / "results.json").read_text())
    return results, (ctx.run_dir / "brief.txt").read_text()


def rounded(value: Any) -> Any:
    """Floats to 10 significant digits: DuckDB's parallel sums may add in another order from
    one query to the next, which moves the last bits (a float, not a definition, difference)."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def test_a_catalog_metric_reads_out_exactly_as_its_inline_definition(
    world: World, duckdb_warehouse: Warehouse
) -> None:
    inline = world.experiments / "inline.yaml"
    data = yaml.safe_load(REFUND.read_text())
    for guardrail in data["guardrails"].values():  # as the catalog's and world.experiment()'s
        guardrail["evidence"] = "point"
    inline.write_text(yaml.safe_dump(data, sort_keys=False))
    by_ref = world.experiment()
    simulate(load_config(by_ref), parse_scenario(exact_refund_scenario()), duckdb_warehouse.url)
    day = date(2026, 5, 31)
    first, _ = readout(world, duckdb_warehouse, inline, day, "inline")
    second, _ = readout(world, duckdb_warehouse, by_ref, day, "by-ref")

    def numbers(results: dict[str, Any]) -> dict[str, Any]:
        metrics = {
            name: {k: v for k, v in body.items() if k != "description"}
            for name, body in results["metrics"].items()
        }
        return rounded(
            {"metrics": metrics, "checks": results["checks"], "decision": results["decision"]}
        )

    assert first["decision"] == "SHIP"
    assert numbers(first) == numbers(second)
    # Same definitions, same hashes (only the catalog origin differs): compared with the
    # inline attempt of the same date, nothing changed.
    for name, recorded in first["metric_definitions"].items():
        assert second["metric_definitions"][name]["sha256"] == recorded["sha256"], name
    assert second["definition_changes"] == []


def test_a_changed_catalog_metric_is_recorded_and_the_brief_says_so(
    world: World, duckdb_warehouse: Warehouse
) -> None:
    config = world.experiment()
    simulate(load_config(config), parse_scenario(exact_refund_scenario()), duckdb_warehouse.url)
    first, first_brief = readout(world, duckdb_warehouse, config, date(2026, 5, 30), "one")
    recorded = first["metric_definitions"]["escalation_rate"]
    assert recorded["catalog_metric"] == "escalation_rate"
    assert recorded["catalog_file"] == str(world.metrics / "support.yaml")
    assert recorded["definition"] == {
        "type": "proportion",
        "event": "escalated",
        "window": "1d",
        "guardrail": {"max_increase": 0.005, "evidence": "point"},
    }
    assert recorded["sha256"] == catalog.definition_sha256(recorded["definition"])
    assert first["metric_definitions"]["grounding_failure_rate"]["catalog_file"] is None
    assert first["definition_changes"] == [] and "definition changed" not in first_brief

    # The catalog's owners widen the window: the next readout measures something else.
    world.catalog(
        "support", {**SUPPORT, "escalation_rate": {**SUPPORT["escalation_rate"], "window": "2d"}}
    )
    second, second_brief = readout(world, duckdb_warehouse, config, date(2026, 5, 31), "two")
    [change] = second["definition_changes"]
    assert change["metric"] == "escalation_rate" and change["fields"] == ["window"]
    assert change["previous_run_date"] == "2026-05-30"
    assert change["previous_sha256"] == recorded["sha256"] != change["sha256"]
    assert (
        f"definition changed: escalation_rate (catalog metric escalation_rate in "
        f"{world.metrics / 'support.yaml'}): window not as in the readout of 2026-05-30"
    ) in " ".join(second_brief.split())
    # The results table stores each metric row's definition hash and catalog origin.
    rows = duckdb_warehouse.query(
        "SELECT DISTINCT run_date, definition_sha256, catalog_metric, catalog_file "
        "FROM ab_metric_results WHERE metric = 'escalation_rate' ORDER BY run_date"
    )
    assert [(r["definition_sha256"], r["catalog_metric"]) for r in rows] == [
        (recorded["sha256"], "escalation_rate"),
        (change["sha256"], "escalation_rate"),
    ]
    # Re-running the date with the catalog unchanged: compared with that date's earlier
    # attempt, nothing changed.
    third, third_brief = readout(world, duckdb_warehouse, config, date(2026, 5, 31), "three")
    assert third["definition_changes"] == [] and "definition changed" not in third_brief


# ---- the `metrics` command --------------------------------------------------------------------


def test_cli_metrics_lists_each_metric_and_the_experiments_that_use_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.experiment()
    world.experiment("other.yaml", key="other-experiment")
    data = yaml.safe_load((world.experiments / "other.yaml").read_text())
    data["metrics"]["latency"] = data["metrics"].pop("p95_latency_ms") | {"window": "7d"}
    data["guardrails"]["latency"] = data["guardrails"].pop("p95_latency_ms")
    (world.experiments / "other.yaml").write_text(yaml.safe_dump(data))
    world.catalog("unused", {"nps": {**SUPPORT["escalation_rate"], "event": "nps_vote"}})
    assert main(["metrics", "--experiments", str(world.experiments)]) == 0
    out = capsys.readouterr().out
    blocks = {block.split()[0]: block for block in out.split("\n\n")[1:]}
    assert out.startswith(f"Metric catalog {world.metrics.resolve()}: 4 metric(s) in 2 file(s)")
    assert (
        "  used by: other-experiment (as latency, window 7d, guardrail); refund-query-rewrite"
        in (blocks["p95_latency_ms"])
    )
    assert "quantile  platform@example.com" in blocks["p95_latency_ms"]
    assert "95th percentile of answer latency" in blocks["p95_latency_ms"]
    assert "used by: no experiment" in blocks["nps"]
    assert main(["metrics", "--experiments", str(world.experiments), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    [resolution] = [m for m in listing["metrics"] if m["name"] == "resolution_rate"]
    assert [u["experiment"] for u in resolution["used_by"]] == [
        "other-experiment",
        "refund-query-rewrite",
    ]
    assert listing["problems"] == []


def test_cli_metrics_reports_catalog_problems_and_unresolved_references(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    path = world.experiment()
    data = yaml.safe_load(path.read_text())
    data["metrics"]["resolution_rate"] = {"ref": "resolution_rat"}
    path.write_text(yaml.safe_dump(data))
    bad = world.catalog("bad", {"nps": {"type": "proportion", "event": "nps_vote"}})
    assert main(["metrics", "--experiments", str(world.experiments)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: metrics.nps.description: Field required" in err
    assert f"{path}: metrics.resolution_rate.ref: no metric 'resolution_rat'" in err
    assert "(nearest: 'resolution_rate')" in err


def test_cli_metrics_on_the_repository_lists_the_converted_sample() -> None:
    listing = catalog.uses(sorted((REPO / "dags" / "experiments").glob("*.yaml")))
    assert {(u.experiment, u.ref) for u in listing} == {
        ("delivery-estimate", "repeat_contact_rate"),
        ("delivery-estimate", "escalation_complaints"),
        ("delivery-estimate", "order_value"),
    }
    assert catalog.load_catalog(catalog.REPO_CATALOG).problems == []
