"""The project installs as a wheel that works without the checkout: the brief's templates and
the data-quality suites ship inside the package (pyproject.toml), found by `paths.data_dir`."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from ab_pipeline.core.paths import PACKAGE_DIR, REPO_ROOT, data_dir
from ab_pipeline.gates.data_quality import SUITES_DIR
from ab_pipeline.report.brief import DEFAULT_TEMPLATES_DIR, render_brief

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
FIXTURE = REPO / "tests" / "fixtures" / "results_ship.json"
DATA = ("templates", "expectations")


def test_a_checkout_reads_templates_and_suites_from_its_top_level_folders() -> None:
    assert PACKAGE_DIR == REPO / "ab_pipeline" and REPO_ROOT == REPO
    assert DEFAULT_TEMPLATES_DIR == data_dir("templates") == REPO / "templates"
    assert SUITES_DIR == data_dir("expectations") == REPO / "expectations"


def test_an_installed_package_reads_the_copy_it_carries(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "ab_pipeline"
    (package / "templates").mkdir(parents=True)
    (tmp_path / "site-packages" / "expectations").mkdir()  # never a neighbour's folder
    (package / "expectations").mkdir()
    assert data_dir("templates", package) == package / "templates"
    assert data_dir("expectations", package) == package / "expectations"


def test_every_package_directory_is_listed_for_the_wheel() -> None:
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "ab_pipeline").rglob("__init__.py")
    }
    data = {
        ".".join(("ab_pipeline", name, *folder.relative_to(REPO / name).parts))
        for name in DATA
        for folder in [REPO / name, *(p for p in (REPO / name).rglob("*") if p.is_dir())]
    }
    assert found | data == set(PYPROJECT["packages"])


@pytest.mark.parametrize("name", DATA)
def test_every_file_of_the_data_folders_is_shipped(name: str) -> None:
    package = f"ab_pipeline.{name}"
    assert PYPROJECT["package-dir"][package] == name
    patterns = PYPROJECT["package-data"][package]
    folder = REPO / name
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    assert files
    assert [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)] == []


# Run with -I -S: neither the working directory nor site-packages' .pth files (the editable
# install's finder, which maps `ab_pipeline` to the checkout) are on the path; only the wheel's
# install directory and, after it, the project's dependencies.
USE_THE_WHEEL = """
import json, sys
from pathlib import Path

install, dependencies, fixture = sys.argv[1:4]
sys.path[:0] = [install, dependencies]
import ab_pipeline
from ab_pipeline.report.brief import DEFAULT_TEMPLATES_DIR, render_brief
from ab_pipeline.gates.data_quality import SUITES_DIR, load_suite_templates

brief = render_brief(json.loads(Path(fixture).read_text()))
print(json.dumps({
    "package": ab_pipeline.__file__,
    "modules": sorted(m.__file__ for n, m in list(sys.modules.items())
                      if n.split(".")[0] == "ab_pipeline" and getattr(m, "__file__", None)),
    "templates": str(DEFAULT_TEMPLATES_DIR),
    "suites_dir": str(SUITES_DIR),
    "suites": [suite["name"] for suite in load_suite_templates()],
    "subject": brief.subject,
    "text": brief.text,
    "charts": len(brief.images),
}))
"""


@pytest.mark.slow  # builds and installs the wheel
def test_the_built_wheel_renders_a_brief_and_loads_the_suites_without_the_checkout(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    for folder in ("ab_pipeline", *DATA):
        shutil.copytree(
            REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", tmp_path / "dist", source], check=True)
    [wheel] = (tmp_path / "dist").glob("ab_pipeline-*.whl")
    install = tmp_path / "install"
    subprocess.run([*pip, "install", "--no-deps", "--target", install, wheel], check=True)

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AB_PIPELINE_"))}
    env["MPLCONFIGDIR"] = str(tmp_path / "matplotlib")
    dependencies = sysconfig.get_paths()["purelib"]
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", USE_THE_WHEEL, install, dependencies, FIXTURE],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    used = json.loads(run.stdout)

    package = install / "ab_pipeline"
    assert Path(used["package"]) == package / "__init__.py"
    assert all(Path(f).is_relative_to(install) for f in used["modules"]), used["modules"]
    assert Path(used["templates"]) == package / "templates"
    assert Path(used["suites_dir"]) == package / "expectations"
    assert used["suites"] == ["contract", "exposures", "arms", "events", "units"]
    # The same brief the checkout renders from its own templates.
    here = render_brief(json.loads(FIXTURE.read_text()))
    assert (used["subject"], used["text"], used["charts"]) == (
        here.subject,
        here.text,
        len(here.images),
    )
    assert used["charts"] > 0
