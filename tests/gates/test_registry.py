"""The gate registry: the one list the DAG, the pipeline, the decision and the brief loop over.

A gate declared here, in the test, with its partials in a copy of the templates, runs in a real
readout (DuckDB warehouse), fails it as RERUN naming its finding, and appears in the brief:
adding a gate touches no other file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import load_config
from ab_pipeline.devtools.simulate import parse_scenario, simulate
from ab_pipeline.gates import registry
from ab_pipeline.gates.base import Gate, GateContext, GateResult
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.report.brief import DEFAULT_TEMPLATES_DIR, TEMPLATES_ENV
from ab_pipeline.warehouse import Warehouse, quote_ident

REPO = Path(__file__).resolve().parents[2]
REFUND_CONFIG = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
REFUND_SCENARIO = REPO / "simulations" / "refund-query-rewrite.yaml"
FINAL = date(2026, 5, 31)


def test_the_registry_lists_the_gates_in_order() -> None:
    assert registry.names() == ("data_quality", "srm", "receipt", "assignment")
    assert [g.title for g in registry.gates()] == [
        "Data quality",
        "Sample ratio (SRM)",
        "Receipt (same system in every arm)",
        "Assignment integrity",
    ]


@pytest.mark.parametrize("gate", registry.gates(), ids=lambda g: g.name)
def test_every_registered_gate_has_its_partials_and_its_run(gate: Gate) -> None:
    for name in gate.partials.values():
        assert (DEFAULT_TEMPLATES_DIR / name).is_file(), name
    assert gate.hint and gate.title
    assert callable(gate.implementation().run)


@pytest.mark.parametrize(
    ("name", "error"),
    [("srm", "already registered"), ("Unit-Floor", "lower-case letters")],
)
def test_a_gate_name_must_be_new_and_usable_as_key_task_and_file(name: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        registry.register(Gate(name=name, title="x", hint="x", module="x"))
    assert registry.names() == ("data_quality", "srm", "receipt", "assignment")


# ---- a gate that exists only in this test ------------------------------------------------------


@dataclass(frozen=True)
class UnitFloorGate(Gate):
    """Fails when an arm has fewer enrolled units than `floor` (a toy, written for this test)."""

    floor: int = 0

    def run(self, context: GateContext, units_table: str) -> GateResult:
        rows = context.warehouse.query(
            f"SELECT arm, COUNT(*) AS units FROM {quote_ident(units_table)} "
            "GROUP BY arm ORDER BY arm"
        )
        counts = {str(row["arm"]): int(row["units"]) for row in rows}
        short = [arm for arm, units in counts.items() if units < self.floor]
        return {
            "passed": not short,
            "detail": f"arms below {self.floor:,} units: {', '.join(short)}"
            if short
            else f"every arm has at least {self.floor:,} units",
            "counts": counts,
            "experiment": context.config.key,
        }

    def brief_view(self, outcome: Mapping[str, Any]) -> dict[str, Any]:
        return {"smallest": f"{min(outcome['counts'].values()):,}"}


PARTIALS = {
    "unit_floor.html.j2": "<p>Smallest arm: <strong>{{ g.view.smallest }}</strong> units</p>\n",
    "unit_floor.txt.j2": "    Smallest arm: {{ g.view.smallest }} units\n",
}


def unit_floor(floor: int) -> UnitFloorGate:
    return UnitFloorGate(
        name="unit_floor",
        title="Unit floor",
        hint="the arm counts: is enrolment running in every arm?",
        floor=floor,
    )


@pytest.fixture
def templates_with_the_toy_partials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real templates plus the toy gate's partials, in a copy."""
    templates = tmp_path / "templates"
    shutil.copytree(DEFAULT_TEMPLATES_DIR, templates)
    for name, text in PARTIALS.items():
        (templates / "gates" / name).write_text(text)
    monkeypatch.setenv(TEMPLATES_ENV, str(templates))
    return templates


