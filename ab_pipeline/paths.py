"""Where the project's files are: the checkout around the package, and its defaults.

`REPO_ROOT` is the directory holding `ab_pipeline/`: in a checkout (or an editable install) the
repository, with `dags/`, `simulations/` and `var/`. The CLI's defaults point there.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
VAR = REPO_ROOT / "var"
DEFAULT_WAREHOUSE = f"duckdb:///{VAR / 'warehouse.duckdb'}"
EXPERIMENTS = REPO_ROOT / "dags" / "experiments"
SIMULATIONS = REPO_ROOT / "simulations"
