"""The pipeline's stages as plain functions: config -> extract -> gates -> analysis -> decision
-> brief -> delivery. The DAG factory wires them as tasks; tests and the CLI can call them
without a scheduler.

Stages hand each other small things only: the units table's name, and JSON files in the
attempt's directory. The brief stage reads whatever exists, so a failed gate still produces a
brief.

Nothing published is lost to a failing re-run. Each attempt (an Airflow DAG run, named by its
run id) works in its own directory beside the published one,
`<briefs root>/<experiment>/<run date>.attempt-<run id>/`, which any task of the run can derive
from its RunContext. Only when the brief is complete does the brief stage swap it into
`<run date>/` (one atomic rename; the previous readout is then removed), and send_email writes
its `.eml` there. A re-run that breaks (warehouse locked or missing, task killed) leaves the
date's earlier brief, results.json and .eml where they were; its own directory stays for
diagnosis until an attempt of that date publishes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from datetime import date
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from ab_pipeline import __version__
from ab_pipeline.core.config import ExperimentConfig, config_sha256, load_config
from ab_pipeline.core.errors import GateFailed, PipelineError
from ab_pipeline.core.paths import REPO_ROOT
from ab_pipeline.gates import registry as gate_registry
from ab_pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)

# The gates as declared (ab_pipeline.gates.registry); the stages read the registry itself.
GATES = gate_registry.names()
RESULTS_FILE = "results.json"


def briefs_root() -> Path:
    """Where briefs are archived: $AB_PIPELINE_BRIEFS_DIR, else $AIRFLOW_HOME/briefs."""
    configured = os.environ.get("AB_PIPELINE_BRIEFS_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "briefs"


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit the code came from, when known."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=10", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}" if sha else __version__


@dataclass(frozen=True)
class RunContext:
    """Everything a stage needs to find its inputs and outputs."""

    config_path: Path
    run_date: date
    warehouse_url: str
    out_root: Path
    # The attempt (Airflow run id) this stage belongs to: every task of a run must agree on it.
    # Empty: the running Airflow task's run id ($AIRFLOW_CTX_DAG_RUN_ID), else "local".
    attempt: str = ""

    @cached_property
    def config(self) -> ExperimentConfig:
        return load_config(self.config_path)

    @property
    def run_dir(self) -> Path:
        """The published readout of the date (what users, the archive and `decide` read)."""
        return self.out_root / self.config.key / self.run_date.isoformat()

    @property
    def attempt_id(self) -> str:
        return self.attempt or os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or "local"

    @property
    def attempt_dir(self) -> Path:
        """Where this attempt's stages write until the brief publishes it as `run_dir`."""
        return attempt_dir(self.run_dir, self.attempt_id)

    @property
    def warehouse(self) -> Warehouse:
        return Warehouse(self.warehouse_url)

    def write_json(self, relative: str, payload: Any) -> Path:
        """Write `payload` as strict JSON, atomically; results.json only once it validates
        against the contract (ab_pipeline.readout.results_model: ResultsInvalid names the field)."""
        path = self.attempt_dir / relative
        if relative == RESULTS_FILE:
            from ab_pipeline.readout.results_model import validate_results

            validate_results(payload, str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str, allow_nan=False))
        tmp.replace(path)  # atomic: a reader never sees half a file
        return path

    def read_json(self, relative: str) -> Any | None:
        path = self.attempt_dir / relative
        return json.loads(path.read_text()) if path.exists() else None


ATTEMPT_MARK = ".attempt"  # in a published readout: the attempt that published it
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def attempt_dir(run_dir: Path, attempt: str) -> Path:
    return run_dir.with_name(f"{run_dir.name}.attempt-{_UNSAFE.sub('_', attempt)}")


def publication(run_dir: Path) -> str | None:
    """`<attempt> <publication id>` of the published readout (None: none, or from before
    attempts); a new value means a new readout was published."""
    mark = run_dir / ATTEMPT_MARK
    return mark.read_text().strip() if mark.exists() else None