def readout(tmp_path: Path, warehouse: Warehouse) -> RunContext:
    """The refund experiment, exactly 600 vs 600 customers (resolution 38% vs 42%)."""
    scenario = yaml.safe_load(REFUND_SCENARIO.read_text())
    scenario.pop("units", None)
    scenario.pop("assignment", None)
    scenario.update(
        counts={"control": 600, "treatment": 600}, exact=True, internal_share=0.0, bot_share=0.0
    )
    config_path = tmp_path / "refund-query-rewrite.yaml"
    shutil.copy(REFUND_CONFIG, config_path)
    simulate(load_config(config_path), parse_scenario(scenario), warehouse.url)
    return RunContext(config_path, FINAL, warehouse.url, tmp_path / "briefs")


@pytest.mark.usefixtures("templates_with_the_toy_partials")
def test_a_gate_declared_in_a_test_runs_in_a_readout_and_shows_in_the_brief(
    tmp_path: Path, duckdb_warehouse: Warehouse
) -> None:
    ctx = readout(tmp_path, duckdb_warehouse)
    with registry.registered(unit_floor(100)):
        assert registry.names()[-1] == "unit_floor"
        run_pipeline(ctx, deliver=False)
    assert "unit_floor" not in registry.names()  # the registry is as declared again
    results = json.loads((ctx.run_dir / "results.json").read_text())
    assert results["gates"]["unit_floor"] == {
        "passed": True,
        "detail": "every arm has at least 100 units",
        "counts": {"control": 600, "treatment": 600},
        "experiment": "refund-query-rewrite",
    }
    assert results["decision"] != "RERUN" and results["metrics"]
    assert "unit_floor" in next(
        c["detail"] for c in results["checks"] if c["name"] == "traffic_integrity"
    )
    text = (ctx.run_dir / "brief.txt").read_text()
    assert "[PASS] Unit floor: every arm has at least 100 units\n    Smallest arm: 600 units\n" in (
        text
    )
    html = (ctx.run_dir / "brief.html").read_text()
    assert "<strong>Unit floor</strong>: every arm has at least 100 units" in html
    assert "<p>Smallest arm: <strong>600</strong> units</p>" in html


@pytest.mark.usefixtures("templates_with_the_toy_partials")
def test_a_failed_gate_declared_in_a_test_reruns_naming_its_finding(
    tmp_path: Path, duckdb_warehouse: Warehouse
) -> None:
    ctx = readout(tmp_path, duckdb_warehouse)
    with registry.registered(unit_floor(1000)):
        run_pipeline(ctx, deliver=False)
    results = json.loads((ctx.run_dir / "results.json").read_text())
    assert results["gate_failures"] == ["unit_floor"]
    assert results["decision"] == "RERUN" and results["metrics"] == {}
    assert results["decision_reason"] == (
        "Not analysed because a validity gate failed. "
        "unit_floor: arms below 1,000 units: control, treatment."
    )
    text = (ctx.run_dir / "brief.txt").read_text()
    assert "  - Unit floor: arms below 1,000 units: control, treatment\n" in text
    assert "    Look at the arm counts: is enrolment running in every arm?\n" in text
    assert "[FAIL] Unit floor: arms below 1,000 units: control, treatment\n" in text
    assert "Smallest arm: 600 units" in text


def test_the_dag_has_a_task_for_a_gate_declared_in_a_test() -> None:
    from ab_pipeline.orchestration.dag_factory import build_dag

    config = load_config(REFUND_CONFIG)
    with registry.registered(unit_floor(1)):
        dag = build_dag(REFUND_CONFIG, config)
    task = dag.get_task("gate_unit_floor")
    assert task.op_kwargs["gate"] == "unit_floor"
    assert dag.get_task("extract").task_id in task.upstream_task_ids
    assert "validity" in task.downstream_task_ids
    gate_tasks = [t.task_id for t in dag.tasks if t.task_id.startswith("gate_")]
    assert gate_tasks == [f"gate_{name}" for name in (*registry.names(), "unit_floor")]
