"""The data-quality gate on real warehouses: a DuckDB file and a throwaway PostgreSQL schema.

Each test loads a small clean dataset, breaks exactly one thing, and checks that exactly the
matching check fails with the right count and an example id. The tables here are the contract's
columns *without* NOT NULL, because the null checks exist for warehouses that do not enforce it.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from ab_pipeline.core.config import Audience, ExperimentConfig, Source, load_config
from ab_pipeline.core.errors import PipelineError
from ab_pipeline.gates.data_quality import (
    contract_problems,
    load_suite_templates,
    run_data_quality,
)
from ab_pipeline.warehouse import Warehouse
from ab_pipeline.warehouse.dialects import recording
from tests.conftest import REPO_ROOT
from tests.warehouse_fixtures import spark_values

KEY = "refund-query-rewrite"  # start 2026-05-04, end 2026-05-31, arms control/treatment
RUN_DATE = date(2026, 5, 31)
OTHER = "other-experiment"
# metric_events_after_exposure: one metric event's part of the check's query, and what marks
# a witness query (its sample of the event's rows).
MEAE_PART = "AS example WHERE NOT EXISTS (SELECT 1 FROM"
WITNESS_SAMPLE = "LIMIT 10000"

DDL = [
    """CREATE TABLE {p}exposures (experiment_key TEXT, unit_id TEXT, arm TEXT,
       exposed_at TIMESTAMP, is_internal BOOLEAN DEFAULT FALSE, is_bot BOOLEAN DEFAULT FALSE,
       properties JSON)""",
    """CREATE TABLE {p}events (unit_id TEXT, event_name TEXT, occurred_at TIMESTAMP,
       value DOUBLE PRECISION, experiment_key TEXT)""",
    "CREATE TABLE {p}units (unit_id TEXT, arm TEXT, first_exposed_at TIMESTAMP)",
]


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


@dataclass
class Dataset:
    """A clean dataset: every check passes. Tests append one kind of bad row."""

    # (experiment_key, unit_id, arm, exposed_at, is_internal, is_bot)
    exposures: list[tuple[Any, ...]] = field(
        default_factory=lambda: [
            (KEY, "u1", "control", ts("2026-05-04 00:00:00"), False, False),  # window start
            (KEY, "u1", "control", ts("2026-05-06 09:00:00"), False, False),  # repeat, same arm
            (KEY, "u2", "treatment", ts("2026-05-05 10:00:00"), False, False),
            (KEY, "u3", "control", ts("2026-05-31 23:59:59"), False, False),  # window end
            (KEY, "u4", "treatment", ts("2026-05-10 12:00:00"), False, False),
            (KEY, "u5", "control", ts("2026-05-11 12:00:00"), True, False),  # internal: excluded
            (KEY, "u6", "treatment", ts("2026-05-11 12:00:00"), False, True),  # bot: excluded
            (OTHER, "u2", "blue", ts("2026-04-01 00:00:00"), False, False),  # other experiment
            (OTHER, "u9", "green", ts("2026-04-01 00:00:00"), True, True),  # not enrolled here
        ]
    )
    # (unit_id, event_name, occurred_at, experiment_key[, value])
    events: list[tuple[Any, ...]] = field(
        default_factory=lambda: [
            ("u1", "marked_solved", ts("2026-05-04 00:10:00"), KEY),
            ("u2", "answer_served", ts("2026-05-31 23:59:59"), KEY, 812.5),  # last second
            ("u4", "grounding_failure", ts("2026-05-10 12:00:00"), KEY),  # at first exposure
            ("u2", "checkout", ts("2026-05-06 00:00:00"), OTHER),  # u2 is exposed to OTHER
            ("u4", "escalated", ts("2026-05-12 00:00:00"), KEY),
            ("u9", None, ts("2026-07-01 00:00:00"), None),  # not enrolled: ignored
            ("u9", "x", None, "unrelated"),  # not enrolled: ignored
            (None, "page_view", ts("2026-04-30 23:59:59"), None),  # before the period: ignored
        ]
    )
    # (unit_id, arm, first_exposed_at): enrolled, non-excluded units
    units: list[tuple[Any, ...]] = field(
        default_factory=lambda: [
            ("u1", "control", ts("2026-05-04 00:00:00")),
            ("u2", "treatment", ts("2026-05-05 10:00:00")),
            ("u3", "control", ts("2026-05-31 23:59:59")),
            ("u4", "treatment", ts("2026-05-10 12:00:00")),
        ]
    )


@dataclass(frozen=True)
class Target:
    """A warehouse plus the prefix ('' or 'schema.') its test tables live under."""

    warehouse: Warehouse
    prefix: str

    def load(self, data: Dataset) -> None:
        from sqlalchemy import text

        p = self.prefix
        self.warehouse.execute([ddl.format(p=p) for ddl in DDL])
        if self.warehouse.dialect == "spark":
            self._insert_literals(data)
            return
        inserts = [
            (
                f"INSERT INTO {p}exposures (experiment_key, unit_id, arm, exposed_at, is_internal, "
                "is_bot) VALUES (:a, :b, :c, :d, :e, :f)",
                data.exposures,
            ),
            (
                f"INSERT INTO {p}events (unit_id, event_name, occurred_at, experiment_key, value) "
                "VALUES (:a, :b, :c, :d, :e)",
                [(*event, None)[:5] for event in data.events],
            ),
            (f"INSERT INTO {p}units VALUES (:a, :b, :c)", data.units),
        ]
        with self.warehouse.connect() as connection:
            for sql, rows in inserts:
                if rows:
                    connection.execute(
                        text(sql), [dict(zip("abcdef", r, strict=False)) for r in rows]
                    )

    def _insert_literals(self, data: Dataset) -> None:
        """Spark (no SQLAlchemy): one INSERT of literal rows per table."""
        p = self.prefix
        tables = [
            (
                f"{p}exposures (experiment_key, unit_id, arm, exposed_at, is_internal, is_bot)",
                data.exposures,
            ),
            (
                f"{p}events (unit_id, event_name, occurred_at, experiment_key, value)",
                [(*event, None)[:5] for event in data.events],
            ),
            (f"{p}units", data.units),
        ]
        self.warehouse.execute(
            [
                f"INSERT INTO {t} VALUES {spark_values(self.warehouse, rows)}"
                for t, rows in tables
                if rows
            ]
        )

    def config(self, **audience: bool) -> ExperimentConfig:
        base = load_config(REPO_ROOT / "dags" / "experiments" / f"{KEY}.yaml")
        source = Source(exposures=f"{self.prefix}exposures", events=f"{self.prefix}events")
        update: dict[str, Any] = {"source": source}
        if audience:
            update["audience"] = Audience(**audience)
        return base.model_copy(update=update)

    def gate(self, data: Dataset, **audience: bool) -> dict[str, Any]:
        self.load(data)
        return run_data_quality(
            self.warehouse.url, self.config(**audience), RUN_DATE, f"{self.prefix}units"
        )


def sql_target(request: pytest.FixtureRequest, engine: str) -> Target:
    if engine == "duckdb":
        return Target(request.getfixturevalue("duckdb_warehouse"), "")
    warehouse, schema = request.getfixturevalue("postgres_schema")
    return Target(warehouse, f"{schema}.")


@pytest.fixture(params=["duckdb", "postgres"])
def target(request: pytest.FixtureRequest) -> Target:
    return sql_target(request, request.param)


@pytest.fixture(
    params=["duckdb", "postgres", "snowflake", pytest.param("spark", marks=pytest.mark.slow)]
)
def any_target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """Every engine that runs the gate here: also Snowflake (a fakesnow server, a schema of
    the test's own) and Spark (the session's Spark Connect server, a database of the test's
    own, dropped afterwards)."""
    if request.param == "snowflake":
        yield Target(request.getfixturevalue("snowflake_warehouse"), "")
    elif request.param == "spark":
        warehouse = Warehouse(request.getfixturevalue("spark_url"))
        yield Target(warehouse, f"{request.getfixturevalue('spark_database')}.")
    else:
        yield sql_target(request, request.param)


def failed(outcome: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in outcome["checks"] if not c["passed"]}


def only_failure(outcome: dict[str, Any], name: str) -> dict[str, Any]:
    failures = failed(outcome)
    assert list(failures) == [name], failures
    return failures[name]


# --- the clean dataset ----------------------------------------------------------------------


def test_clean_dataset_passes_every_check(target: Target) -> None:
    outcome = target.gate(Dataset())
    assert outcome["passed"], failed(outcome)
    assert failed(outcome) == {}
    assert outcome["suite"] == "contract, exposures, arms, events, units"
    assert len(outcome["checks"]) == 17
    assert outcome["detail"] == "17 checks passed"
    assert {c["severity"] for c in outcome["checks"]} == {"error", "warning"}
    assert all(c["unexpected_count"] == 0 and c["examples"] == [] for c in outcome["checks"])
    json.dumps(outcome)  # goes to results.json as is


# --- 1. one arm per unit --------------------------------------------------------------------


def test_unit_exposed_to_two_arms_fails(target: Target) -> None:
    data = Dataset()
    data.exposures += [
        (KEY, "u2", "control", ts("2026-05-07 00:00:00"), False, False),
        (KEY, "u4", "control", ts("2026-05-11 00:00:00"), False, False),
    ]
    outcome = target.gate(data)
    check = only_failure(outcome, "one_arm_per_unit")
    assert not outcome["passed"]
    assert check["unexpected_count"] == 2
    assert check["examples"] == ["u2", "u4"]
    assert check["detail"] == "2 units were exposed to more than one arm (examples: u2, u4)"


# --- 2. arms --------------------------------------------------------------------------------


def test_unknown_arm_fails_with_the_unknown_values(target: Target) -> None:
    data = Dataset()
    data.exposures += [
        (KEY, "u7", "ctrl", ts("2026-05-07 00:00:00"), False, False),
        (KEY, "u8", "ctrl", ts("2026-05-07 00:00:00"), False, False),
    ]
    check = only_failure(target.gate(data), "exposures_arm_in_config")
    assert check["unexpected_count"] == 2
    assert check["examples"] == ["ctrl"]
    assert "(control, treatment)" in check["detail"]


# --- 3. nulls -------------------------------------------------------------------------------

NULL_EXPOSURES = {
    "exposures_unit_id_not_null": (KEY, None, "control", ts("2026-05-07 00:00:00"), False, False),
    "exposures_arm_not_null": (KEY, "u7", None, ts("2026-05-07 00:00:00"), False, False),
    "exposures_exposed_at_not_null": (KEY, "u7", "control", None, False, False),
}


@pytest.mark.parametrize("name", sorted(NULL_EXPOSURES))
def test_null_in_exposures_fails(target: Target, name: str) -> None:
    data = Dataset()
    data.exposures.append(NULL_EXPOSURES[name])
    check = only_failure(target.gate(data), name)
    assert check["unexpected_count"] == 1
    assert check["examples"] == ([] if "unit_id" in name else ["u7"])


def test_null_in_other_experiments_exposures_is_not_this_gates_business(target: Target) -> None:
    data = Dataset()
    data.exposures.append((OTHER, None, None, None, False, False))
    assert target.gate(data)["passed"]


NULL_EVENTS = {
    "events_unit_id_not_null": (None, "page_view", ts("2026-05-31 12:00:00"), KEY),
    "events_event_name_not_null": ("u3", None, ts("2026-05-31 12:00:00"), KEY),
    "events_occurred_at_not_null": ("u3", "page_view", None, KEY),
}


@pytest.mark.parametrize("name", sorted(NULL_EVENTS))
def test_null_in_events_fails(target: Target, name: str) -> None:
    data = Dataset()
    data.events += [NULL_EVENTS[name]] * 2
    check = only_failure(target.gate(data), name)
    assert check["unexpected_count"] == 2
    # An event without a unit has no id to show: its event name is the example.
    assert check["examples"] == (["page_view"] if "unit_id" in name else ["u3"])


# --- 4. the window --------------------------------------------------------------------------


def test_exposures_outside_the_window_fail(target: Target) -> None:
    data = Dataset()
    data.exposures += [
        (KEY, "u8", "control", ts("2026-06-01 00:00:00"), False, False),  # day after end
        (KEY, "u7", "treatment", ts("2026-05-03 23:59:59"), False, False),  # day before start
    ]
    check = only_failure(target.gate(data), "exposures_within_window")
    assert check["unexpected_count"] == 2
    assert sorted(check["examples"]) == ["u7", "u8"]
    assert "2026-05-04 to 2026-05-31" in check["detail"]


# --- 5. data from the future ----------------------------------------------------------------


def test_events_dated_in_the_future_fail(target: Target) -> None:
    data = Dataset()
    data.events += [
        ("u1", "marked_solved", ts("2099-06-01 00:00:00"), KEY),
        ("u1", "marked_solved", ts("2099-06-03 00:00:00"), KEY),
    ]
    check = only_failure(target.gate(data), "events_not_in_future")
    assert check["unexpected_count"] == 2
    assert check["examples"] == ["u1"]
    assert "in the future" in check["detail"] and "run date 2026-05-31" in check["detail"]


def test_later_data_seen_by_a_backfill_of_an_earlier_date_is_not_from_the_future(
    target: Target,
) -> None:
    data = Dataset()
    data.events.append(("u1", "marked_solved", ts("2026-06-03 00:00:00"), KEY))
    outcome = target.gate(data)
    assert outcome["passed"], failed(outcome)


# --- 6. internal / bot traffic --------------------------------------------------------------


def test_internal_or_bot_unit_left_in_the_units_table_fails(target: Target) -> None:
    data = Dataset()
    data.units += [
        ("u5", "control", ts("2026-05-11 12:00:00")),
        ("u6", "treatment", ts("2026-05-11 12:00:00")),
    ]
    check = only_failure(target.gate(data), "no_internal_or_bot_units")
    assert check["unexpected_count"] == 2
    assert check["examples"] == ["u5", "u6"]


def test_flags_the_extraction_cannot_see_are_not_failures(target: Target) -> None:
    data = Dataset()
    data.exposures += [
        ("other-experiment", "u1", "x", ts("2026-05-10 09:00:00"), True, True),
        (KEY, "u2", "treatment", ts("2026-06-02 09:00:00"), False, True),  # after the run date
    ]
    outcome = target.gate(data)
    check = next(c for c in outcome["checks"] if c["name"] == "no_internal_or_bot_units")
    assert check["passed"], check


def test_a_flag_the_audience_keeps_is_not_a_failure(target: Target) -> None:
    data = Dataset()
    data.units.append(("u5", "control", ts("2026-05-11 12:00:00")))  # internal only
    outcome = target.gate(data, exclude_internal=False, exclude_bots=True)
    assert outcome["passed"], failed(outcome)


def test_check_is_skipped_when_the_audience_excludes_nothing(target: Target) -> None:
    data = Dataset()
    data.units.append(("u6", "treatment", ts("2026-05-11 12:00:00")))
    outcome = target.gate(data, exclude_internal=False, exclude_bots=False)
    check = next(c for c in outcome["checks"] if c["name"] == "no_internal_or_bot_units")
    assert outcome["passed"] and check["passed"]
    assert check["detail"].startswith("not applicable")


# --- 7. experiment tags ---------------------------------------------------------------------


def test_event_tagged_with_an_experiment_the_unit_never_saw_fails(target: Target) -> None:
    data = Dataset()
    data.events.append(("u1", "marked_solved", ts("2026-05-05 00:00:00"), OTHER))
    check = only_failure(target.gate(data), "events_tagged_with_unexposed_experiment")
    assert check["unexpected_count"] == 1
    assert check["examples"] == ["u1"]
    assert check["severity"] == "error"


def test_missing_experiment_tag_is_a_warning_only(target: Target) -> None:
    data = Dataset()
    data.events += [
        ("u3", "marked_solved", ts("2026-05-31 00:00:00"), None),
        ("u4", "marked_solved", ts("2026-05-31 00:00:00"), None),
        ("u4", "escalated", ts("2026-05-31 00:00:00"), None),
    ]
    outcome = target.gate(data)
    check = only_failure(outcome, "events_experiment_tag_missing")
    assert outcome["passed"]  # a warning does not fail the gate
    assert check["severity"] == "warning"
    assert check["unexpected_count"] == 3
    assert check["examples"] == ["u3", "u4"]


# --- errors and boundaries ------------------------------------------------------------------


def test_the_count_is_exact_beyond_the_examples(target: Target) -> None:
    data = Dataset()
    data.exposures += [
        (KEY, f"u{n}", None, ts("2026-05-07 00:00:00"), False, False) for n in range(10, 17)
    ]
    check = only_failure(target.gate(data), "exposures_arm_not_null")
    assert check["unexpected_count"] == 7
    assert check["examples"] == ["u10", "u11", "u12", "u13", "u14"]
    assert check["detail"].startswith("7 exposures of refund-query-rewrite have no arm")


def test_the_checks_are_a_gx_expectation_type() -> None:
    from great_expectations.expectations import UnexpectedRowsExpectation
    from great_expectations.expectations.registry import get_expectation_impl

    from ab_pipeline.gates.data_quality import _counted_expectation

    counted = _counted_expectation()
    assert get_expectation_impl("counted_unexpected_rows_expectation") is counted
    assert issubclass(counted, UnexpectedRowsExpectation)
    assert counted.metric_dependencies == ("unexpected_rows_query.table",)


def test_a_check_whose_query_breaks_is_a_pipeline_error_naming_it(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ab_pipeline.gates import data_quality

    templates = load_suite_templates()
    broken = templates[1]["expectations"][1]
    broken["kwargs"]["unexpected_rows_query"] = (
        "SELECT x.no_such_column AS example FROM {batch} AS x"
    )
    monkeypatch.setattr(data_quality, "load_suite_templates", lambda: templates)
    target.load(Dataset())
    with pytest.raises(PipelineError, match="check exposures_arm_not_null could not run"):
        run_data_quality(target.warehouse.url, target.config(), RUN_DATE, f"{target.prefix}units")


def test_one_query_per_check_returning_the_count_and_a_few_examples(target: Target) -> None:
    """Each check is one statement, the bounded wrapper: raw rows never reach Python.

    GX's own UnexpectedRowsExpectation would run every query twice (the rows, then a COUNT(*)
    of them); the suites' counted expectation runs it once. Also guards against a GX upgrade
    (or a column expectation on a query asset, which makes GX run the bare batch query to learn
    its columns) fetching whole batches.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    target.load(Dataset())
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        run_data_quality(target.warehouse.url, target.config(), RUN_DATE, f"{target.prefix}units")
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    scratch = [s for s in statements if "ab_dq_" in s and "unexpected" not in s]
    # metric_events_after_exposure's witness queries: one per metric event, one row at most.
    witnesses = [s for s in statements if WITNESS_SAMPLE in s]
    assert len(witnesses) == 4 and all(s.endswith("LIMIT 1") for s in witnesses)
    checks = [s for s in statements if s not in scratch and s not in witnesses]
    assert len(checks) == 16  # one per check that applies, not two (examples, then a COUNT)
    for statement in checks:
        assert statement.startswith("WITH unexpected AS"), statement
        assert "LIMIT 5" in statement and "unexpected_count" in statement, statement
    # The exposures and events suites' batches are written once each (then dropped); their
    # five and seven checks read them.
    created = [s for s in scratch if s.startswith(("CREATE TABLE", "CREATE UNLOGGED TABLE"))]
    assert sorted("ab_dq_events_" in s for s in created) == [False, True]
    if target.warehouse.dialect == "postgresql":  # no write-ahead log for a task's scratch
        assert all(s.startswith("CREATE UNLOGGED TABLE") for s in created), created
    assert sum(s.startswith("DROP TABLE IF EXISTS") for s in scratch) == 4
    assert sum("ab_dq_exposures_" in s for s in checks) == 5
    assert sum("ab_dq_events_" in s for s in checks) == 7


