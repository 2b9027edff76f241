"""The package's layering goes one way: no module imports, even lazily, one that imports it.

The graph is read from the source with `ast`, so imports inside functions (the pipeline's lazy
imports of heavy stages) and under `TYPE_CHECKING` count as much as those at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ab_pipeline

PACKAGE = Path(ab_pipeline.__file__).resolve().parent


def module_files(package_dir: Path) -> dict[str, Path]:
    """{dotted module name: file} for every module and subpackage below `package_dir`."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported_names(module: str, path: Path) -> list[str]:
    """Every dotted name the module imports, relative imports resolved; `from m import x`
    yields `m.x` (a submodule, or a name in `m`)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, read statically from the source."""
    modules = module_files(package_dir)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        for name in _imported_names(module, path):
            while name and name not in modules:  # `m.x` with x a function: the module m
                name = name.rpartition(".")[0]
            if name and name != module:
                graph[module].add(name)
    return graph


def import_cycles(package_dir: Path) -> list[list[str]]:
    """One cycle (`[a, b, a]`) per group of modules that import each other, sorted."""
    graph = import_graph(package_dir)
    cycles = []
    for group in _strongly_connected(graph):
        if len(group) > 1:
            cycles.append(_cycle_through(min(group), graph, group))
    return sorted(cycles)


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on a deep chain)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    groups.append(group)
    return groups


def _cycle_through(start: str, graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest import path from `start` back to itself inside its group."""
    paths = {succ: [start, succ] for succ in sorted(graph[start] & group)}
    frontier = list(paths)
    while start not in paths:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & group):
                if succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    following.append(succ)
        frontier = following
    return paths[start]


def _package(root: Path, files: dict[str, str]) -> Path:
    """A package `pkg` under `root` with these files (paths relative to the package)."""
    for name, text in {"__init__.py": "", **files}.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_ab_pipeline_has_no_import_cycle() -> None:
    cycles = import_cycles(PACKAGE)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_lazy_relative_and_type_checking_imports_of_the_package() -> None:
    graph = import_graph(PACKAGE)
    assert (
        "ab_pipeline.report.brief" in graph["ab_pipeline.orchestration.pipeline"]
    )  # inside stage_brief
    assert "ab_pipeline.gates.data_quality" in graph["ab_pipeline.orchestration.pipeline"]
    assert (
        "ab_pipeline.report.charts" in graph["ab_pipeline.report.brief"]
    )  # under TYPE_CHECKING, too
    assert "ab_pipeline.core.paths" in graph["ab_pipeline.orchestration.cli"]


FUNCTION_LEVEL = {
    "low.py": "import os\n\ndef helper():\n    from pkg.high import run\n",
    "high.py": "from pkg import low\n\ndef run():\n    return low\n",
    "leaf.py": "from .low import helper\n",
}
RELATIVE_IN_SUBPACKAGE = {
    "a.py": "from pkg.sub import b\n",
    "sub/__init__.py": "",
    "sub/b.py": "from . import c\n",
    "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import thing\n",
}
ONE_WAY = {"a.py": "from pkg import b\nimport pkg.c\n", "b.py": "from pkg.c import x\n", "c.py": ""}


@pytest.mark.parametrize(
    ("files", "cycles"),
    [
        pytest.param(FUNCTION_LEVEL, [["pkg.high", "pkg.low", "pkg.high"]], id="function-level"),
        pytest.param(
            RELATIVE_IN_SUBPACKAGE,
            [["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]],
            id="relative-type-checking",
        ),
        pytest.param(ONE_WAY, [], id="one-way"),
    ],
)
def test_each_cycle_of_a_package_is_found_and_named(
    tmp_path: Path, files: dict[str, str], cycles: list[list[str]]
) -> None:
    assert import_cycles(_package(tmp_path, files)) == cycles


def test_a_one_way_package_graph_has_an_edge_per_imported_module(tmp_path: Path) -> None:
    assert import_graph(_package(tmp_path, ONE_WAY)) == {
        "pkg": set(),
        "pkg.a": {"pkg.b", "pkg.c"},
        "pkg.b": {"pkg.c"},
        "pkg.c": set(),
    }


# The subpackages from the bottom up: each may import only those listed before it (and the
# package root, which installs the catalog). README's "Layout" lists them in this order.
LAYERS = [
    "core",
    "warehouse",
    "stats",
    "metrics",
    "gates",
    "readout",
    "report",
    "devtools",
    "orchestration",
]


def upward_imports(graph: dict[str, set[str]], layers: list[str]) -> list[str]:
    """`a.x -> b.y` for every import from a subpackage into one at its level or above."""

    def layer(module: str) -> int | None:
        parts = module.split(".")
        return layers.index(parts[1]) if len(parts) > 2 and parts[1] in layers else None

    found = []
    for module, imported in graph.items():
        for target in imported:
            here, there = layer(module), layer(target)
            if here is not None and there is not None and there > here:
                found.append(f"{module} -> {target}")
    return sorted(found)


def test_every_subpackage_of_ab_pipeline_has_a_layer() -> None:
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == set(LAYERS)


def test_subpackages_import_only_layers_below_them() -> None:
    assert upward_imports(import_graph(PACKAGE), LAYERS) == []


def test_an_import_into_a_higher_layer_is_named() -> None:
    graph = {"p.core.config": {"p.report.brief"}, "p.report.brief": {"p.core.config"}}
    assert upward_imports(graph, ["core", "report"]) == ["p.core.config -> p.report.brief"]
