"""`ab-pipeline simulate`: seeded, realistic experiment data in the warehouse contract.

A scenario (`simulations/<experiment>.yaml`) states the truth of one experiment: how many units
enrol, how they are really assigned, and each metric's true value per arm. `simulate` writes
exposures and events for it into a warehouse (DuckDB file or PostgreSQL), creating the
contract tables when missing and replacing only this experiment's rows, so several experiments
share one warehouse and a re-run is idempotent.

The data follows the semantics the extraction SQL implements, so observed values match the
truth up to sampling error (exactly, for proportions, with `exact: true`):

- enrollment is the unit's first exposure; repeat exposures come later, in the same arm;
- a proportion converter has >= 1 matching event inside [first exposure, + window); with
  `unless`, a non-converter may have an in-window event spoiled by an `unless` event within
  `within` after it, and some converters get an `unless` event later than `within`;
- mean and quantile metrics get a Poisson number of events per unit inside the window;
- noise that must not change the truth: metric events before the first exposure and after the
  window, unrelated events, untagged events, internal and bot units (excluded downstream);
- every exposure lies in [start, end] and every event before config.end + 1 day, so a final
  readout on config.end sees no data from the future.

Generation is vectorised numpy over chunks of units (memory bounded by the chunk, not by the
run): global per-arm totals (arm sizes, exclusions, converters) are drawn first and handed out
to chunks by hypergeometric draws, which is distributed exactly like independent per-unit draws
and also makes `counts` and `exact` work when streaming. numpy, pandas and duckdb are imported
inside functions: the CLI imports this module.
"""

from ab_pipeline.devtools.simulate.api import SimulationSummary, simulate
from ab_pipeline.devtools.simulate.cli import main_simulate
from ab_pipeline.devtools.simulate.plan import build_plan, expected_values
from ab_pipeline.devtools.simulate.scenario import (
    CHUNK_UNITS,
    Scenario,
    ScenarioError,
    ValueDistribution,
    load_scenario,
    parse_scenario,
)

__all__ = [
    "CHUNK_UNITS",
    "Scenario",
    "ScenarioError",
    "SimulationSummary",
    "ValueDistribution",
    "build_plan",
    "expected_values",
    "load_scenario",
    "main_simulate",
    "parse_scenario",
    "simulate",
]
