"""Where a sample-ratio mismatch comes from: the SRM gate's breakdown.

`srm_diagnosis` breaks the arm counts down by exposure day and by each exposure property (read
from the first exposure's `properties` JSON), each slice with its own chi-square p-value against
the planned split, so a RERUN brief can say "Android on 06-03" instead of "something is off".
All counting happens in SQL; Python sees one row per (slice, arm).
"""

from __future__ import annotations

import json
from typing import Any

from ab_pipeline.core.config import ExperimentConfig
from ab_pipeline.stats.statistics import srm_test
from ab_pipeline.warehouse import Warehouse, quote_ident
from ab_pipeline.warehouse.run_tables import EXPOSURE_DAY
from ab_pipeline.warehouse.sources import source_relation

MAX_PROPERTIES = 10  # property keys broken down
MAX_VALUES = 20  # largest values per key shown


def _slice(
    label: str, value: Any, counts: dict[str, int], config: ExperimentConfig
) -> dict[str, Any]:
    planned = {arm: counts.get(arm, 0) for arm in config.arms}
    p_value = srm_test(planned, config.arms).p_value if sum(planned.values()) else None
    return {label: value, "counts": planned, "p_value": p_value}


def _grouped(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, int]]:
    grouped: dict[Any, dict[str, int]] = {}
    for row in rows:
        grouped.setdefault(row[key], {})[str(row["arm"])] = int(row["units"])
    return grouped


def exposure_rates(warehouse: Warehouse, units_table: str) -> dict[str, float | None]:
    """Shares of units seen in more than one arm, and exposed more than once."""
    [row] = warehouse.query(
        f"""SELECT COUNT(*) AS units,
                   SUM(CASE WHEN several_arms = 1 THEN 1 ELSE 0 END) AS multi_arm,
                   SUM(CASE WHEN exposures > 1 THEN 1 ELSE 0 END) AS repeat
            FROM {quote_ident(units_table)}"""
    )
    units = int(row["units"] or 0)
    if not units:
        return {"multiple_exposure_rate": None, "repeat_exposure_rate": None}
    return {
        "multiple_exposure_rate": int(row["multi_arm"] or 0) / units,
        "repeat_exposure_rate": int(row["repeat"] or 0) / units,
    }


def by_day(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str
) -> list[dict[str, Any]]:
    rows = warehouse.query(
        f"""SELECT {EXPOSURE_DAY} AS day, arm, COUNT(*) AS units
            FROM {quote_ident(units_table)} GROUP BY 1, 2 ORDER BY 1, 2"""
    )
    return [
        _slice("day", str(day), counts, config) for day, counts in _grouped(rows, "day").items()
    ]


def property_keys(warehouse: Warehouse, config: ExperimentConfig) -> list[str]:
    """Keys present in the experiment's exposure properties (from distinct JSON texts)."""
    rows = warehouse.query(
        f"""SELECT CAST(properties AS TEXT) AS p
            FROM {source_relation(config.source, "exposures", warehouse.dialect)} AS x
            WHERE experiment_key = :key AND properties IS NOT NULL GROUP BY 1 LIMIT 200""",
        {"key": config.key},
    )
    keys: set[str] = set()
    for row in rows:
        try:
            parsed = json.loads(row["p"])
        except (TypeError, ValueError):
            continue
        if isinstance(parsed, dict):
            keys |= {k for k in parsed if isinstance(k, str) and k.isidentifier()}
    return sorted(keys)[:MAX_PROPERTIES]


def by_property(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, field: str
) -> list[dict[str, Any]]:
    """Arm counts per value of one property on each unit's first exposure."""
    rows = warehouse.query(
        f"""SELECT COALESCE(x.properties->>:field, '(missing)') AS value, u.arm AS arm,
                   COUNT(DISTINCT u.unit_id) AS units
            FROM {quote_ident(units_table)} u
            JOIN {source_relation(config.source, "exposures", warehouse.dialect)} x
              ON x.unit_id = u.unit_id AND x.exposed_at = u.first_exposed_at
             AND x.experiment_key = :key
            GROUP BY 1, 2""",
        {"field": field, "key": config.key},
    )
    grouped = _grouped(rows, "value")
    largest = sorted(grouped, key=lambda v: -sum(grouped[v].values()))[:MAX_VALUES]
    return [_slice("value", str(v), grouped[v], config) for v in largest]


def srm_diagnosis(
    warehouse: Warehouse, config: ExperimentConfig, units_table: str, failed: bool
) -> dict[str, Any]:
    """Exposure rates always; the day/property breakdown when the SRM gate failed."""
    diagnosis: dict[str, Any] = dict(exposure_rates(warehouse, units_table))
    if failed:
        diagnosis["by_day"] = by_day(warehouse, config, units_table)
        diagnosis["by_property"] = {
            key: by_property(warehouse, config, units_table, key)
            for key in property_keys(warehouse, config)
        }
    return diagnosis
