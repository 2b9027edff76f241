"""`ab-pipeline simulate`: the command line over `simulate`."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from ab_pipeline.core.config import load_config
from ab_pipeline.core.errors import ConfigError
from ab_pipeline.core.paths import DEFAULT_WAREHOUSE, EXPERIMENTS, SIMULATIONS
from ab_pipeline.devtools.simulate.api import SimulationSummary, simulate
from ab_pipeline.devtools.simulate.scenario import load_scenario
from ab_pipeline.warehouse import redacted

if TYPE_CHECKING:
    pass

# --- the CLI ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ab-pipeline simulate",
        description="Write seeded, realistic exposures and events for experiments into a "
        "warehouse, replacing only those experiments' rows.",
    )
    parser.add_argument(
        "scenarios", nargs="*", type=Path, help="scenario YAML files (default: simulations/*.yaml)"
    )
    parser.add_argument("--warehouse", default=DEFAULT_WAREHOUSE, help="SQLAlchemy URL")
    parser.add_argument(
        "--experiments-dir",
        type=Path,
        default=EXPERIMENTS,
        help="where <experiment>.yaml configs are found",
    )
    parser.add_argument("--config", type=Path, help="the config (with a single scenario only)")
    parser.add_argument("--schema", help="schema for the (unqualified) contract tables")
    parser.add_argument(
        "--units", type=_positive, help="override the scenario's number of units (benchmarks)"
    )
    parser.add_argument(
        "--as-of",
        type=date.fromisoformat,
        help="write only the data that exists at the end of this day (YYYY-MM-DD)",
    )
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of units")
    return int(text)


def _simulate_one(path: Path, args: argparse.Namespace) -> SimulationSummary:
    scenario = load_scenario(path)
    config = load_config(args.config or args.experiments_dir / f"{scenario.experiment}.yaml")
    if args.units:
        scenario = scenario.with_units(args.units)
    return simulate(config, scenario, args.warehouse, schema=args.schema, as_of=args.as_of)


def main_simulate(args: list[str] | None = None) -> int:
    """`ab-pipeline simulate`: one line per experiment; exit 2 when a file is invalid."""
    options = _parser().parse_args(args)
    paths = options.scenarios or sorted(SIMULATIONS.glob("*.yaml"))
    if options.config and len(paths) != 1:
        print("simulate: --config needs exactly one scenario", file=sys.stderr)
        return 2
    if not paths:
        print("simulate: no scenarios found", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        try:
            summary = _simulate_one(path, options)
        except ConfigError as error:  # one bad file must not stop the others
            print(error, file=sys.stderr)
            status = 2
            continue
        print(f"{summary.line()} -> {redacted(options.warehouse)}")
    return status