def published_attempt(run_dir: Path) -> str | None:
    """The attempt that published `run_dir`."""
    published = publication(run_dir)
    return published.rsplit(" ", 1)[0] if published else None


def publish(ctx: RunContext) -> Path:
    """Swap the complete attempt directory in as the date's readout, atomically."""
    staged, published = ctx.attempt_dir, ctx.run_dir
    (staged / ATTEMPT_MARK).write_text(f"{ctx.attempt_id} {uuid.uuid4().hex}\n")
    if not published.exists():
        staged.rename(published)
    elif _exchange(staged, published):
        shutil.rmtree(staged)  # now the previous readout
    else:  # no atomic exchange here: two renames, the old readout kept until the new is in
        old = published.with_name(f"{published.name}.replaced-{uuid.uuid4().hex[:8]}")
        published.rename(old)
        staged.rename(published)
        shutil.rmtree(old)
    for leftover in published.parent.glob(f"{published.name}.attempt-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # earlier failed attempts of the date
    return published


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    import ctypes

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(error, f"exchanging {a} and {b}: {os.strerror(error)}")


def _build_units_table(warehouse: Warehouse, config: ExperimentConfig, run_date: date) -> str:
    """The run's units table; a failure the source's column types explain says so.

    Columns the extract can still read (an integer arm, TIMESTAMP WITH TIME ZONE) reach the
    data-quality gate, whose `contract_column_types` check makes the run a RERUN; text
    timestamps cannot be compared at all, so the extract stops here, naming them.
    """
    from ab_pipeline.gates.data_quality import contract_problems
    from ab_pipeline.readout.extract import build_units_table

    try:
        return build_units_table(warehouse, config, run_date)
    except Exception as error:
        problems = contract_problems(warehouse, config, run_date)
        if problems:
            raise ValueError(
                f"the sources do not match the contract ({'; '.join(problems)}): timestamps "
                "must be TIMESTAMP (without time zone, UTC), ids and arms text; cast them in a "
                "view and point `source` at it, or in the source's `sql`"
            ) from error
        raise


def stage_extract(ctx: RunContext) -> str:
    """Start this attempt afresh (the published readout stays) and build the units table."""
    if ctx.attempt_dir.exists():
        shutil.rmtree(ctx.attempt_dir)  # this attempt's own earlier try (a retried task)
    ctx.attempt_dir.mkdir(parents=True)
    try:
        table = _build_units_table(ctx.warehouse, ctx.config, ctx.run_date)
    except Exception as error:
        raise PipelineError(
            f"extraction failed: {error}", experiment=ctx.config.key, run_date=str(ctx.run_date)
        ) from error
    log.info(
        "[experiment=%s run_date=%s] units table %s built", ctx.config.key, ctx.run_date, table
    )
    return table


def stage_gate(ctx: RunContext, gate: str, units_table: str) -> bool:
    """Run one validity gate and record its outcome; a failed gate is a finding, not an error."""
    outcome = gate_registry.get(gate).run(ctx, units_table)
    ctx.write_json(f"gates/{gate}.json", outcome)
    passed = outcome is None or bool(outcome["passed"])
    log.info(
        "[experiment=%s run_date=%s] gate %s: %s",
        ctx.config.key,
        ctx.run_date,
        gate,
        "PASS" if passed else "FAIL",
    )
    return passed


def recorded_gates(ctx: RunContext) -> dict[str, dict[str, Any] | None]:
    return {gate: ctx.read_json(f"gates/{gate}.json") for gate in gate_registry.names()}


def missing_gates(ctx: RunContext) -> list[str]:
    """Registered gates that recorded no outcome (a gate that does not apply records null)."""
    return [
        g for g in gate_registry.names() if not (ctx.attempt_dir / "gates" / f"{g}.json").exists()
    ]


def stage_validity(ctx: RunContext) -> None:
    """Stop here (raise GateFailed) when any gate failed or did not record an outcome."""
    missing = missing_gates(ctx)
    if missing:
        raise PipelineError(
            f"gate outcome(s) missing: {', '.join(missing)}",
            experiment=ctx.config.key,
            run_date=str(ctx.run_date),
        )
    failed = [g for g, outcome in recorded_gates(ctx).items() if outcome and not outcome["passed"]]
    if failed:
        raise GateFailed(ctx.config.key, failed)


def stage_analyse(ctx: RunContext, units_table: str) -> None:
    from ab_pipeline.readout.analysis import analyse

    ctx.write_json("metrics.json", analyse(ctx.warehouse, ctx.config, units_table, ctx.run_date))
    stage_novelty(ctx, units_table)


def stage_novelty(ctx: RunContext, units_table: str) -> None:
    """The primary effect by exposure-day cohort (novelty.json); a view, never a gate."""
    from ab_pipeline.readout.novelty import novelty_view

    ctx.write_json(
        "novelty.json", novelty_view(ctx.warehouse, ctx.config, units_table, ctx.run_date)
    )


def governance_results(ctx: RunContext, analysed: bool) -> dict[str, Any]:
    """`novelty` (analysed runs only) and `human_decisions` (recorded by `ab-pipeline decide`)."""
    from ab_pipeline.readout.decision_records import load_decisions

    return {
        "novelty": ctx.read_json("novelty.json") if analysed else None,
        "human_decisions": load_decisions(ctx.warehouse, ctx.config.key),
    }


def assemble_results(ctx: RunContext) -> dict[str, Any]:
    """results.json from what the run recorded; raises when there is nothing honest to say."""
    from ab_pipeline.core.catalog import metric_definitions
    from ab_pipeline.readout.decision import decide, failed_gates
    from ab_pipeline.readout.progress import plan_summary

    config = ctx.config
    gates = recorded_gates(ctx)
    gate_failures = failed_gates(gates)
    metrics = ctx.read_json("metrics.json")
    tags = {"experiment": config.key, "run_date": str(ctx.run_date)}
    if not gate_failures and (metrics is None or missing_gates(ctx)):
        raise PipelineError("the pipeline broke before a decision could be made; no brief", **tags)
    decision = decide(config, ctx.run_date, gates, metrics if not gate_failures and metrics else {})
    plan = plan_summary(config)
    results: dict[str, Any] = {
        "experiment": config.key,
        "version": config.version,
        "title": config.title,
        "owner": config.owner,
        "recipients": list(config.recipients),
        "unit": config.unit,
        "arms": dict(config.arms),
        "control": config.control,
        "start": config.start.isoformat(),
        "end": config.end.isoformat(),
        "run_date": ctx.run_date.isoformat(),
        "status": decision.status,
        "decision": decision.decision,
        "decision_reason": decision.reason,
        "config_sha256": config_sha256(ctx.config_path),
        "config_path": _display_path(ctx.config_path),
        "code_version": code_version(),
        "hypothesis": config.hypothesis.model_dump(),
        "plan": plan,
        "risks": list(config.risks),
        "gates": gates,
        "gate_failures": gate_failures,
        **statistics_results(ctx, gates),
        "metrics": {} if gate_failures else metrics,
        # Each metric's resolved definition, its hash and catalog file: a catalog change shows.
        "metric_definitions": metric_definitions(config),
        "checks": decision.checks_as_dicts(),
    }
    results.update(governance_results(ctx, analysed=not gate_failures))
    from ab_pipeline.readout.novelty import novelty_check

    if (novelty := novelty_check(results["novelty"])) is not None:
        results["checks"].append(novelty)  # non-blocking: decide() never saw it
    return results


def statistics_results(ctx: RunContext, gates: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """`analysis` (the pre-declared settings) and `progress` (enrolment against the plan)."""
    from ab_pipeline.readout.progress import progress

    config = ctx.config
    srm = gates.get("srm") or {}
    analysis = {
        **config.analysis.model_dump(),
        "alpha": config.decision.alpha,
        "planned_looks": config.planned_looks if config.analysis.sequential != "none" else None,
        "guardrails_spend_primary_alpha": False,
    }
    return {
        "analysis": analysis,
        "progress": progress(config, srm.get("counts") or {}, ctx.run_date),
    }


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def stage_brief(ctx: RunContext) -> dict[str, Any]:
    """Decide, write results.json and the brief, store the readout, then publish the attempt."""
    from ab_pipeline.readout.results_store import results_schema, store_readout
    from ab_pipeline.report.brief import write_brief

    _resume_published(ctx)
    results = assemble_results(ctx)
    ctx.write_json("results.json", results)
    # Results tables (this attempt's rows, earlier attempts kept) and `history` for the brief.
    schema = results_schema(ctx.config.source.units_schema)
    results = store_readout(ctx.warehouse, results, schema, ctx.attempt_id, ctx.run_date)
    ctx.write_json("results.json", results)
    write_brief(results, ctx.attempt_dir)
    published = publish(ctx)
    drop_old_run_tables(ctx)
    log.info(
        "[experiment=%s run_date=%s] decision %s, brief %s",
        ctx.config.key,
        ctx.run_date,
        results["decision"],
        published / "brief.html",
    )
    return {"decision": results["decision"], "brief": str(published / "brief.html")}


def _resume_published(ctx: RunContext) -> None:
    """A brief task run again after it published: start from what it published."""
    if not ctx.attempt_dir.exists() and published_attempt(ctx.run_dir) == ctx.attempt_id:
        shutil.copytree(ctx.run_dir, ctx.attempt_dir)


def drop_old_run_tables(ctx: RunContext) -> None:
    """Scratch tables beyond the kept runs go (ab_pipeline.readout.extract); never fails the
    brief."""
    from ab_pipeline.readout.extract import drop_old_run_tables as drop

    try:
        dropped = drop(ctx.warehouse, ctx.config)
    except Exception as error:  # the readout is published: a leftover table is no reason to fail
        log.warning("[experiment=%s] old run tables not dropped: %s", ctx.config.key, error)
        return
    if dropped:
        log.info("[experiment=%s] dropped old run tables %s", ctx.config.key, ", ".join(dropped))


def stage_deliver(ctx: RunContext, smtp_conn_id: str = "smtp_default") -> dict[str, Any]:
    """Email the published readout, its `.eml` beside it; never a readout another attempt
    published since this run's brief."""
    from ab_pipeline.report.brief import render_brief
    from ab_pipeline.report.delivery import build_message, default_sender, deliver

    tags = {"experiment": ctx.config.key, "run_date": str(ctx.run_date)}
    results_path = ctx.run_dir / "results.json"
    if not results_path.exists():
        raise PipelineError(f"no results.json to deliver in {ctx.run_dir}", **tags)
    publisher = published_attempt(ctx.run_dir)
    if publisher is not None and publisher != ctx.attempt_id:
        raise PipelineError(
            f"{ctx.run_dir} now holds attempt {publisher}'s readout, not this run's "
            f"({ctx.attempt_id}); that attempt sends its own email",
            **tags,
        )
    from ab_pipeline.readout.results_model import load_results

    results = load_results(results_path)
    message = build_message(
        results, render_brief(results, archive_root=ctx.out_root), default_sender()
    )
    outcome = deliver(message, ctx.run_dir, smtp_conn_id)
    return {"sent": outcome.sent, "eml": str(outcome.eml_path), "detail": outcome.detail}


def run_readout_stages(ctx: RunContext) -> str:
    """The extract, every gate, the validity check and (unless it failed) the analysis, in
    this process and DAG order; returns the units table. A failed gate is recorded, as in the
    DAG, and does not stop the later stages."""
    table = stage_extract(ctx)
    for gate in gate_registry.names():
        stage_gate(ctx, gate, table)
    try:
        stage_validity(ctx)
    except GateFailed:
        pass
    else:
        stage_analyse(ctx, table)
    return table


def run_pipeline(ctx: RunContext, deliver: bool = True) -> dict[str, Any]:
    """All stages in this process, in DAG order (for tests, benchmarks and debugging)."""
    run_readout_stages(ctx)
    summary = stage_brief(ctx)
    if deliver:
        stage_deliver(ctx)
    return summary
