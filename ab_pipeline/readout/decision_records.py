"""Human decision records: what the owner actually decided after a final brief.

Stored in the warehouse table `ab_human_decisions` (one row per recorded decision, append-only:
a later record supersedes an earlier one for readers, nothing is overwritten), keyed by
experiment and the run date of the final brief it answers, with the pipeline's recommendation
copied in and a `disagrees` flag. The pipeline never writes this table, so re-running a readout
leaves human records intact; every later results.json lists them under `human_decisions`.

A decision answers the experiment's latest final readout *as its date stands* in the results
tables (`ab_latest_readouts`: the date's latest decision-grade attempt), so a RERUN attempt after
a SHIP (data broke overnight) does not turn the owner's decision into one against RERUN. Without
results tables the archived results.json of the published readouts stands in. Concurrent
`decide` calls on one DuckDB file wait for each other (`ab_pipeline.warehouse.warehouse_lock`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from ab_pipeline.readout.results_model import load_results, validate_results
from ab_pipeline.warehouse import Warehouse, quote_ident

TABLE = "ab_human_decisions"
RUN_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
DECISIONS = ("ship", "iterate", "stop", "rerun")
_DDL = f"""CREATE TABLE IF NOT EXISTS {{table}} (
  experiment_key    TEXT      NOT NULL,
  run_date          DATE      NOT NULL,
  decision          TEXT      NOT NULL,
  decided_by        TEXT      NOT NULL,
  note              TEXT      NOT NULL,
  follow_up         DATE      NOT NULL,
  recorded_at       TIMESTAMP NOT NULL,
  pipeline_decision TEXT,
  disagrees         BOOLEAN   NOT NULL,
  CHECK (decision IN ({", ".join(f"'{d.upper()}'" for d in DECISIONS)}))
)"""


@dataclass(frozen=True)
class HumanDecision:
    experiment: str
    run_date: str
    decision: str
    by: str
    note: str
    follow_up: str
    recorded_at: str
    pipeline_decision: str | None
    disagrees: bool


def table_name(schema: str | None = None) -> str:
    return quote_ident(f"{schema}.{TABLE}" if schema else TABLE)


def ensure_table(warehouse: Warehouse, schema: str | None = None) -> None:
    warehouse.execute(_DDL.format(table=table_name(schema)))


def latest_final_results(
    briefs_dir: Path,
    experiment: str,
    warehouse: Warehouse | None = None,
    schema: str | None = None,
) -> dict[str, Any] | None:
    """results.json of the experiment's latest final readout: from the results tables when
    `warehouse` has them (the date's latest decision-grade attempt), else the archive's."""
    if warehouse is not None:
        from ab_pipeline.readout.results_store import latest_final_readout, results_schema

        stored = latest_final_readout(warehouse, experiment, results_schema(schema))
        if stored is not None:
            return stored
    finals = []
    for path in (briefs_dir / experiment).glob("*/results.json"):
        if not RUN_DATE.fullmatch(path.parent.name):
            continue  # an attempt's working directory, not a published readout
        results = json.loads(path.read_text())
        if results.get("status") == "final":
            finals.append((str(results["run_date"]), path))
    # Only the readout a decision answers must meet the contract (ResultsInvalid names where).
    return load_results(max(finals)[1]) if finals else None


def record_decision(
    warehouse: Warehouse,
    experiment: str,
    decision: str,
    by: str,
    note: str,
    follow_up: date,
    pipeline_results: dict[str, Any],
    schema: str | None = None,
) -> HumanDecision:
    """Store one human decision against a final readout; returns what was stored."""
    if decision.lower() not in DECISIONS:
        raise ValueError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    if not by.strip() or not note.strip():
        raise ValueError("a decision record needs who decided (--by) and why (--note)")
    pipeline = pipeline_results.get("decision")
    record = HumanDecision(
        experiment=experiment,
        run_date=str(pipeline_results["run_date"]),
        decision=decision.upper(),
        by=by,
        note=note,
        follow_up=follow_up.isoformat(),
        recorded_at=datetime.now(UTC).replace(tzinfo=None, microsecond=0).isoformat(),
        pipeline_decision=pipeline,
        # CONTINUE has no human counterpart; any other difference is a disagreement.
        disagrees=pipeline is not None and pipeline != decision.upper(),
    )
    ensure_table(warehouse, schema)
    warehouse.execute(
        f"INSERT INTO {table_name(schema)} (experiment_key, run_date, decision, decided_by, "
        "note, follow_up, recorded_at, pipeline_decision, disagrees) VALUES (:e, :r, :d, :b, "
        ":n, :f, :t, :p, :x)",
        {
            "e": experiment,
            "r": date.fromisoformat(record.run_date),
            "d": record.decision,
            "b": by,
            "n": note,
            "f": follow_up,
            "t": datetime.fromisoformat(record.recorded_at),
            "p": pipeline,
            "x": record.disagrees,
        },
    )
    return record


def load_decisions(
    warehouse: Warehouse, experiment: str, schema: str | None = None
) -> list[dict[str, Any]]:
    """Every recorded decision of the experiment, oldest first (results.json `human_decisions`)."""
    if not warehouse.table_exists(f"{schema}.{TABLE}" if schema else TABLE):
        return []
    rows = warehouse.query(
        f"SELECT run_date, decision, decided_by, note, follow_up, recorded_at, "
        f"pipeline_decision, disagrees FROM {table_name(schema)} WHERE experiment_key = :e "
        "ORDER BY recorded_at, run_date",
        {"e": experiment},
    )
    return [
        {
            "run_date": str(row["run_date"]),
            "decision": row["decision"],
            "by": row["decided_by"],
            "note": row["note"],
            "follow_up": str(row["follow_up"]),
            "recorded_at": _iso(row["recorded_at"]),
            "pipeline_decision": row["pipeline_decision"],
            "disagrees": bool(row["disagrees"]),
        }
        for row in rows
    ]


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def annotate_archive(run_dir: Path, decisions: list[dict[str, Any]]) -> None:
    """Refresh `human_decisions` in an archived results.json (atomic replace)."""
    path = run_dir / "results.json"
    if not path.exists():
        return
    results = load_results(path)
    results["human_decisions"] = decisions
    validate_results(results, str(path))  # never write a results.json the contract refuses
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str, allow_nan=False))
    tmp.replace(path)


def as_dict(record: HumanDecision) -> dict[str, Any]:
    return asdict(record)