def test_the_events_scratch_table_is_dropped_even_when_a_check_breaks(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ab_pipeline.gates import data_quality

    def scratch_tables() -> list[dict[str, Any]]:
        # Only the test's own schema: other tests (and other workers) write theirs meanwhile.
        schema = target.prefix.rstrip(".")
        return target.warehouse.query(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'ab_dq_%'"
            + (" AND table_schema = :schema" if schema else ""),
            {"schema": schema} if schema else None,
        )

    target.gate(Dataset())  # loads the dataset
    assert scratch_tables() == []
    templates = load_suite_templates()
    [events] = [t for t in templates if t["name"] == "events"]
    assert events["meta"]["materialize"] is True
    events["expectations"][0]["kwargs"]["unexpected_rows_query"] = (
        "SELECT e.no_such_column AS example FROM {batch} AS e"
    )
    monkeypatch.setattr(data_quality, "load_suite_templates", lambda: templates)
    with pytest.raises(PipelineError, match="check events_unit_id_not_null could not run"):
        run_data_quality(target.warehouse.url, target.config(), RUN_DATE, f"{target.prefix}units")
    assert scratch_tables() == []


def test_a_check_that_cannot_run_is_a_pipeline_error(target: Target) -> None:
    target.load(Dataset())
    with pytest.raises(PipelineError, match=KEY):
        run_data_quality(
            target.warehouse.url, target.config(), RUN_DATE, f"{target.prefix}no_such_table"
        )


def test_gx_stays_quiet(target: Target, caplog: pytest.LogCaptureFixture) -> None:
    target.load(Dataset())
    with caplog.at_level(logging.DEBUG):
        run_data_quality(target.warehouse.url, target.config(), RUN_DATE, f"{target.prefix}units")
    assert [r for r in caplog.records if r.name.startswith("great_expectations")] == []
    assert logging.getLogger("great_expectations").level == logging.NOTSET  # restored


def test_suites_are_well_formed() -> None:
    templates = load_suite_templates()
    names = [e["meta"]["check"] for t in templates for e in t["expectations"]]
    assert len(names) == len(set(names)) == 17
    for template in templates:
        assert template["meta"]["batch_query"].startswith("SELECT ")
        for expectation in template["expectations"]:
            assert expectation["type"] == "counted_unexpected_rows_expectation"
            assert "{batch} AS " in expectation["kwargs"]["unexpected_rows_query"]
            assert {"passed", "one", "other"} <= set(expectation["meta"]["detail"])


def test_a_value_that_is_not_safe_sql_text_is_refused(tmp_path: Path) -> None:
    config = load_config(REPO_ROOT / "dags" / "experiments" / f"{KEY}.yaml")
    forged = config.model_copy(update={"key": "x' OR :p0 {batch}"})  # bypasses config validation
    with pytest.raises(PipelineError, match="cannot be written into a data-quality query"):
        run_data_quality(f"duckdb:///{tmp_path}/unused.duckdb", forged, RUN_DATE, "units")


def test_unsafe_table_name_is_refused_before_any_sql(tmp_path: Path) -> None:
    config = load_config(REPO_ROOT / "dags" / "experiments" / f"{KEY}.yaml")
    with pytest.raises(ValueError, match="not a safe SQL identifier"):
        run_data_quality(
            f"duckdb:///{tmp_path}/unused.duckdb", config, RUN_DATE, 'units"; DROP TABLE x; --'
        )


def test_importing_the_gate_does_not_import_great_expectations() -> None:
    code = (
        "import sys, ab_pipeline.gates.data_quality\n"
        "assert 'great_expectations' not in sys.modules, 'GX imported at module import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=60)


# --- metrics without data, non-finite values, column types ----------------------------------


def with_metrics(config: ExperimentConfig, **metrics: Any) -> ExperimentConfig:
    from ab_pipeline.core.config import ExperimentConfig as Model

    data = config.model_dump(mode="json")
    data["metrics"].update(metrics)
    return Model.model_validate(data)


def gate_with(target: Target, data: Dataset, config: ExperimentConfig) -> dict[str, Any]:
    target.load(data)
    return run_data_quality(target.warehouse.url, config, RUN_DATE, f"{target.prefix}units")


def test_a_misspelt_metric_event_fails_naming_the_metric_and_event(target: Target) -> None:
    """`answer_servd` would otherwise be a p95 of nothing and a guardrail 'breached'."""
    config = with_metrics(
        target.config(),
        p95_latency_ms={"type": "quantile", "event": "answer_servd", "quantile": 0.95},
    )
    outcome = gate_with(target, Dataset(), config)
    check = only_failure(outcome, "metric_events_after_exposure")
    assert check["examples"] == ["answer_servd"] and check["unexpected_count"] == 1
    assert check["detail"].endswith(
        ": no `answer_servd` events for enrolled units (metric p95_latency_ms)"
    )
    assert not outcome["passed"]
    assert outcome["detail"] == f"metric_events_after_exposure: {check['detail']}"


def test_events_only_before_exposure_or_of_other_units_are_no_data(target: Target) -> None:
    """u1 is exposed at 2026-05-04 00:00; its `escalated` before that cannot be an outcome."""
    data = Dataset()
    data.events = [e for e in data.events if e[1] not in ("escalated", "marked_solved")]
    data.events += [
        ("u1", "escalated", ts("2026-05-03 23:59:59"), KEY),  # before exposure
        ("u9", "marked_solved", ts("2026-05-20 00:00:00"), None),  # not an enrolled unit
        ("u2", "marked_solved", ts("2026-06-01 00:00:00"), KEY),  # after the run date
    ]
    check = only_failure(target.gate(data), "metric_events_after_exposure")
    assert check["examples"] == ["escalated", "marked_solved"]
    assert "2 metric events have no rows" in check["detail"]
    assert "no `escalated` events for enrolled units (metric escalation_rate)" in check["detail"]
    assert (
        "no `marked_solved` events for enrolled units (metric resolution_rate)" in (check["detail"])
    )


def test_a_ratio_metric_needs_both_of_its_events(target: Target) -> None:
    config = with_metrics(
        target.config(),
        escalations_per_answer={
            "type": "ratio",
            "numerator": {"event": "escalated"},
            "denominator": {"event": "answer_shown"},
        },
    )
    check = only_failure(gate_with(target, Dataset(), config), "metric_events_after_exposure")
    assert check["examples"] == ["answer_shown"]
    assert "(metric escalations_per_answer)" in check["detail"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e308, -2e15])
def test_a_non_finite_or_huge_metric_value_fails(target: Target, bad: float) -> None:
    data = Dataset()
    data.events += [
        ("u4", "answer_served", ts("2026-05-12 00:00:00"), KEY, bad),
        ("u4", "answer_served", ts("2026-05-12 00:01:00"), KEY, 1e15),  # at the bound: fine
        ("u4", "page_view", ts("2026-05-12 00:00:00"), KEY, math.nan),  # no metric reads it
    ]
    check = only_failure(target.gate(data), "events_value_finite")
    assert check["unexpected_count"] == 1 and check["examples"] == ["answer_served"]
    assert check["detail"] == (
        "1 value of the metrics' events is NaN, infinite or beyond ±1e+15: it must not reach "
        "a comparison (events: `answer_served` (metric p95_latency_ms))"
    )


def test_non_finite_values_of_sql_metrics_fail(target: Target) -> None:
    config = with_metrics(
        target.config(), handle_time={"type": "mean", "sql": "SELECT unit_id, 1 AS value FROM x"}
    )
    target.load(Dataset())
    units = f"{target.prefix}units"
    target.warehouse.execute(
        [
            f'ALTER TABLE {units} ADD COLUMN "m_handle_time" DOUBLE PRECISION',
            f"UPDATE {units} SET m_handle_time = CASE unit_id WHEN 'u2' THEN :nan ELSE 3 END",
        ],
        {"nan": math.nan},
    )
    outcome = run_data_quality(target.warehouse.url, config, RUN_DATE, units)
    check = only_failure(outcome, "sql_metric_values_finite")
    assert check["examples"] == ["u2"]
    assert "`sql:` metric (handle_time) that is NaN" in check["detail"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"arm TEXT": "arm INTEGER"}, ["exposures.arm is INTEGER"]),
        (
            {"exposed_at TIMESTAMP": "exposed_at TIMESTAMP WITH TIME ZONE"},
            ["exposures.exposed_at is TIMESTAMP WITH TIME ZONE"],
        ),
        (
            {
                "occurred_at TIMESTAMP": "occurred_at VARCHAR",
                "value DOUBLE PRECISION": "value TEXT",
            },
            ["events.occurred_at is {varchar}", "events.value is {text}"],
        ),
    ],
)
def test_contract_columns_of_another_type_fail_one_named_check(
    target: Target,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, str],
    expected: list[str],
) -> None:
    """Read from information_schema: no data needed; the other suites are not run."""
    ddl = list(DDL)
    for old, new in changes.items():
        ddl = [statement.replace(old, new) for statement in ddl]
    monkeypatch.setattr(sys.modules[__name__], "DDL", ddl)
    outcome = target.gate(Dataset(exposures=[], events=[], units=[]))
    [check] = outcome["checks"]
    duckdb = target.warehouse.dialect == "duckdb"
    names = {"varchar": "VARCHAR" if duckdb else "CHARACTER VARYING"}
    names["text"] = "VARCHAR" if duckdb else "TEXT"
    assert check["name"] == "contract_column_types" and not check["passed"]
    assert check["examples"] == [e.format(**names) for e in expected]
    assert "TIMESTAMP without time zone, in UTC" in check["detail"]
    assert not outcome["passed"] and outcome["detail"].startswith("contract_column_types: ")


