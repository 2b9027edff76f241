"""`ab-pipeline` as a data engineer uses it: a new config in their own folder, run through the
experiment's real DAG (`dag.test()`), with a real SMTP server; refusals that exit 2 in one line.

The real runs share one module-scoped AIRFLOW_HOME and warehouse (a run costs ~10-40 s).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

from tests.local_services import Inbox, free_port, serving_smtp, smtp_connection

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("ab-pipeline"))
KEY = "cli-fresh-key"  # no sample uses it: its DAG exists only once this config is run
DAG_ID = "ab_cli_fresh_key"
BASE_URL = "https://airflow.example.test"
END = "2026-05-31"


@dataclass
class World:
    folder: Path  # the data engineer's own folder, outside dags/
    warehouse: str
    out: Path
    env: dict[str, str]
    inbox: Inbox

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, *args],
            cwd=self.folder,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def run(
        self, run_date: str, warehouse: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.cli(
            "run", "my-experiment.yaml", "--date", run_date,
            "--warehouse", warehouse or self.warehouse, "--out", str(self.out), env=env,
        )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("cli")
    folder = root / "mine"
    folder.mkdir()
    sample = (REPO / "dags" / "experiments" / "refund-query-rewrite.yaml").read_text()
    (folder / "my-experiment.yaml").write_text(re.sub(r"(?m)^key: .*$", f"key: {KEY}", sample))
    scenario = (REPO / "simulations" / "refund-query-rewrite.yaml").read_text()
    (folder / "scenario.yaml").write_text(
        re.sub(r"(?m)^experiment: .*$", f"experiment: {KEY}", scenario)
    )
    warehouse = f"duckdb:///{root / 'warehouse.duckdb'}"
    inbox = Inbox()
    with serving_smtp(inbox) as controller:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(root / "airflow"),
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp_connection(controller.port)),
            "AIRFLOW__API__BASE_URL": BASE_URL,
            "AB_PIPELINE_SENDER": "readouts@example.com",
        }
        world = World(folder, warehouse, root / "briefs", env, inbox)
        simulated = world.cli(
            "simulate", "scenario.yaml", "--config", "my-experiment.yaml", "--units", "3000",
            "--warehouse", warehouse,
        )  # fmt: skip
        assert simulated.returncode == 0, simulated.stderr
        yield world


@pytest.fixture(scope="module")
def final_readout(world: World) -> subprocess.CompletedProcess[str]:
    """`run` asked for a date after `end`: the final readout, emailed."""
    return world.run("2026-07-10")


def printed_paths(stdout: str) -> dict[str, Path]:
    found = re.findall(r"(?m)^  (brief|text|results|log):\s+(\S+)$", stdout)
    return {label: Path(path) for label, path in found}


@pytest.mark.slow  # a real DAG run
def test_a_new_config_outside_the_dags_folder_runs_its_real_dag(
    world: World, final_readout: subprocess.CompletedProcess[str]
) -> None:
    done = final_readout
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert (
        f"{KEY}: 2026-07-10 is after the experiment's end {END}: reading out as of {END} "
        "(the final readout)"
    ) in done.stdout
    assert re.search(rf"(?m)^{KEY} {END}: [A-Z]+ \(final\); DAG run success$", done.stdout)
    results = json.loads((world.out / KEY / END / "results.json").read_text())
    assert results["run_date"] == END and results["experiment"] == KEY
    assert results["config_path"].endswith("mine/my-experiment.yaml")
    paths = printed_paths(done.stdout)
    assert set(paths) == {"brief", "text", "results", "log"}
    assert all(path.is_file() for path in paths.values())
    # Quiet: the decision, the files and the email; Airflow's own lines are in the log file.
    assert "[info" not in done.stdout + done.stderr and done.stderr == ""
    assert "[DAG TEST] starting task_id=extract" in paths["log"].read_text()
    assert "  email:   sent to support-leads@example.com" in done.stdout
    [(recipients, message)] = [
        (to, m) for to, m in world.inbox.messages if m["X-AB-Experiment"] == KEY
    ]
    assert recipients == results["recipients"] == ["support-leads@example.com"]
    assert message["X-AB-Decision"] == results["decision"]


@pytest.mark.slow  # a real DAG run
def test_without_smtp_the_summary_says_the_email_was_not_sent(world: World) -> None:
    env = {k: v for k, v in world.env.items() if k != "AIRFLOW_CONN_SMTP_DEFAULT"}
    before = len(world.inbox.messages)
    done = world.run("2026-05-15", env=env)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"{KEY} 2026-05-15: CONTINUE (interim)" in done.stdout
    eml = world.out / KEY / "2026-05-15" / "brief.eml"
    assert f"  email:   not sent (no SMTP connection smtp_default); saved as {eml}" in done.stdout
    assert eml.is_file() and len(world.inbox.messages) == before


def owner_email(world: World) -> Message:
    found = [m for to, m in world.inbox.messages if to == ["support-ml@example.com"]]
    assert found, [str(m["Subject"]) for _, m in world.inbox.messages]
    return found[-1]


def text_of(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode().replace("\r\n", "\n")
    raise AssertionError("no text/plain part")


@pytest.mark.slow  # a real DAG run
def test_a_failed_run_emails_the_owner_the_first_failed_task_its_error_and_a_link(
    world: World,
) -> None:
    missing = f"duckdb:///{world.folder / 'no-such-dir' / 'warehouse.duckdb'}"
    done = world.run("2026-05-20", warehouse=missing)
    assert done.returncode == 1
    assert f"{KEY} 2026-05-20: the pipeline broke at extract: " in done.stderr
    assert "cannot open the DuckDB warehouse" in done.stderr
    assert f"its folder {world.folder / 'no-such-dir'} does not exist" in done.stderr
    assert "DAG run failed" in done.stderr
    assert not printed_paths(done.stdout) and "brief:" not in done.stdout + done.stderr
    assert not (world.out / KEY / "2026-05-20" / "brief.html").exists()
    # The DAG's on_failure_callback, run by Airflow at the end of the failed run.
    message = owner_email(world)
    assert str(message["Subject"]).startswith(f"[ab-pipeline] {KEY}: DAG run FAILED at extract")
    body = text_of(message)
    assert "first failed task: extract\n" in body
    assert re.search(
        r"(?m)^error: PipelineError: .*extraction failed: cannot open the DuckDB warehouse", body
    )
    assert re.search(rf"(?m)^link: {BASE_URL}/dags/{DAG_ID}/runs/manual__\S+$", body)


def test_a_date_before_start_is_refused_before_anything_runs(world: World) -> None:
    done = world.run("2026-05-01")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"{KEY}: 2026-05-01 is before the experiment's start 2026-05-04: nothing to read out"
    )
    assert not (world.out / KEY / "2026-05-01").exists()


def test_simulate_ends_on_its_summary_without_the_bindings_teardown_report(
    world: World,
) -> None:
    """The command freezes its objects before exiting; DuckDB's bindings would then report
    dozens of them as "leaked" on stderr while the interpreter tears down."""
    done = world.cli(
        "simulate", "scenario.yaml", "--config", "my-experiment.yaml", "--units", "500",
        "--warehouse", f"duckdb:///{world.folder / 'other.duckdb'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(f"{KEY}: 500 units")
    assert "leaked" not in done.stderr and "nanobind" not in done.stderr, done.stderr[-2000:]


def test_the_command_runs_the_cyclic_garbage_collector_less_often(world: World) -> None:
    """The command's imports leave millions of long-lived objects, which the collector would
    otherwise traverse every 700 allocations (docs/benchmarks.md, "Fixed overhead")."""
    from ab_pipeline.orchestration.cli import GC_YOUNG_THRESHOLD

    script = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('threshold', gc.get_threshold()))\n"
        "sys.argv = ['ab-pipeline', 'validate', 'my-experiment.yaml']\n"
        "from ab_pipeline.orchestration.cli import console\n"
        "console()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=world.folder,
        env=world.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"threshold ({GC_YOUNG_THRESHOLD}, 10, 10)"


@pytest.mark.slow  # a real DAG run
def test_decide_accepts_only_experiment_keys(
    world: World, final_readout: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    # A final brief that `../../outside`, taken as a key, would reach from --out.
    out = tmp_path / "a" / "briefs"
    out.mkdir(parents=True)
    outside = tmp_path / "outside" / END
    outside.mkdir(parents=True)
    final = (world.out / KEY / END / "results.json").read_text()
    (outside / "results.json").write_text(final)
    done = world.cli(
        "decide", "../../outside", "--decision", "ship", "--by", "me", "--note", "n",
        "--follow-up", "2026-07-01", "--warehouse", world.warehouse, "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("decide: '../../outside' is not an experiment key")
    assert (outside / "results.json").read_text() == final
    assert sorted(p.name for p in outside.iterdir()) == ["results.json"]


def unreachable_postgres() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/test"


@pytest.mark.slow  # a real DAG run
def test_decide_says_in_one_line_that_the_warehouse_is_unreachable(
    world: World, final_readout: subprocess.CompletedProcess[str]
) -> None:
    assert final_readout.returncode == 0
    url = unreachable_postgres()
    done = world.cli(
        "decide", KEY, "--decision", "ship", "--by", "me", "--note", "n",
        "--follow-up", "2026-07-01", "--warehouse", url, "--out", str(world.out),
    )  # fmt: skip
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"decide: the warehouse {url} is unreachable or failed: ")
    assert "Connection refused" in line or "connect" in line


def test_validate_says_in_one_line_that_the_warehouse_is_unreachable(world: World) -> None:
    url = unreachable_postgres()
    done = world.cli("validate", "my-experiment.yaml", "--warehouse", url)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"validate: the warehouse {url} is unreachable or failed: ")


def test_assign_refuses_an_externally_assigned_experiment(world: World) -> None:
    done = world.cli("assign", "my-experiment.yaml", "u1", "u2")
    assert done.returncode == 2 and done.stdout == ""
    assert "`assignment: external`: another system assigns the arms" in done.stderr
    hashed = world.folder / "hashed.yaml"
    hashed.write_text((world.folder / "my-experiment.yaml").read_text() + "\nassignment: hash\n")
    done = world.cli("assign", "hashed.yaml", "u1")
    assert done.returncode == 0 and re.fullmatch(r"u1\t(control|treatment)\n", done.stdout)


@pytest.mark.parametrize(
    "schedule,accepted",
    [
        ("every blue moon", False),
        ("61 * * * *", False),
        ("@once", False),
        ("@continuous", False),
        ("@weekly", True),
        ("30 6 * * 1-5", True),
        (None, True),
    ],
)
def test_validate_checks_the_schedule_airflow_will_read(
    schedule: str | None, accepted: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ab_pipeline.orchestration.cli import main

    sample = (REPO / "dags" / "experiments" / "refund-query-rewrite.yaml").read_text()
    config = tmp_path / "x.yaml"
    config.write_text(sample.replace('schedule: "@daily"', f"schedule: {json.dumps(schedule)}"))
    code = main(["validate", str(config)])
    out = capsys.readouterr().out
    if accepted:
        assert code == 0, out
    else:
        assert code == 2 and out.startswith(f"{config}: schedule: {schedule!r}"), out
