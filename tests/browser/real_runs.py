"""Real pipeline outputs of every decision kind, for the brief's tests.

The brief is tested on what `run_pipeline` actually writes (simulated data in an embedded DuckDB),
not only on hand-made fixtures: a key a real run writes and a fixture lacks (a raw dict, say)
would otherwise never be rendered by a test. ITERATE and STOP come from the refund experiment's
config with one setting changed (a higher `min_lift`; a latency budget below the simulated
+78 ms), on the same simulated data.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "dags" / "experiments"
SIMULATIONS = REPO / "simulations"
SCENARIOS = ("refund-query-rewrite", "search-ranking-v2", "delivery-estimate")


def _variant(root: Path, key: str, change: dict[str, Any]) -> Path:
    """A copy of an experiment's config with top-level sections updated by `change`."""
    data = yaml.safe_load((EXPERIMENTS / f"{key}.yaml").read_text())
    for section, values in change.items():
        data[section].update(values)
    path = root / "configs" / f"{key}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _runs(root: Path) -> dict[str, tuple[Path, date]]:
    refund, search = (
        EXPERIMENTS / "refund-query-rewrite.yaml",
        EXPERIMENTS / "search-ranking-v2.yaml",
    )
    delivery = EXPERIMENTS / "delivery-estimate.yaml"
    from ab_pipeline.core.config import load_config

    start = load_config(delivery).start
    return {
        "ship": (refund, load_config(refund).end),
        "iterate": (
            _variant(root / "iterate", "refund-query-rewrite", {"decision": {"min_lift": 0.05}}),
            load_config(refund).end,
        ),
        "stop": (
            _variant(
                root / "stop",
                "refund-query-rewrite",
                {"guardrails": {"p95_latency_ms": {"max_increase": 50}}},
            ),
            load_config(refund).end,
        ),
        "rerun": (search, load_config(search).end),
        "continue": (delivery, start + timedelta(days=10)),
        "continue-early": (delivery, start + timedelta(days=1)),  # before the 3d window closes
        "continue-first": (delivery, start + timedelta(days=3)),  # the first day's units did
    }


def real_results(root: Path) -> dict[str, dict[str, Any]]:
    """Simulate, run the pipeline for each kind, return each run's results.json (and write
    `<root>/<kind>/briefs/...` with its brief.html, brief.txt and brief.eml)."""
    from ab_pipeline.devtools.simulate import main_simulate
    from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline

    warehouse = f"duckdb:///{root / 'warehouse.duckdb'}"
    scenarios = [str(SIMULATIONS / f"{key}.yaml") for key in SCENARIOS]
    assert main_simulate([*scenarios, "--warehouse", warehouse]) == 0
    found = {}
    for kind, (config, day) in _runs(root).items():
        ctx = RunContext(config, day, warehouse, root / kind / "briefs")
        run_pipeline(ctx, deliver=True)
        found[kind] = json.loads((ctx.run_dir / "results.json").read_text())
    return found


def run_dir(root: Path, kind: str, results: dict[str, Any]) -> Path:
    return root / kind / "briefs" / results["experiment"] / results["run_date"]
