"""Receipt gate: exposure properties that must not differ between arms.

Each field named in `receipt` (an index version, a model, a decoder, ...) must take exactly one
value across every enrolled unit's exposures, the same in every arm; otherwise the arms did not
run the system the experiment describes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

from ab_pipeline.core.config import ExperimentConfig
from ab_pipeline.warehouse import Warehouse, quote_ident
from ab_pipeline.warehouse.run_tables import RunWindow
from ab_pipeline.warehouse.sources import source_relation

if TYPE_CHECKING:
    from ab_pipeline.gates.base import GateContext, GateResult

MISSING = "(missing)"
# Values listed per field and arm in the outcome (the rest are counted).
MAX_LISTED = 10
# The brief's one plain-language line on the gate (the email has no tooltips).
EXPLAINED = (
    "Receipt: the system versions each arm actually ran; they must be identical, so that the "
    "tested change is the only difference."
)


def receipt_values(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, field: str, run_date: date
) -> dict[str, list[str]]:
    """Distinct values of one property per arm, over enrolled units' exposures."""
    return receipt_values_by_field(warehouse, config, units_table, [field], run_date)[field]


def receipt_values_by_field(
    warehouse: Warehouse,
    config: ExperimentConfig,
    units_table: str,
    fields: Sequence[str],
    run_date: date,
) -> dict[str, dict[str, list[str]]]:
    """Distinct values of each property per arm, over enrolled units' exposures.

    First over all the experiment's exposures up to the run date, without the semi-join to the
    units table (at 10M units that join is most of the cost). The enrolled units' exposures
    are a subset, so when that pass finds one value per field in every arm and every arm it
    saw has enrolled units (each enrolled unit's first exposure is in its arm), the enrolled
    values are exactly these. Otherwise the values are read again over enrolled units only.
    """
    fields = list(dict.fromkeys(fields))
    if not fields:
        return {}
    everyone = _distinct_values(warehouse, config, None, fields, run_date)
    if evaluate_receipt(everyone)["passed"]:
        seen = {arm for per_arm in everyone.values() for arm, values in per_arm.items() if values}
        enrolled = warehouse.query(f"SELECT DISTINCT arm FROM {quote_ident(units_table)}")
        if seen <= {str(row["arm"]) for row in enrolled}:
            return everyone
    return _distinct_values(warehouse, config, units_table, fields, run_date)


def _distinct_values(
    warehouse: Warehouse,
    config: ExperimentConfig,
    units_table: str | None,
    fields: list[str],
    run_date: date,
) -> dict[str, dict[str, list[str]]]:
    """Distinct values of each property per arm, in one query (`distinct_values_sql`); over
    the units in `units_table`, or over every unit exposed before the run date when it is
    None."""
    sql, params = distinct_values_sql(config, units_table, fields, run_date, warehouse.dialect)
    values: dict[str, dict[str, list[str]]] = {f: {arm: [] for arm in config.arms} for f in fields}
    for row in warehouse.query(sql, params):
        value = MISSING if row["value"] is None else str(row["value"])
        per_arm = values[fields[int(row["field_no"])]]
        per_arm.setdefault(str(row["arm"]), []).append(value)
    return values


def distinct_values_sql(
    config: ExperimentConfig,
    units_table: str | None,
    fields: list[str],
    run_date: date,
    dialect: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The query of `_distinct_values` and its parameters: rows (field_no, arm, value).

    The innermost query reads the exposures once and keeps the distinct (arm, properties
    document) pairs, normally a handful of rows: grouping by the JSON text is several times
    cheaper than extracting fields from every exposure. Only those documents are parsed, into
    the distinct combinations of every field's value; the outer query takes each field's
    distinct values per arm. (Were every document unique, this would parse each once, as a
    direct extraction does.) Field names are bound parameters, never SQL text. The semi-join
    (`IN`) selects the same values as a join to the units table would, and is the cheaper plan.
    The middle query's `HAVING COUNT(*) > 0` (always true) keeps the innermost GROUP BY:
    Spark's optimizer drops a GROUP BY whose rows only feed another one without an aggregate,
    and then parsed every exposure's JSON (docs/benchmarks.md, "2026-12-04 afternoon").
    """
    window = RunWindow.of(config, run_date)
    params: dict[str, Any] = {"key": config.key, "run_end": window.run_end}
    params.update({f"field_{i}": field for i, field in enumerate(fields)})
    # Only generated names and integer positions are written into the text.
    extracted = ", ".join(f"CAST(d.doc AS JSON)->>:field_{i} AS v{i}" for i in range(len(fields)))
    value_of = " ".join(f"WHEN {i} THEN c.v{i}" for i in range(len(fields)))
    positions = ", ".join(f"({i})" for i in range(len(fields)))
    enrolled = (
        f"AND x.unit_id IN (SELECT u.unit_id FROM {quote_ident(units_table)} u)"
        if units_table
        else ""
    )
    sql = f"""
        SELECT f.field_no AS field_no, c.arm AS arm, CASE f.field_no {value_of} END AS value
        FROM (
            SELECT d.arm AS arm, {extracted}
            FROM (
                SELECT x.arm AS arm, CAST(x.properties AS TEXT) AS doc
                FROM {source_relation(config.source, "exposures", dialect)} x
                WHERE x.experiment_key = :key AND x.exposed_at < :run_end
                  {enrolled}
                GROUP BY 1, 2
            ) AS d
            GROUP BY {", ".join(str(i + 1) for i in range(len(fields) + 1))}
            HAVING COUNT(*) > 0
        ) AS c
        CROSS JOIN (VALUES {positions}) AS f(field_no)
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        """
    return sql, params


def evaluate_receipt(values_by_field: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    """The gate's outcome; each arm's values are listed up to MAX_LISTED, then "and N more"
    (a field with thousands of values must not become a page-long reason or email)."""
    if not any(values for per_arm in values_by_field.values() for values in per_arm.values()):
        # No enrolled unit, so no exposure to read a field from: nothing differs, and
        # nothing shows that the arms ran the same system either.
        detail = "no enrolled unit's exposure to compare"
        return {
            "passed": False,
            "fields": list(values_by_field),
            "mismatches": [],
            "detail": detail,
        }
    mismatches: list[dict[str, Any]] = []
    for field, per_arm in values_by_field.items():
        distinct = {value for values in per_arm.values() for value in values}
        if len(distinct) != 1 or MISSING in distinct:
            listed = {arm: _listed(values) for arm, values in per_arm.items()}
            mismatches.append({"field": field, "values": listed})
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


def _listed(values: list[str]) -> list[str]:
    """The first MAX_LISTED values, and a last item saying how many more there are."""
    if len(values) <= MAX_LISTED:
        return list(values)
    return [*values[:MAX_LISTED], f"and {len(values) - MAX_LISTED:,} more"]


def run_receipt_gate(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, run_date: date
) -> dict[str, Any] | None:
    """None when the config names no receipt fields (the gate does not run)."""
    if not config.receipt:
        return None
    return evaluate_receipt(
        receipt_values_by_field(warehouse, config, units_table, config.receipt, run_date)
    )


def run(context: GateContext, units_table: str) -> GateResult:
    """The gate as the registry runs it (ab_pipeline.gates.registry)."""
    return run_receipt_gate(context.warehouse, context.config, units_table, context.run_date)


def brief_view(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """templates/gates/receipt.*.j2 show the outcome's fields and mismatches as they are."""
    return {"explain": EXPLAINED}