def test_event_names_with_quotes_slashes_and_brackets_reach_the_checks(target: Target) -> None:
    name = "customer's cart/add (v2)"
    config = with_metrics(
        target.config(), escalation_rate={"type": "proportion", "event": name, "window": "1d"}
    )
    data = Dataset()
    data.events.append(("u4", name, ts("2026-05-10 13:00:00"), KEY))
    assert gate_with(target, data, config)["passed"]
    target.warehouse.execute(
        f"DELETE FROM {target.prefix}events WHERE event_name = :name", {"name": name}
    )
    units = f"{target.prefix}units"
    outcome = run_data_quality(target.warehouse.url, config, RUN_DATE, units)
    check = only_failure(outcome, "metric_events_after_exposure")
    assert check["examples"] == [name]


def test_metric_events_a_sample_shows_after_exposure_leave_the_check_query(
    any_target: Target,
) -> None:
    """Every metric event has a qualifying row among its first rows: the witness queries
    (one per event) find them and the check's query keeps no per-event join."""
    from ab_pipeline.gates.data_quality import metric_events

    config = any_target.config()
    with recording() as statements:
        outcome = gate_with(any_target, Dataset(), config)
    assert outcome["passed"], failed(outcome)
    witnesses = [s for s in statements if WITNESS_SAMPLE in s]
    assert len(witnesses) == len(metric_events(config)) >= 4
    assert not [s for s in statements if MEAE_PART in s]
    check = next(c for c in outcome["checks"] if c["name"] == "metric_events_after_exposure")
    assert check["passed"] and check["unexpected_count"] == 0


