"""Receipt gate: exposure properties that must not differ between arms.

Each field named in `receipt` (an index version, a model, a decoder, ...) must take exactly one
value across every enrolled unit's exposures, the same in every arm; otherwise the arms did not
run the system the experiment describes.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from ab_pipeline.config import ExperimentConfig
from ab_pipeline.extract import RunWindow
from ab_pipeline.warehouse import Warehouse, quote_ident

MISSING = "(missing)"


def receipt_values(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, field: str, run_date: date
) -> dict[str, list[str]]:
    """Distinct values of one property per arm, over enrolled units' exposures."""
    window = RunWindow.of(config, run_date)
    rows = warehouse.query(
        f"""
        SELECT x.arm AS arm, x.properties->>:field AS value
        FROM {quote_ident(config.source.exposures)} x
        JOIN {quote_ident(units_table)} u ON u.unit_id = x.unit_id
        WHERE x.experiment_key = :key AND x.exposed_at < :run_end
        GROUP BY x.arm, x.properties->>:field
        ORDER BY 1, 2
        """,
        {"field": field, "key": config.key, "run_end": window.run_end},
    )
    values: dict[str, list[str]] = {arm: [] for arm in config.arms}
    for row in rows:
        value = MISSING if row["value"] is None else str(row["value"])
        values.setdefault(str(row["arm"]), []).append(value)
    return values


def evaluate_receipt(values_by_field: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    mismatches: list[dict[str, Any]] = []
    for field, per_arm in values_by_field.items():
        distinct = {value for values in per_arm.values() for value in values}
        if len(distinct) != 1 or MISSING in distinct:
            mismatches.append({"field": field, "values": per_arm})
    detail = (
        "every receipt field has one value, the same in every arm"
        if not mismatches
        else "; ".join(
            f"{m['field']} differs: "
            + ", ".join(f"{arm} {'/'.join(v) or 'none'}" for arm, v in m["values"].items())
            for m in mismatches
        )
    )
    return {
        "passed": not mismatches,
        "fields": list(values_by_field),
        "mismatches": mismatches,
        "detail": detail,
    }


def run_receipt_gate(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, run_date: date
) -> dict[str, Any] | None:
    """None when the config names no receipt fields (the gate does not run)."""
    if not config.receipt:
        return None
    return evaluate_receipt(
        {f: receipt_values(warehouse, config, units_table, f, run_date) for f in config.receipt}
    )
