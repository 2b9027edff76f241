"""The API: `simulate(config, scenario, warehouse_url)` and the summary of what it wrote."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from ab_pipeline.core.config import ExperimentConfig, SourceName
from ab_pipeline.devtools.simulate.generate import _Generator
from ab_pipeline.devtools.simulate.plan import build_plan
from ab_pipeline.devtools.simulate.scenario import (
    _DAY,
    _EVENT_COLUMNS,
    _EXPOSURE_COLUMNS,
    _STATUS,
    CHUNK_UNITS,
    Scenario,
)
from ab_pipeline.devtools.simulate.sinks import (
    _event_select,
    _exposure_select,
    _frames,
    _open_sink,
    _prepare,
    _table,
)

if TYPE_CHECKING:
    pass

# --- the API ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationSummary:
    """What one simulation wrote. `enrolled` counts units per arm, `excluded` included."""

    experiment: str
    enrolled: dict[str, int]
    excluded: dict[str, int]  # internal or bot units (the pipeline drops them)
    exposures: int
    events: int
    seconds: float

    @property
    def analysed(self) -> dict[str, int]:
        return {arm: n - self.excluded[arm] for arm, n in self.enrolled.items()}

    def line(self) -> str:
        arms = " / ".join(f"{arm} {n:,}" for arm, n in self.analysed.items())
        return (
            f"{self.experiment}: {sum(self.enrolled.values()):,} units ({arms} after "
            f"{sum(self.excluded.values()):,} internal/bot), {self.exposures:,} exposures, "
            f"{self.events:,} events in {self.seconds:.2f} s"
        )


def simulate(
    config: ExperimentConfig,
    scenario: Scenario,
    warehouse_url: str,
    *,
    schema: str | None = None,
    as_of: date | None = None,
    chunk_units: int = CHUNK_UNITS,
) -> SimulationSummary:
    """Replace the experiment's exposures and events in the warehouse with simulated ones.

    `schema` qualifies the config's (unqualified) table names. `as_of` writes only what the
    warehouse would hold at the end of that day (for interim readouts without future data).
    One transaction: on any error nothing of this experiment changes.
    """
    import numpy as np

    began = time.perf_counter()
    plan = build_plan(config, scenario)
    cutoff = plan.end_s if as_of is None else min(plan.end_s, _day_end(config.start, as_of))
    exposures = _table(_source_table(config, "exposures"), schema)
    events = _table(_source_table(config, "events"), schema)
    counts = np.zeros((len(plan.arms), len(_STATUS)), dtype=np.int64)
    written = [0, 0]
    sink = _open_sink(warehouse_url)
    committed = False
    try:
        _prepare(sink, plan, exposures, events, schema)
        for chunk in _Generator(plan).chunks(chunk_units):
            seen = chunk.first < cutoff
            np.add.at(counts, (chunk.arm[seen], chunk.status[seen]), 1)
            exp_frame, ev_frame = _frames(plan, chunk, cutoff)
            sink.write(exposures, _EXPOSURE_COLUMNS, exp_frame, _exposure_select(plan, "sim_chunk"))
            sink.write(events, _EVENT_COLUMNS, ev_frame, _event_select(plan, "sim_chunk"))
            written[0] += len(exp_frame)
            written[1] += len(ev_frame)
        committed = True
    finally:
        sink.finish(commit=committed)
    return SimulationSummary(
        experiment=config.key,
        enrolled={arm: int(counts[i].sum()) for i, arm in enumerate(plan.arms)},
        excluded={arm: int(counts[i, 1:].sum()) for i, arm in enumerate(plan.arms)},
        exposures=written[0],
        events=written[1],
        seconds=time.perf_counter() - began,
    )


def _source_table(config: ExperimentConfig, which: SourceName) -> str:
    """The source table the simulation writes; a source given as `{sql: ...}` has none."""
    table = config.source.table(which)
    if table is None:
        raise ValueError(
            f"source.{which} of {config.key} is a query ({{sql: ...}}): the simulation writes "
            "tables; simulate into a config whose sources are table names"
        )
    return table


def _day_end(start: date, day: date) -> int:
    return ((day - start).days + 1) * _DAY
