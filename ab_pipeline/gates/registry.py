"""The validity gates, in the order they are shown and their failures are named.

This list is the one place a gate is declared: the DAG builds a `gate_<name>` task for each,
the pipeline records each outcome, the decision names each failed gate in the RERUN reason and
the brief shows each through its partials. It is read at DAG parse time, so it holds names and
words only; a gate's code is imported when it runs (`ab_pipeline.gates.base`).

To add a gate: write its module (`run`, optionally `brief_view`), its partials in
`templates/gates/`, its test, and declare it below.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ab_pipeline.gates.base import Gate

DECLARED: tuple[Gate, ...] = (
    Gate(
        name="data_quality",
        title="Data quality",
        hint="the failing checks' examples below: they are the offending rows' values.",
        module="ab_pipeline.gates.data_quality",
        always_shown=True,
        appendix=True,
    ),
    Gate(
        name="srm",
        title="Sample ratio (SRM)",
        hint="where the imbalance concentrates (day and property breakdown below), redirects, "
        "bot filtering and anything that triggers exposure differently per arm.",
        module="ab_pipeline.gates.srm",
        always_shown=True,
    ),
    Gate(
        name="receipt",
        title="Receipt (same system in every arm)",
        hint="the deployment: every arm must run the same system version.",
        module="ab_pipeline.gates.receipt",
        not_applicable="not applicable: the config names no receipt fields (system versions to "
        "compare across arms)",
        always_shown=True,
    ),
    Gate(
        name="assignment",
        title="Assignment integrity",
        hint="units whose logged arm differs from the recomputed one, and exposures logged "
        "before the triggering event.",
        module="ab_pipeline.gates.assignment",
        not_applicable="not applicable: it recomputes each unit's arm, which is possible only "
        "when the config assigns arms by hash (assignment: hash)",
    ),
)

_gates: tuple[Gate, ...] = DECLARED


def gates() -> tuple[Gate, ...]:
    """Every registered gate, in order."""
    return _gates


def names() -> tuple[str, ...]:
    return tuple(gate.name for gate in _gates)


def find(name: str) -> Gate | None:
    """The registered gate of that name; None for a name no gate has (an older readout's)."""
    return next((gate for gate in _gates if gate.name == name), None)


def get(name: str) -> Gate:
    gate = find(name)
    if gate is None:
        raise ValueError(f"unknown gate {name!r}")
    return gate


def register(gate: Gate) -> None:
    """Add a gate after the registered ones (in this process only)."""
    global _gates
    if find(gate.name) is not None:
        raise ValueError(f"a gate named {gate.name!r} is already registered")
    _gates = (*_gates, gate)


@contextmanager
def registered(*extra: Gate) -> Iterator[tuple[Gate, ...]]:
    """The registry with `extra` gates added for the duration of the block (tests)."""
    global _gates
    before = _gates
    try:
        for gate in extra:
            register(gate)
        yield _gates
    finally:
        _gates = before
