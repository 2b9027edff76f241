"""Config validation: the samples pass; every kind of bad field names the file and the field."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ab_pipeline.core.config import json_schema, load_config, parse_duration
from ab_pipeline.core.errors import ConfigError
from ab_pipeline.orchestration.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[2] / "dags" / "experiments"
SAMPLES = sorted(EXPERIMENTS.glob("*.yaml"))
REFUND = EXPERIMENTS / "refund-query-rewrite.yaml"


def refund_data() -> dict[str, Any]:
    return yaml.safe_load(REFUND.read_text())


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def problems(tmp_path: Path, data: dict[str, Any]) -> dict[str, str]:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == str(path)
    return {p.field: p.reason for p in caught.value.problems}


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_every_sample_config_is_valid(path: Path) -> None:
    config = load_config(path)
    assert config.key == path.stem


def test_design_config_loads_with_its_durations() -> None:
    config = load_config(REFUND)
    metric = config.metrics["resolution_rate"]
    assert metric.window == timedelta(days=1)
    assert metric.unless is not None and metric.unless.within == timedelta(minutes=10)
    assert config.dag_id == "ab_refund_query_rewrite"
    assert config.guardrails["p95_latency_ms"].budget_kind == "max_increase"


@pytest.mark.parametrize(
    "text,seconds", [("10m", 600), ("36h", 129600), ("7d", 604800), ("2w", 1209600)]
)
def test_durations_parse(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_unknown_field_is_an_error(tmp_path: Path) -> None:
    data = refund_data() | {"recipents": ["x@example.com"]}
    assert "unknown field" in problems(tmp_path, data)["recipents"]


def test_unknown_nested_field_is_an_error(tmp_path: Path) -> None:
    data = refund_data()
    data["metrics"]["escalation_rate"]["windw"] = "1d"
    assert "metrics.escalation_rate.windw" in problems(tmp_path, data)


@pytest.mark.parametrize(
    "change,field,words",
    [
        ({"arms": {"control": 0.5, "treatment": 0.6}}, "arms", "sum to 1"),
        ({"arms": {"control": 1.0}}, "arms", "at least two arms"),
        ({"control": "baseline"}, "(top level)", "control 'baseline'"),
        ({"primary": "nope"}, "(top level)", "primary 'nope'"),
        ({"key": "Refund Query"}, "key", "lowercase"),
        ({"version": 0}, "version", "greater than or equal to 1"),
        ({"owner": "not-an-email"}, "owner", "not an email"),
        ({"recipients": []}, "recipients", "at least 1"),
        ({"end": "2026-05-01"}, "(top level)", "before start"),
        ({"start": "yesterday"}, "start", "date"),
        (
            {"hypothesis": {"change": "x", "metric": "resolution_rate", "direction": "up"}},
            "hypothesis.direction",
            "increase",
        ),
        (
            {"guardrails": {"escalation_rate": {"max_increase": 0.1, "max_decrease": 0.1}}},
            "guardrails.escalation_rate",
            "exactly one",
        ),
        (
            {"guardrails": {"unknown_metric": {"max_increase": 0.1}}},
            "(top level)",
            "unknown_metric",
        ),
        ({"source": {"exposures": "exposures; drop table x"}}, "source.exposures", "table name"),
        ({"plan": {"baseline": 1.5, "mde": 0.02}}, "plan.baseline", "less than 1"),
    ],
)
def test_bad_fields_are_named(
    tmp_path: Path, change: dict[str, Any], field: str, words: str
) -> None:
    found = problems(tmp_path, refund_data() | change)
    assert field in found, found
    assert words in found[field]


def test_bad_duration_names_the_metric(tmp_path: Path) -> None:
    data = refund_data()
    data["metrics"]["resolution_rate"]["window"] = "1 fortnight"
    found = problems(tmp_path, data)
    assert "not a duration" in found["metrics.resolution_rate.window"]


def test_metric_needs_event_or_sql(tmp_path: Path) -> None:
    data = refund_data()
    data["metrics"]["escalation_rate"] = {"type": "proportion", "window": "1d"}
    assert "exactly one of `event` or `sql`" in problems(tmp_path, data)["metrics.escalation_rate"]


def test_unknown_metric_type(tmp_path: Path) -> None:
    data = refund_data()
    data["metrics"]["escalation_rate"]["type"] = "ratio_of_vibes"
    assert "metrics.escalation_rate" in problems(tmp_path, data)


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("key: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "(yaml)" in str(caught.value)


def test_json_schema_accepts_the_samples_and_rejects_typos() -> None:
    schema = json_schema()
    for path in SAMPLES:  # editors see YAML dates as strings, as JSON does
        document = json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))
        jsonschema.validate(document, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(refund_data() | {"titel": "x"}, schema)


def test_cli_validate_prints_file_field_reason_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = refund_data()
    data["metrics"]["resolution_rate"]["window"] = "soon"
    bad = write(tmp_path, data)
    assert main(["validate", str(REFUND), str(bad)]) == 2
    out = capsys.readouterr().out
    assert f"{REFUND}: ok" in out
    assert f"{bad}: metrics.resolution_rate.window: 'soon' is not a duration" in out


def test_cli_validate_passes_on_samples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", *map(str, SAMPLES)]) == 0
    assert capsys.readouterr().out.count(": ok") == len(SAMPLES)


def test_cli_plan_names_the_formula(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--baseline", "0.38", "--mde", "0.02", "--formula", "pooled"]) == 0
    out = capsys.readouterr().out
    assert "9,246 units per arm" in out and "2p(1-p)" in out
    assert main(["plan", "--baseline", "0.25", "--mde", "0.03", "--formula", "unpooled"]) == 0
    assert "3,394 units per arm" in capsys.readouterr().out


def test_cli_schema_writes_the_schema(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    assert '"additionalProperties": false' in target.read_text()


def test_published_schema_matches_the_model() -> None:
    published = json.loads(
        (EXPERIMENTS.parent.parent / "docs" / "experiment.schema.json").read_text()
    )
    assert published == json_schema(), (
        "run: .venv/bin/ab-pipeline schema -o docs/experiment.schema.json"
    )


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("decision.min_lift", ".inf"),
        ("decision.alpha", ".nan"),
        ("plan.mde", ".nan"),
        ("plan.expected_units_per_day", ".inf"),
        ("guardrails.p95_latency_ms.max_increase", ".inf"),
        ("guardrails.escalation_rate.max_increase", "-.inf"),
        ("arms.control", ".nan"),
        ("metrics.p95_latency_ms.quantile", ".nan"),
    ],
)
def test_non_finite_numbers_are_refused_anywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], path: str, text: str
) -> None:
    """YAML's `.inf` / `.nan` are floats; `min_lift: .inf` would make SHIP unreachable."""
    data = refund_data()
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = "__NUMBER__"
    written = write(tmp_path, data)
    written.write_text(written.read_text().replace("__NUMBER__", text))
    found = problems(tmp_path, yaml.safe_load(written.read_text()))
    assert any(field == path and "finite" in reason for field, reason in found.items()), found
    assert main(["validate", str(written)]) == 2
    assert f"{path}: Input should be a finite number" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        (
            "SELECT unit_id, 1 AS value FROM events); DROP TABLE ab_readouts; SELECT (1",
            "does not parse as duckdb SQL",
        ),
        ("SELECT unit_id, 1 AS value FROM events; DROP TABLE ab_readouts", "exactly one SELECT"),
        (
            "SELECT column0 AS unit_id, 1 AS value FROM read_csv_auto('/etc/passwd')",
            "read_csv_auto",
        ),
        ("SELECT unit_id, pg_read_file('/etc/passwd') AS value FROM events", "pg_read_file"),
        ("COPY events TO '/tmp/out.csv'", "not COPY"),
    ],
)
@pytest.mark.parametrize("strict", [False, True])
def test_validate_refuses_sql_metrics_that_are_not_one_select(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sql: str, reason: str, strict: bool
) -> None:
    data = refund_data()
    data["metrics"]["handle_time"] = {"type": "mean", "sql": sql}
    path = write(tmp_path, data)
    assert main(["validate", str(path), *(["--strict"] if strict else [])]) == 2
    out = capsys.readouterr().out
    assert f"{path}: metrics.handle_time.sql: not one read-only SELECT: " in out
    assert reason in out


