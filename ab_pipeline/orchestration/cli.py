"""`ab-pipeline`: validate configs, simulate data, plan sample sizes, run an experiment's DAG.

`run` executes the experiment's real Airflow DAG (`dag.test()`, SQLite metadata under a
project-local AIRFLOW_HOME unless one is set) and exits 0 when a brief was produced, RERUN
included, 1 when the pipeline itself broke, 2 when the config or the date is refused. It prints
the decision, the files written and whether the email went out; Airflow's logs go to a file
(`-v` shows them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, timedelta
from pathlib import Path
from typing import Any

from ab_pipeline.core.errors import ConfigError
from ab_pipeline.core.paths import DEFAULT_WAREHOUSE, EXPERIMENTS, REPO_ROOT, VAR

EXIT_INVALID, EXIT_BROKEN = 2, 1


def cmd_validate(args: argparse.Namespace) -> int:
    from ab_pipeline.core.config import load_config
    from ab_pipeline.devtools.lint import lint_config
    from ab_pipeline.warehouse import Warehouse

    warehouse = Warehouse(args.warehouse) if args.warehouse else None
    failed = 0
    for path in args.files:
        try:
            config = load_config(path)
        except ConfigError as error:
            failed += 1
            for problem in error.problems:
                print(f"{path}: {problem.field}: {problem.reason}")
            continue
        # Checklist warnings: printed, not failing, unless --strict (CI).
        try:
            warnings = lint_config(config, warehouse)
        except Exception as error:  # the warehouse (--warehouse) is unreachable or broken
            assert warehouse is not None
            print(warehouse_problem("validate", warehouse.url, error), file=sys.stderr)
            return EXIT_INVALID
        for warning in warnings:
            label = "error" if args.strict or warning.blocking else "warning"
            print(f"{path}: {warning.field}: {label}: {warning.reason}")
        if any(args.strict or warning.blocking for warning in warnings):
            failed += 1
            continue
        print(f"{path}: ok ({config.key}, DAG {config.dag_id}){_catalog_note(config)}")
    return EXIT_INVALID if failed else 0


def _catalog_note(config: Any) -> str:
    """`; from the catalog: name (file), ...` for a config with catalog references."""
    sources = config.metric_sources
    if not sources:
        return ""
    named = [
        name if s.catalog_metric == name else f"{name} (= {s.catalog_metric})"
        for name, s in sources.items()
    ]
    files = sorted({s.catalog_file for s in sources.values()})
    return f"; from the catalog: {', '.join(named)} ({', '.join(files)})"


def cmd_metrics(args: argparse.Namespace) -> int:
    """List the metric catalog and, per metric, the experiments that use it; exit 2 when the
    catalog has a problem or an experiment references a metric it cannot resolve."""
    from ab_pipeline.core import catalog as cat

    experiments = Path(args.experiments)
    directory = Path(args.catalog) if args.catalog else cat.catalog_dir_beside(experiments)
    catalog = cat.load_catalog(directory)
    used = cat.uses(sorted(experiments.glob("*.yaml")))
    problems = [str(p) for p in catalog.problems]
    for use in used:
        if use.ref in catalog.broken:
            problems.append(
                f"{use.file}: metrics.{use.local}.ref: catalog metric {use.ref!r} is invalid"
            )
        elif use.ref not in catalog.metrics:
            problems.append(
                f"{use.file}: metrics.{use.local}.ref: {cat.missing_reason(catalog, use.ref)}"
            )
    entries: list[dict[str, Any]] = [
        {
            "name": name,
            "type": entry.type,
            "description": entry.description,
            "owner": entry.owner,
            "file": entry.file,
            "guardrail": entry.guardrail,
            "used_by": [
                {
                    "experiment": u.experiment,
                    "file": u.file,
                    "as": u.local,
                    "overrides": dict(u.overrides),
                    "guardrail": u.guardrail,
                }
                for u in used
                if u.ref == name
            ],
        }
        for name, entry in sorted(catalog.metrics.items())
    ]
    if args.json:
        where = cat.display_path(catalog.directory)
        listing = {"catalog": where, "metrics": entries, "problems": problems}
        print(json.dumps(listing, indent=2, default=str))
        return EXIT_INVALID if problems else 0
    files = len({e["file"] for e in entries})
    print(
        f"Metric catalog {cat.display_path(catalog.directory)}: {len(entries)} metric(s) in "
        f"{files} file(s); experiments from {cat.display_path(experiments)}"
    )
    for entry in entries:
        print(f"\n{entry['name']}  {entry['type']}  {entry['owner']}  {entry['file']}")
        print(f"  {entry['description']}")
        uses_text = [_use_text(use, entry["name"]) for use in entry["used_by"]]
        print(f"  used by: {'; '.join(uses_text) if uses_text else 'no experiment'}")
    if problems:
        print("\nProblems:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    return 0


def _use_text(use: dict[str, Any], name: str) -> str:
    """`delivery-estimate (as x, window 7d, guardrail)`: how one experiment uses a metric."""
    details = [f"as {use['as']}"] if use["as"] != name else []
    details += [f"{key} {value}" for key, value in use["overrides"].items()]
    if use["guardrail"]:
        details.append("guardrail")
    return use["experiment"] + (f" ({', '.join(details)})" if details else "")


def cmd_assign(args: argparse.Namespace) -> int:
    """Print `unit_id<TAB>arm` for each unit, by the config's deterministic assignment."""
    from ab_pipeline.core.assignment import assign_many
    from ab_pipeline.core.config import load_config

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID
    if config.assignment == "external":
        print(
            f"assign: {args.config}: `assignment: external`: another system assigns the arms of "
            f"{config.key}, so the hash assignment would print arms that are not the real ones",
            file=sys.stderr,
        )
        return EXIT_INVALID
    for unit_id, arm in zip(
        args.units, assign_many(config.key, config.version, args.units, config.arms), strict=True
    ):
        print(f"{unit_id}\t{arm}")
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    """Record the owner's decision against the experiment's latest final brief."""
    from ab_pipeline.core.config import KEY_PATTERN
    from ab_pipeline.readout import decision_records as records
    from ab_pipeline.readout.results_model import ResultsInvalid
    from ab_pipeline.warehouse import Warehouse

    if not KEY_PATTERN.match(args.experiment):
        print(
            f"decide: {args.experiment!r} is not an experiment key (lowercase letters, digits "
            "and '-', at most 63, as in the config's `key`)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    briefs = Path(args.out)
    warehouse = Warehouse(args.warehouse)
    try:
        results = records.latest_final_results(briefs, args.experiment, warehouse)
    except ResultsInvalid as error:  # a final readout the contract refuses: say where
        print(f"decide: {error}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as error:  # the warehouse is unreachable or broken
        print(warehouse_problem("decide", warehouse.url, error), file=sys.stderr)
        return EXIT_INVALID
    if results is None:
        print(
            f"decide: no final brief for {args.experiment} under {briefs}; run the final "
            "readout (ab-pipeline run CONFIG --date END) first",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        record = records.record_decision(
            warehouse, args.experiment, args.decision, args.by, args.note, args.follow_up, results
        )
        decisions = records.load_decisions(warehouse, args.experiment)
    except ValueError as error:
        print(f"decide: {error}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as error:  # the warehouse is unreachable or broken
        print(warehouse_problem("decide", warehouse.url, error), file=sys.stderr)
        return EXIT_INVALID
    run_dir = briefs / args.experiment / record.run_date
    try:
        records.annotate_archive(run_dir, decisions)
    except ResultsInvalid as error:  # recorded all the same; the archive's copy stays as it was
        print(f"decide: recorded, but the archive was not annotated: {error}", file=sys.stderr)
    verdict = (
        f"DISAGREES with the pipeline's {record.pipeline_decision}"
        if record.disagrees
        else f"agrees with the pipeline's {record.pipeline_decision}"
    )
    print(
        f"{args.experiment} {record.run_date}: {record.decision} by {record.by} "
        f"(follow-up {record.follow_up}); {verdict}"
    )
    return 0


def warehouse_problem(command: str, url: str, error: BaseException) -> str:
    """One line (no traceback) saying the warehouse failed, with the URL's password hidden."""
    from ab_pipeline.warehouse import redacted

    detail = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return (
        f"{command}: the warehouse {redacted(url)} is unreachable or failed: "
        f"{type(error).__name__}: {detail}"
    )


def cmd_schema(args: argparse.Namespace) -> int:
    if args.results:
        from ab_pipeline.readout.results_model import json_schema
    else:
        from ab_pipeline.core.config import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Units per arm: primary (proportion, or mean/ratio with --sd) or a guardrail's
    non-inferiority (--non-inferiority BUDGET). Bad input: exit 2 with one line."""
    from ab_pipeline.stats import statistics as st

    try:
        size, given = _plan_size(st, args)
    except ValueError as error:
        print(f"plan: {error}", file=sys.stderr)
        return EXIT_INVALID
    level = (
        f"alpha {args.alpha:g}"
        if size.alpha_per_comparison == args.alpha
        else f"alpha {args.alpha:g} split over {args.arms} treatment arms ({args.correction}): "
        f"{size.alpha_per_comparison:g} each"
    )
    print(
        f"{size.per_arm:,} units per arm ({given}, {level}, power {args.power:g})\n"
        f"by the {size.formula}"
    )
    return 0


def _plan_size(st: Any, args: argparse.Namespace) -> tuple[Any, str]:
    source = _from_warehouse(args) if args.config else ""
    args.arms = 1 if args.arms is None else args.arms
    args.correction = args.correction or "holm"
    if args.arms < 1:
        raise ValueError(f"--arms must be at least 1 treatment arm, got {args.arms}")
    split = {"comparisons": args.arms, "correction": args.correction}
    if args.non_inferiority is not None:
        if args.baseline is None:
            raise ValueError("--baseline is required (the guardrail's control rate or mean)")
        size = st.sample_size_non_inferiority(
            args.baseline,
            args.non_inferiority,
            args.relative,
            args.harm == "increase",
            args.alpha,
            args.power,
            args.sd,
        )
        kind = "relative" if args.relative else "absolute"
        return size, (
            f"guardrail non-inferiority: {kind} budget {args.non_inferiority:g} on the "
            f"{args.harm} side, baseline {args.baseline:g}, true effect assumed 0"
        )
    if args.mde is None:
        raise ValueError("--mde is required (or --non-inferiority BUDGET for a guardrail)")
    if args.sd is not None:
        size = st.sample_size_means(args.sd, args.mde, args.alpha, args.power, **split)
        return size, f"mean/ratio metric, sd {args.sd:g}, MDE {args.mde:g}{source}"
    if args.baseline is None:
        raise ValueError("--baseline is required for a proportion (or --sd for a mean)")
    size = st.sample_size_two_proportions(
        args.baseline, args.mde, args.alpha, args.power, args.formula, **split
    )
    return size, f"baseline {args.baseline:g}, MDE {args.mde:g}{source}"


def _from_warehouse(args: argparse.Namespace) -> str:
    """Fill baseline (and sd for a mean/ratio primary), arms and correction from the config
    and a pre-period query of the warehouse; returns where the numbers came from."""
    from ab_pipeline.core.config import load_config
    from ab_pipeline.metrics import kind_named
    from ab_pipeline.readout.progress import pre_period_moments
    from ab_pipeline.warehouse import Warehouse

    try:
        config = load_config(args.config)
    except ConfigError as error:
        raise ValueError(str(error).replace("\n", " ")) from None
    if args.lookback < 1:
        raise ValueError(f"--lookback must be at least 1 day, got {args.lookback}")
    before = args.before or config.start
    moments = pre_period_moments(Warehouse(args.warehouse), config, before, args.lookback)
    args.baseline = moments["baseline"] if args.baseline is None else args.baseline
    if kind_named(moments["type"]).plan_needs_sd and args.sd is None:
        args.sd = moments["sd"]
    args.arms = len(config.treatments) if args.arms is None else args.arms
    args.correction = args.correction or config.analysis.correction
    return (
        f"; {config.primary} over {moments['units']:,} units active in the {args.lookback} "
        f"days before {before}: baseline {moments['baseline']:.4g}, sd {moments['sd']:.4g}"
    )


def airflow_environment(warehouse: str, out: Path, conn_id: str) -> dict[str, str]:
    """The environment a local `dag.test()` run needs; an existing AIRFLOW_HOME is respected."""
    from ab_pipeline.warehouse import connection_env_value

    env = {
        "AIRFLOW_HOME": os.environ.get("AIRFLOW_HOME", str(VAR / "airflow")),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AB_PIPELINE_BRIEFS_DIR": str(out),
        f"AIRFLOW_CONN_{conn_id.upper()}": connection_env_value(warehouse),
    }
    return env


@contextmanager
def metadata_turn(env: dict[str, str]) -> Iterator[None]:
    """Runs that share a SQLite Airflow home take turns; other metadata databases need not.

    SQLite allows one writer, and two runs starting on one home race on Airflow's own rows
    (`dag_bundle`, `dag`: "UNIQUE constraint failed") and on the first `db migrate`. The turn
    is an exclusive flock on `$AIRFLOW_HOME/.ab-pipeline-run.lock`, waited for without limit:
    the run holding it ends by itself (its tasks have their own timeouts).
    """
    import fcntl

    from airflow.configuration import conf

    if not conf.get("database", "sql_alchemy_conn").startswith("sqlite"):
        yield
        return
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".ab-pipeline-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def ensure_metadata_db(env: dict[str, str]) -> None:
    """`airflow db migrate` once per AIRFLOW_HOME (a SQLite file for local runs)."""
    home = Path(env["AIRFLOW_HOME"])
    marker = home / ".ab-pipeline-migrated"
    if marker.exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run(
        [str(airflow), "db", "migrate"],
        env={**os.environ, **env},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    marker.write_text("migrated\n")


def run_experiment(
    config_path: Path,
    run_date: date,
    warehouse: str,
    out: Path,
    verbose: bool = False,
    quiet_exit: bool = False,
) -> int:
    """Run the experiment's real DAG for one readout date; print the decision, the files
    written and whether the email went out.

    Any config runs, wherever it lives: `dag.test()` serializes the DAG into the metadata
    database by parsing the dags folder in this process (and refuses a DAG that parse did not
    produce), so `dag_factory.only_config` tells the DAG file (dags/ab_experiments.py) to build
    exactly this config's DAG. Airflow serializes the DAG the DAG file builds, as the
    dag-processor would, and a copy of a committed config runs as the copy, not as the
    committed file.

    `quiet_exit`: the process ends after this run; what libraries print at interpreter exit
    (DuckDB's binding reports leaked objects) goes to the run's log too, unless `verbose`.
    """
    from ab_pipeline.core.config import load_config

    try:
        config = load_config(config_path)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID
    out = out.resolve()
    # Before Airflow is imported: it reads some settings (the dags folder) once, at import.
    env = airflow_environment(warehouse, out, config.source.conn_id)
    os.environ.update(env)
    from ab_pipeline.core.dates import midnight
    from ab_pipeline.orchestration import dag_factory
    from ab_pipeline.orchestration.dag_factory import build_dag, readout_date

    try:
        readout = readout_date(run_date, config)
    except ValueError as error:
        print(f"{config.key}: {error}", file=sys.stderr)
        return EXIT_INVALID
    if readout != run_date:
        print(
            f"{config.key}: {run_date} is after the experiment's end {config.end}: reading out "
            f"as of {readout} (the final readout)"
        )
    logs = Path(env["AIRFLOW_HOME"]) / "logs" / "ab-pipeline-run"
    log_path = logs / config.key / f"{readout}.log"
    run_dir = out / config.key / readout.isoformat()
    from ab_pipeline.orchestration.pipeline import publication

    before = publication(run_dir)  # the earlier readout stays unless this run publishes
    dag = build_dag(config_path.resolve(), config)
    dag_factory.only_config = config_path.resolve()
    logical = midnight(readout, UTC) + timedelta(days=1)
    with airflow_output(None if verbose else log_path), metadata_turn(env):
        ensure_metadata_db(env)
        try:
            dag_run = dag.test(logical_date=logical, run_conf={"run_date": readout.isoformat()})
        except Exception as error:
            dag_run, crash = None, error
    if dag_run is None:
        where = "" if verbose else f"\n  log:     {log_path}"
        print(
            f"{config.key} {readout}: Airflow could not run the DAG: {crash!r}{where}",
            file=sys.stderr,
        )
        return EXIT_BROKEN
    code = report_run(
        config.key, readout, dag, dag_run, run_dir, before, None if verbose else log_path
    )
    if quiet_exit and not verbose:
        sys.stderr.flush()
        with log_path.open("ab") as log:
            os.dup2(log.fileno(), 2)
    return code


@contextmanager
def airflow_output(log_path: Path | None) -> Iterator[None]:
    """Send everything written to stdout/stderr (Airflow's and the tasks' logs) to `log_path`;
    None leaves the terminal alone (`-v`). File descriptors, not sys.stdout: Airflow's log
    handlers hold their own references to the streams."""
    if log_path is None:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with log_path.open("wb") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def report_run(
    key: str,
    readout: date,
    dag: Any,
    dag_run: Any,
    run_dir: Path,
    before: Any,
    log: Path | None,
) -> int:
    """The run's summary: exit 0 only when this run published a brief (`before` is the
    publication marker found before it started); only files that exist are named."""
    from ab_pipeline.orchestration.pipeline import publication
    from ab_pipeline.readout.results_model import load_results
    from ab_pipeline.report.notify import failed_tasks_upstream_first

    state = getattr(dag_run, "state", "unknown")
    log_line = f"  log:     {log}" if log else ""
    published = publication(run_dir) not in (None, before)
    files_exist = (run_dir / "brief.html").exists() and (run_dir / "results.json").exists()
    if not (published and files_exist):
        failures = failed_tasks_upstream_first(dag, dag_run.run_id)
        where = f" at {failures[0][0]}: {failures[0][1]}" if failures else ""
        print(
            f"{key} {readout}: the pipeline broke{where}; no brief (DAG run {state})\n{log_line}",
            file=sys.stderr,
        )
        return EXIT_BROKEN
    results = load_results(run_dir / "results.json")
    print(f"{key} {readout}: {results['decision']} ({results['status']}); DAG run {state}")
    files = (("brief", "brief.html"), ("text", "brief.txt"), ("results", "results.json"))
    for label, name in files:
        if (run_dir / name).exists():
            print(f"  {label + ':':<8} {run_dir / name}")
    print(f"  email:   {email_outcome(dag, dag_run, results)}")
    if log_line:
        print(log_line)
    return 0


def email_outcome(dag: Any, dag_run: Any, results: dict[str, Any]) -> str:
    """Whether the brief went out, from the send_email task's state and return value (XCom)."""
    from ab_pipeline.orchestration.dag_factory import SMTP_CONN_ID
    from ab_pipeline.report.notify import recorded_errors, run_xcoms

    task = dag_run.get_task_instance("send_email")
    state = str(getattr(getattr(task, "state", None), "value", getattr(task, "state", None)))
    returned = run_xcoms(dag.dag_id, dag_run.run_id, "return_value").get("send_email") or {}
    eml = Path(str(returned.get("eml") or "")) if returned.get("eml") else None
    saved = f"; saved as {eml}" if eml and eml.is_file() else ""
    if state == "success" and returned.get("sent"):
        return f"sent to {', '.join(results['recipients'])}{saved}"
    if state == "success":
        return f"not sent (no SMTP connection {SMTP_CONN_ID}){saved}"
    if state == "failed":
        error = recorded_errors(dag.dag_id, dag_run.run_id, ["send_email"]).get("send_email")
        return f"NOT sent (sending failed: {error or 'see the log'})"
    return f"not sent (send_email {state}; see the log)"


def cmd_run(args: argparse.Namespace) -> int:
    return run_experiment(
        Path(args.config),
        args.date,
        args.warehouse,
        Path(args.out),
        verbose=args.verbose,
        quiet_exit=True,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate every sample experiment into the embedded DuckDB and run each DAG."""
    from ab_pipeline.core.config import load_config
    from ab_pipeline.devtools.simulate import main_simulate
    from ab_pipeline.readout.results_model import load_results

    warehouse, out = args.warehouse, Path(args.out)
    Path(VAR).mkdir(exist_ok=True)
    if main_simulate(["--warehouse", warehouse]) != 0:
        return EXIT_BROKEN
    runs: list[tuple[Path, date]] = []
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        runs.append((path, load_config(path).end))
    first = runs[0][0]
    runs.append((first, load_config(first).start + timedelta(days=10)))  # an interim look
    codes = [run_experiment(path, day, warehouse, out) for path, day in runs]
    print("\nDemo readouts:")
    for path, day in runs:
        results = out.resolve() / load_config(path).key / day.isoformat() / "results.json"
        if results.exists():
            data = load_results(results)
            print(
                f"  {data['experiment']:<24} {day}  {data['decision']:<9} "
                f"{results.parent / 'brief.html'}"
            )
        else:
            print(f"  {path.stem:<24} {day}  BROKEN")
    return max(codes)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="ab-pipeline", description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="validate experiment configs")
    validate.add_argument("files", nargs="+", help="YAML config files")
    validate.add_argument(
        "--strict", action="store_true", help="checklist warnings are errors (exit 2), for CI"
    )
    validate.add_argument(
        "--warehouse", help="SQLAlchemy URL: check the plan against the observed enrolment rate"
    )
    validate.set_defaults(func=cmd_validate)

    metrics = sub.add_parser(
        "metrics", help="list the metric catalog and the experiments that use each metric"
    )
    metrics.add_argument(
        "--experiments", default=str(EXPERIMENTS), help="experiment configs folder"
    )
    metrics.add_argument(
        "--catalog",
        help="catalog folder (default: $AB_PIPELINE_METRICS_DIR, else metrics/ beside the "
        "experiments folder, else the repository's dags/metrics)",
    )
    metrics.add_argument("--json", action="store_true", help="print JSON instead of text")
    metrics.set_defaults(func=cmd_metrics)

    assign = sub.add_parser("assign", help="print the arm of each unit (deterministic hash)")
    assign.add_argument("config", help="experiment YAML")
    assign.add_argument("units", nargs="+", metavar="UNIT_ID")
    assign.set_defaults(func=cmd_assign)

    decide = sub.add_parser("decide", help="record the owner's decision after a final brief")
    decide.add_argument("experiment", help="experiment key")
    decide.add_argument("--decision", required=True, choices=["ship", "iterate", "stop", "rerun"])
    decide.add_argument("--by", required=True, help="who decided")
    decide.add_argument("--note", required=True, help="why")
    decide.add_argument("--follow-up", type=_date, required=True, help="YYYY-MM-DD")
    decide.add_argument("--warehouse", default=DEFAULT_WAREHOUSE, help="SQLAlchemy URL")
    decide.add_argument("--out", default=str(VAR / "briefs"), help="briefs directory")
    decide.set_defaults(func=cmd_decide)

    schema = sub.add_parser("schema", help="print the config's JSON Schema (for editors)")
    schema.add_argument("-o", "--output", help="write to this file instead of stdout")
    schema.add_argument(
        "--results", action="store_true", help="results.json's schema instead of the config's"
    )
    schema.set_defaults(func=cmd_schema)

    plan = sub.add_parser(
        "plan", help="units per arm: a proportion, mean or ratio primary, or a guardrail"
    )
    plan.add_argument("--baseline", type=float, help="control rate (e.g. 0.38) or mean")
    plan.add_argument("--mde", type=float, help="absolute change to detect, e.g. 0.02 or -0.02")
    plan.add_argument("--alpha", type=float, default=0.05, help="two-sided level (0 < alpha < 1)")
    plan.add_argument("--power", type=float, default=0.8, help="0 < power < 1")
    plan.add_argument(
        "--formula",
        choices=["fleiss", "pooled", "unpooled"],
        default="fleiss",
        help="proportions: fleiss (default; pooled SE under H0, p1q1 + p2q2 under H1: reaches "
        "the stated power), pooled (the textbook 2p(1-p)), unpooled (p1q1 + p2q2)",
    )
    plan.add_argument("--sd", type=float, help="mean/ratio metric: per-unit standard deviation")
    plan.add_argument("--arms", type=int, help="treatment arms, alpha is split (default 1)")
    plan.add_argument("--correction", choices=["holm", "bh", "none"], help="default holm")
    plan.add_argument(
        "--config", help="experiment YAML: plan its primary from a pre-period of --warehouse"
    )
    plan.add_argument("--warehouse", default=DEFAULT_WAREHOUSE, help="SQLAlchemy URL")
    plan.add_argument("--lookback", type=int, default=28, help="pre-period days (--config)")
    plan.add_argument("--before", type=_date, help="pre-period end (default: the config's start)")
    plan.add_argument(
        "--non-inferiority",
        type=float,
        metavar="BUDGET",
        help="a guardrail: units per arm for the one-sided bound to clear this budget",
    )
    plan.add_argument("--relative", action="store_true", help="the budget is relative")
    plan.add_argument("--harm", choices=["increase", "decrease"], default="increase")
    plan.set_defaults(func=cmd_plan)

    run = sub.add_parser("run", help="run an experiment's DAG for one readout date")
    run.add_argument("config", help="experiment YAML")
    run.add_argument("--date", type=_date, required=True, help="readout date YYYY-MM-DD")
    run.add_argument("--warehouse", default=DEFAULT_WAREHOUSE, help="SQLAlchemy URL")
    run.add_argument("--out", default=str(VAR / "briefs"), help="briefs directory")
    run.add_argument(
        "-v", "--verbose", action="store_true", help="show Airflow's logs instead of a log file"
    )
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="simulate the sample experiments and run every DAG")
    demo.add_argument("--warehouse", default=DEFAULT_WAREHOUSE, help="SQLAlchemy URL")
    demo.add_argument("--out", default=str(VAR / "briefs"), help="briefs directory")
    demo.set_defaults(func=cmd_demo)

    # Listed for --help only: main() hands `simulate ...` to the simulator's own parser.
    sub.add_parser("simulate", help="write seeded simulated data (ab-pipeline simulate --help)")
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:  # the simulator owns its own options
        from ab_pipeline.devtools.simulate import main_simulate

        return main_simulate(argv[1:])
    args = parser().parse_args(argv)
    return int(args.func(args))


# Allocations between two runs of the cyclic garbage collector's youngest generation, for the
# `ab-pipeline` command (Python's default: 700).
GC_YOUNG_THRESHOLD = 50_000


def console() -> None:
    """The `ab-pipeline` command: `main()` with the cyclic garbage collector run less often,
    then an exit that skips a last sweep of the heap.

    Importing and setting up Airflow and Great Expectations allocates millions of objects that
    live until the end, and at Python's default threshold the collector traverses them again
    and again: a warm `ab-pipeline run` took 12.2 s at the default and 9.6 s at
    GC_YOUNG_THRESHOLD, with the same peak RSS (docs/benchmarks.md, "Fixed overhead").
    Reference counting still frees everything that is not in a cycle at once.

    Interpreter shutdown runs the garbage collector over every object still alive: about 3 s
    of CPU spent after the run has printed and written everything. Frozen objects are left out
    of those sweeps. The warehouse connections are closed first, so DuckDB files are
    checkpointed as on any exit; atexit handlers (logging's flush among them) still run.
    Frozen objects also outlive the modules' teardown, where DuckDB's bindings report each of
    theirs still alive as "leaked" (43 lines after `simulate`): stderr is muted for that
    teardown, after everything the command writes.
    """
    import gc

    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    code = main()
    from ab_pipeline.gates.gx_sql import mute_teardown_leak_report
    from ab_pipeline.warehouse import dispose_all

    dispose_all()
    mute_teardown_leak_report()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console()
