"""Typed failures: "do not analyse this" is not the same as "the pipeline broke".

Every error carries the experiment (and, where it applies, the metric and run date) so an
operator reading a log line can find what it is about.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file: where (dotted field path) and why."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class AbPipelineError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AbPipelineError):
    """A config file is invalid. Names the file and every field that is wrong."""

    def __init__(self, path: str, problems: list[ConfigProblem]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {path}: {p}" for p in problems)
        super().__init__(f"invalid experiment config {path}:\n{lines}")


class PipelineError(AbPipelineError):
    """The pipeline itself broke (warehouse unreachable, SQL error, ...): not a finding."""

    def __init__(
        self,
        message: str,
        *,
        experiment: str | None = None,
        metric: str | None = None,
        run_date: str | None = None,
    ) -> None:
        self.experiment = experiment
        self.metric = metric
        self.run_date = run_date
        tags = [
            f"{name}={value}"
            for name, value in (
                ("experiment", experiment),
                ("metric", metric),
                ("run_date", run_date),
            )
            if value
        ]
        prefix = f"[{' '.join(tags)}] " if tags else ""
        super().__init__(prefix + message)


class GateFailed(AbPipelineError):
    """A validity gate failed: the data must not be analysed. Not a pipeline bug."""

    def __init__(self, experiment: str, gates: list[str]) -> None:
        self.experiment = experiment
        self.gates = gates
        super().__init__(f"[experiment={experiment}] validity gate(s) failed: {', '.join(gates)}")