def test_an_event_the_sample_does_not_settle_keeps_its_part_of_the_check(target: Target) -> None:
    """`escalated`'s only row after an exposure comes after 10,000 rows before it: the
    witness's sample misses it, so the full part for `escalated` runs, and finds it."""
    data = Dataset()
    data.events = [e for e in data.events if e[1] != "escalated"]
    target.load(data)
    events = f"{target.prefix}events"
    target.warehouse.execute(
        [
            f"INSERT INTO {events} (unit_id, event_name, occurred_at, experiment_key) "
            f"SELECT 'u1', 'escalated', TIMESTAMP '2026-05-03 12:00:00', '{KEY}' "
            "FROM generate_series(1, 10000)",  # before u1's first exposure: no outcome
            f"INSERT INTO {events} (unit_id, event_name, occurred_at, experiment_key) "
            f"VALUES ('u4', 'escalated', TIMESTAMP '2026-05-12 00:00:00', '{KEY}')",
        ]
    )
    units = f"{target.prefix}units"
    with recording() as statements:
        outcome = run_data_quality(target.warehouse.url, target.config(), RUN_DATE, units)
    assert outcome["passed"], failed(outcome)
    [check_query] = [s for s in statements if MEAE_PART in s]
    assert check_query.count(MEAE_PART) == 1 and "'escalated'" in check_query
    target.warehouse.execute(
        f"DELETE FROM {events} WHERE unit_id = 'u4' AND event_name = 'escalated'"
    )
    outcome = run_data_quality(target.warehouse.url, target.config(), RUN_DATE, units)
    assert only_failure(outcome, "metric_events_after_exposure")["examples"] == ["escalated"]


