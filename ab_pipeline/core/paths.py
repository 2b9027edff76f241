"""Where the project's files are: the package's data, the checkout around it, its defaults.

`REPO_ROOT` is the directory holding `ab_pipeline/`: in a checkout (or an editable install) the
repository, with `dags/`, `simulations/` and `var/`. The CLI's defaults point there.

The brief's templates and the data-quality suites are edited at the top of the repository
(`templates/`, `expectations/`) and ship inside the wheel as `ab_pipeline/templates` and
`ab_pipeline/expectations` (pyproject.toml): `data_dir` finds them either way.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = PACKAGE_DIR.parent
VAR = REPO_ROOT / "var"
DEFAULT_WAREHOUSE = f"duckdb:///{VAR / 'warehouse.duckdb'}"
EXPERIMENTS = REPO_ROOT / "dags" / "experiments"
SIMULATIONS = REPO_ROOT / "simulations"


def data_dir(name: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """`templates` or `expectations`: the copy an installed package carries, else the
    checkout's top-level folder (their source of truth)."""
    packaged = package_dir / name
    return packaged if packaged.is_dir() else package_dir.parent / name