def test_validate_accepts_an_sql_metric_that_is_one_select(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = refund_data()
    data["metrics"]["handle_time"] = {
        "type": "mean",
        "sql": "WITH t AS (SELECT unit_id, SUM(value) AS value FROM events "
        "WHERE event_name = 'handled' GROUP BY unit_id) SELECT unit_id, value FROM t "
        "UNION ALL SELECT unit_id, 0 AS value FROM generate_series(1, 2) AS g(unit_id)",
    }
    assert main(["validate", str(write(tmp_path, data))]) == 0, capsys.readouterr().out


@pytest.mark.parametrize(
    ("sql", "dialect", "reason"),
    [
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "postgresql", "DELETE"),
        ("SELECT * INTO t2 FROM t", "postgresql", "INTO"),
        ("SELECT * FROM t FOR UPDATE", "postgresql", "LOCK"),
        ("SELECT lo_import('/etc/passwd') AS value", "postgresql", "lo_import"),
        ("SELECT * FROM dblink('db', 'SELECT 1') AS t(a INT)", "postgresql", "dblink"),
        ("SELECT unit_id, nextval('s') AS value FROM t", "postgresql", "nextval"),
        ("SELECT * FROM read_parquet('s3://bucket/x.parquet')", "duckdb", "read_parquet"),
        ("SELECT * FROM glob('/home/*')", "duckdb", "glob"),
        ("SELECT * FROM query('DROP TABLE t')", "duckdb", "query"),
        ("SELECT * FROM duckdb_settings()", "duckdb", "in FROM is not allowed"),
        ("SELECT * FROM 'https://example.com/x.csv'", "duckdb", "not a plain identifier"),
        ("SELECT (SELECT content FROM read_text('/etc/passwd')) AS v", "duckdb", "read_text"),
        ("SELECT getenv('HOME') AS v", "duckdb", "getenv"),
        ("ATTACH 'other.duckdb'", "duckdb", "not ATTACH"),
        ("INSTALL httpfs", "duckdb", "not INSTALL"),
        ("PRAGMA version", "duckdb", "not PRAGMA"),
        ("SELECT 1; SELECT 2", "duckdb", "exactly one SELECT statement (found 2)"),
    ],
)
def test_the_sql_checker_refuses_what_is_not_a_reading_select(
    sql: str, dialect: str, reason: str
) -> None:
    from ab_pipeline.core.sql_safety import UnsafeSQL, checked_select

    with pytest.raises(UnsafeSQL, match=re.escape(reason)):
        checked_select(sql, dialect)


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("SELECT unit_id, SUM(value) AS value FROM raw.events GROUP BY unit_id", "postgresql"),
        ("SELECT g AS unit_id, 1 AS value FROM generate_series(1, 3) AS s(g)", "postgresql"),
        ("SELECT x.unit_id, 1 AS value FROM t AS x, unnest(x.tags) AS u(tag)", "postgresql"),
        ("SELECT unit_id, 1 AS value FROM a UNION ALL SELECT unit_id, 2 FROM b", "duckdb"),
        ("SELECT unit_id, CAST(value AS INT) AS value FROM t -- a comment; DROP TABLE t", "duckdb"),
    ],
)
def test_the_sql_checker_returns_the_select_it_checked(sql: str, dialect: str) -> None:
    """What runs is sqlglot's rendering of what it parsed (comments dropped)."""
    import sqlglot

    from ab_pipeline.core.sql_safety import checked_select, sqlglot_dialect

    checked = checked_select(sql, dialect)
    assert "DROP" not in checked and "--" not in checked
    read = sqlglot_dialect(dialect)
    assert sqlglot.parse_one(checked, read=read) == sqlglot.parse_one(sql, read=read)