def test_no_witness_runs_where_a_sample_costs_a_full_read() -> None:
    """BigQuery bills the bytes of every column a query reads, LIMIT or not."""
    from ab_pipeline.gates.data_quality import _GateRun, _witnessed

    [expectation] = [
        e
        for t in load_suite_templates()
        for e in t["expectations"]
        if e["meta"]["check"] == "metric_events_after_exposure"
    ]
    assert "witness_query" in expectation["meta"]

    def unreachable(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("no query is written for BigQuery")

    run = _GateRun(None, None, unreachable, unreachable, "bigquery://p/d")  # type: ignore[arg-type]
    assert _witnessed(run, expectation) == frozenset()


def test_an_event_name_the_checks_cannot_quote_is_a_clear_error(target: Target) -> None:
    config = with_metrics(
        target.config(), escalation_rate={"type": "proportion", "event": "cart:add"}
    )
    with pytest.raises(PipelineError, match="'cart:add' cannot be written into a data-quality"):
        gate_with(target, Dataset(), config)


def test_the_gate_line_counts_warnings_apart_from_passed_checks() -> None:
    from ab_pipeline.gates.data_quality import _gate_detail

    passed = {"name": "a", "passed": True, "severity": "error", "detail": "fine"}
    warned = {"name": "b", "passed": False, "severity": "warning", "detail": "odd"}
    assert _gate_detail([passed, passed], []) == "2 checks passed"
    assert _gate_detail([passed, warned, passed], []) == (
        "2 of 3 checks passed, 1 warning (not blocking)"
    )


# --- sources given as `{sql: ...}` ----------------------------------------------------------


def query_sources(target: Target, exposures: str | None = None) -> ExperimentConfig:
    """The config reading the test tables through queries, in the shape a team would write
    them: a JSON literal (braces, which GX formats), a LIKE pattern (`%`, psycopg2's
    placeholder) and a string with a colon (SQLAlchemy's bind marker) all reach the checks."""
    p = target.prefix
    exposures = exposures or (
        "SELECT x.experiment_key, x.unit_id, x.arm, x.exposed_at, x.is_internal, x.is_bot, "
        'COALESCE(x.properties, CAST(\'{"from": "query"}\' AS JSON)) AS properties '
        f"FROM {p}exposures AS x WHERE x.unit_id NOT LIKE 'zz%'"
    )
    events = (
        "SELECT unit_id, event_name, occurred_at, value, experiment_key "
        f"FROM {p}events WHERE (event_name IS NULL OR event_name <> 'never:seen') "
        "AND COALESCE(experiment_key, '') <> '100%'"
    )
    source = Source(exposures={"sql": exposures}, events={"sql": events})
    return target.config().model_copy(update={"source": source})


def test_a_correct_source_query_passes_every_check(target: Target) -> None:
    data = Dataset()
    # Rows the queries leave out, each of which would fail a check if a literal were mangled.
    data.events += [
        ("u1", "never:seen", ts("2027-01-01 00:00:00"), KEY),  # from the future
        ("u2", "checkout", ts("2026-05-06 00:00:00"), "100%"),  # an experiment u2 never saw
    ]
    target.load(data)
    config = query_sources(target)
    outcome = run_data_quality(target.warehouse.url, config, RUN_DATE, f"{target.prefix}units")
    assert outcome["passed"], failed(outcome)
    assert outcome["detail"] == "17 checks passed"


def test_bad_data_read_through_a_source_query_fails_the_named_check(target: Target) -> None:
    data = Dataset()
    data.exposures += [(KEY, "u2", "control", ts("2026-05-07 00:00:00"), False, False)]
    target.load(data)
    config = query_sources(target)
    outcome = run_data_quality(target.warehouse.url, config, RUN_DATE, f"{target.prefix}units")
    check = only_failure(outcome, "one_arm_per_unit")
    assert check["examples"] == ["u2"]
    assert outcome["detail"].startswith("one_arm_per_unit: 1 unit was exposed to more than one")


def test_a_source_query_missing_or_mistyping_a_column_fails_the_contract_check(
    any_target: Target,
) -> None:
    """On every engine: the query's result types are read (`Dialect.result_types`) and the
    check names the column, in the engine's own name of the type."""
    target = any_target
    target.load(Dataset())
    dialect = target.warehouse.dialect
    query = (
        "SELECT experiment_key, unit_id, arm, "
        f"CAST(exposed_at AS {'STRING' if dialect == 'spark' else 'TEXT'}) AS exposed_at, "
        f"is_internal, properties FROM {target.prefix}exposures"
    )
    config = query_sources(target, exposures=query)
    outcome = run_data_quality(target.warehouse.url, config, RUN_DATE, f"{target.prefix}units")
    [check] = outcome["checks"]  # the other suites are not run
    text = {"duckdb": "VARCHAR", "spark": "STRING"}.get(dialect, "TEXT")
    assert check["name"] == "contract_column_types" and not check["passed"]
    assert check["examples"] == [f"exposures.exposed_at is {text}", "exposures.is_bot is missing"]
    assert "missing or have types the pipeline cannot read" in check["detail"]
    problems = contract_problems(target.warehouse, config, RUN_DATE)
    assert problems == [f"exposures.exposed_at is {text}", "exposures.is_bot is missing"]


def test_a_source_query_that_does_not_run_is_an_error_naming_the_field(
    any_target: Target,
) -> None:
    target = any_target
    target.load(Dataset())
    config = query_sources(target, exposures="SELECT * FROM no_such_table")
    with pytest.raises(PipelineError, match=r"source\.exposures\.sql does not run in the"):
        run_data_quality(target.warehouse.url, config, RUN_DATE, f"{target.prefix}units")
