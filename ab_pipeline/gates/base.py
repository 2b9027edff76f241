"""What a validity gate is: a name, words for the brief, and code that is imported only to run.

A gate is declared once, in `ab_pipeline.gates.registry`, as a `Gate`. Everything else (the
DAG's `gate_<name>` tasks, the pipeline's stages, the RERUN reason, the brief) loops over the
registry. The declaration holds only names and words, so the DAG file can read it at parse time;
the gate's code lives in its own module (`Gate.module`), imported when the gate runs or when
the brief shows its outcome. That module defines:

- `run(context: GateContext, units_table: str) -> GateResult`: the outcome, recorded as
  `gates/<name>.json` and as `gates.<name>` in results.json;
- optionally `brief_view(outcome: Mapping[str, Any]) -> dict[str, Any]`: the outcome's numbers
  formatted for the brief (the partials read it as `g.view`).

The brief shows each outcome through the gate's own partials, `templates/gates/<name>.html.j2`
and `templates/gates/<name>.txt.j2` (and, with `appendix`, `<name>.appendix.html.j2` and
`<name>.appendix.txt.j2`, shown after the brief's section 8). See README, "Adding a gate".
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ab_pipeline.core.config import ExperimentConfig
    from ab_pipeline.warehouse import Warehouse

# A gate's outcome: a JSON-able dict with at least `passed` (bool) and, by convention, `detail`
# (one sentence that the RERUN reason quotes); None when the gate does not apply to the
# experiment (shown as `Gate.not_applicable`). A failed gate is a finding, never an exception:
# raise only when the gate could not run at all.
GateResult = dict[str, Any] | None

# A gate's name is its results.json key, its task id's suffix and its partials' file name.
GATE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class GateContext(Protocol):
    """What a gate may read about the run (`ab_pipeline.orchestration.pipeline.RunContext` provides
    it)."""

    @property
    def config(self) -> ExperimentConfig: ...

    @property
    def run_date(self) -> date: ...

    @property
    def warehouse_url(self) -> str: ...

    @property
    def warehouse(self) -> Warehouse: ...


@dataclass(frozen=True)
class Gate:
    """One validity gate as the registry declares it.

    `name`: results.json key (`gates.<name>`), DAG task `gate_<name>`, partials
    `templates/gates/<name>.*.j2`. `title`: its heading in the brief. `hint`: what to look at
    first when it fails (the RERUN brief says "Look at <hint>"). `module`: the dotted module
    with its `run` (and optional `brief_view`). `not_applicable`: what the brief says when the
    outcome is null. `always_shown`: the brief shows the gate even for a results.json without
    its key (one written before the gate existed); otherwise only when the key is present.
    `appendix`: the gate has appendix partials too.

    A subclass may override `run` and `brief_view` instead of naming a module.
    """

    name: str
    title: str
    hint: str
    module: str = ""
    not_applicable: str = "did not run"
    always_shown: bool = False
    appendix: bool = False

    def __post_init__(self) -> None:
        if not GATE_NAME.match(self.name):
            raise ValueError(
                f"gate name {self.name!r} must be lower-case letters, digits and underscores"
            )

    def implementation(self) -> ModuleType:
        """The gate's module (imported now: never at DAG parse time)."""
        if not self.module:
            raise NotImplementedError(f"gate {self.name!r} names no module and overrides no run")
        return importlib.import_module(self.module)

    def run(self, context: GateContext, units_table: str) -> GateResult:
        outcome: GateResult = self.implementation().run(context, units_table)
        return outcome

    def brief_view(self, outcome: Mapping[str, Any]) -> dict[str, Any]:
        """The outcome formatted for the brief's partials (`g.view`); empty when the gate's
        module has no `brief_view` (the partials then read the outcome, `g.gate`)."""
        view = getattr(self.implementation(), "brief_view", None) if self.module else None
        return {} if view is None else dict(view(outcome))

    @property
    def partials(self) -> dict[str, str]:
        """Template names of the gate's partials, relative to the templates directory."""
        names = {"html": f"gates/{self.name}.html.j2", "text": f"gates/{self.name}.txt.j2"}
        if self.appendix:
            names["appendix_html"] = f"gates/{self.name}.appendix.html.j2"
            names["appendix_text"] = f"gates/{self.name}.appendix.txt.j2"
        return names