# --- sources: a table name or {sql: SELECT ...} ---------------------------------------------


def test_a_source_is_a_table_name_or_a_query(tmp_path: Path) -> None:
    data = refund_data()
    query = "SELECT user_key AS unit_id FROM tracking.app_events"
    data["source"] = {"exposures": "raw.exposures", "events": {"sql": query}}
    config = load_config(write(tmp_path, data))
    assert config.source.table("exposures") == "raw.exposures"
    assert config.source.sql("exposures") is None
    assert config.source.table("events") is None and config.source.sql("events") == query
    assert config.source.describe("events") == "source.events.sql"
    assert config.source.units_schema == "raw"


@pytest.mark.parametrize(("work_schema", "expected"), [(None, None), ("ab_work", "ab_work")])
def test_scratch_tables_of_a_query_source_go_to_the_work_schema_or_the_default(
    tmp_path: Path, work_schema: str | None, expected: str | None
) -> None:
    data = refund_data()
    data["source"] = {"exposures": {"sql": "SELECT * FROM raw.x"}, "work_schema": work_schema}
    assert load_config(write(tmp_path, data)).source.units_schema == expected


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("DROP TABLE exposures", "must be a SELECT, not DROP"),
        ("CREATE TABLE x AS SELECT 1", "must be a SELECT"),
        ("DELETE FROM events", "must be a SELECT"),
        ("SELECT * FROM events; DROP TABLE events", "exactly one SELECT statement (found 2)"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv() in FROM is not allowed"),
        ("SELECT pg_read_file('/etc/passwd') AS unit_id", "pg_read_file() is not allowed"),
    ],
)
def test_a_source_query_that_is_not_one_read_only_select_names_the_field(
    tmp_path: Path, sql: str, words: str
) -> None:
    data = refund_data()
    data["source"] = {"events": {"sql": sql}}
    found = problems(tmp_path, data)
    assert list(found) == ["source.events.sql"], found
    assert found["source.events.sql"].startswith("not one read-only SELECT")
    assert words in found["source.events.sql"]


@pytest.mark.parametrize(
    ("relation", "field", "words"),
    [
        (42, "source.exposures", "a table name ([schema.]identifier) or {sql: SELECT ...}"),
        ({"query": "SELECT 1"}, "source.exposures.query", "unknown field"),
        ({"sql": ""}, "source.exposures.sql", "at least 1 character"),
        ("a.b.c", "source.exposures", "{sql: SELECT ...}"),
    ],
)
def test_a_source_that_is_neither_names_the_field(
    tmp_path: Path, relation: Any, field: str, words: str
) -> None:
    data = refund_data()
    data["source"] = {"exposures": relation}
    found = problems(tmp_path, data)
    assert field in found, found
    assert words in found[field]


def test_the_json_schema_takes_a_query_source() -> None:
    data = json.loads(json.dumps(refund_data(), default=str))
    data["source"] = {"exposures": {"sql": "SELECT 1"}, "events": "raw.events"}
    jsonschema.validate(data, json_schema())
    data["source"]["events"] = {"sql": "SELECT 1", "dialect": "duckdb"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json_schema())
