"""The sample experiments, unchanged, read out on PostgreSQL give what DuckDB gives.

The same seeded data goes into an embedded DuckDB file (the session's parity baseline,
tests/conftest.py, which the Snowflake module compares with too) and into a throwaway schema
on the machine's PostgreSQL. Only the connection differs: the PostgreSQL URL selects the schema
through `search_path`, so the configs (and their hashes) are byte-identical, and the run's
units table and results tables land in that schema too. The connection URL carries a password
(trust auth ignores it): it must not appear in any file the runs write or any log line.

The sample experiments have no ratio and no CUPED metric, so one more readout runs a copy of
onboarding-checklist that adds both (over events the simulation already writes: support tickets
per session, and session counts adjusted by the sessions before exposure).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import load_config
from ab_pipeline.devtools.simulate import main_simulate
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.readout.extract import units_table_name
from ab_pipeline.warehouse import Warehouse, dispose_all
from tests.conftest import POSTGRES_URL

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "dags" / "experiments").glob("*.yaml"))
SECRET = "pw-" + uuid.uuid4().hex[:12]


def with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def readout_dates(config_path: Path) -> list[date]:
    config = load_config(config_path)
    return [config.end]


def with_ratio_and_cuped(folder: Path) -> Path:
    """onboarding-checklist plus a ratio metric and a CUPED-adjusted mean, written to folder."""
    data = yaml.safe_load((REPO / "dags" / "experiments" / "onboarding-checklist.yaml").read_text())
    data["metrics"]["tickets_per_session"] = {
        "type": "ratio",
        "numerator": {"event": "support_ticket"},
        "denominator": {"event": "session_start"},
        "window": "7d",
    }
    data["metrics"]["sessions_7d"]["cuped"] = {"covariate": "same", "lookback": "3d"}
    folder.mkdir(parents=True)
    path = folder / "onboarding-checklist.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# The user's own SQL of `with_sql_metric_and_query_sources`: as written, it runs on DuckDB,
# Snowflake and Spark alike.
ESCALATIONS_SQL = (
    "SELECT unit_id, COUNT(*) AS value FROM events WHERE event_name = 'escalated' GROUP BY unit_id"
)
QUERY_SOURCES = {
    "exposures": {
        "sql": "SELECT experiment_key, unit_id, arm, exposed_at, is_internal, is_bot, "
        "properties FROM exposures WHERE experiment_key IS NOT NULL"
    },
    "events": {
        "sql": "SELECT unit_id, event_name, occurred_at, value, experiment_key FROM events "
        "WHERE event_name IS NOT NULL"
    },
}


def with_sql_metric_and_query_sources(folder: Path) -> Path:
    """refund-query-rewrite reading both sources through `{sql: ...}` queries over the
    contract tables, plus a `sql:` metric (escalations per unit, a mean over every unit),
    written to folder under the same file name (the DAG id comes from the key)."""
    data = yaml.safe_load((REPO / "dags" / "experiments" / "refund-query-rewrite.yaml").read_text())
    data["source"] = {**data["source"], **QUERY_SOURCES}
    data["metrics"]["escalations"] = {"type": "mean", "sql": ESCALATIONS_SQL}
    folder.mkdir(parents=True)
    path = folder / "refund-query-rewrite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def read_out(config: Path, day: date, url: str, out: Path) -> dict[str, Any]:
    """One readout in-process (`run_pipeline`, no email; a DAG's tasks run the same stages):
    its results.json."""
    ctx = RunContext(config, day, url, out)
    run_pipeline(ctx, deliver=False)
    return dict(json.loads((ctx.run_dir / "results.json").read_text()))


def run_all(url: str, out: Path, variant: Path) -> dict[tuple[str, str], dict[str, Any]]:
    runs = {}
    for label, path, where in [
        *((p.stem, p, out) for p in CONFIGS),
        (VARIANT, variant, out / "variant"),
    ]:
        for day in readout_dates(path):
            runs[label, day.isoformat()] = read_out(path, day, url, where)
    dispose_all()
    return runs


VARIANT = "onboarding-checklist+ratio+cuped"


@pytest.fixture(scope="module")
def both(
    tmp_path_factory: pytest.TempPathFactory, duckdb_parity_baseline: dict[str, Any]
) -> Iterator[tuple[dict[tuple[str, str], dict[str, Any]], ...]]:
    """DuckDB's readouts (the session's baseline, tests/conftest.py) and PostgreSQL's."""
    root = tmp_path_factory.mktemp("parity")
    admin = Warehouse(POSTGRES_URL)
    schema = f"ab_parity_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    secret_url = with_password(POSTGRES_URL, SECRET) + f"?options=-csearch_path%3D{schema}"
    try:
        assert main_simulate(["--warehouse", POSTGRES_URL, "--schema", schema]) == 0
        # Freshly loaded tables have no planner statistics; without them PostgreSQL picks
        # nested loops and the extract takes minutes instead of milliseconds.
        admin.execute([f"ANALYZE {schema}.exposures", f"ANALYZE {schema}.events"])
        yield (
            duckdb_parity_baseline["runs"],
            run_all(secret_url, root / "postgres", duckdb_parity_baseline["variant"]),
            {"root": root, "schema": schema, "tables": _tables(admin, schema)},  # type: ignore[dict-item]
        )
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        dispose_all()


def _tables(admin: Warehouse, schema: str) -> list[str]:
    rows = admin.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = :s", {"s": schema}
    )
    return sorted(r["table_name"] for r in rows)


def same(a: Any, b: Any, path: str = "") -> list[str]:
    """Differences between two JSON values; floats agree to 1e-9 (relative)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a.keys() ^ b.keys())}"]
        return [d for k in a for d in same(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in same(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def comparable(results: dict[str, Any]) -> dict[str, Any]:
    """The run's findings; drops only the data-quality check wording, which names the clock."""
    data = json.loads(json.dumps(results))
    for check in (data["gates"].get("data_quality") or {}).get("checks", []):
        check.pop("detail", None)
    return dict(data)


def test_decisions_and_numbers_match_duckdb(both: tuple[Any, ...]) -> None:
    duck, postgres, _ = both
    assert duck.keys() == postgres.keys() and len(duck) == len(CONFIGS) + 1
    for run, expected in duck.items():
        got = postgres[run]
        assert got["decision"] == expected["decision"], run
        assert got["decision_reason"] == expected["decision_reason"], run
        # Counts are integers: exactly equal. Floats may differ in the last bit only, where the
        # two engines add the same numbers in a different order.
        assert got["gates"]["srm"]["counts"] == expected["gates"]["srm"]["counts"], run
        assert same(comparable(expected), comparable(got)) == [], run


def test_the_ratio_and_cuped_readout_is_compared_with_real_data(both: tuple[Any, ...]) -> None:
    """The parity above covers these numbers; here: they exist and are not degenerate."""
    duck, postgres, _ = both
    for runs in (duck, postgres):
        metrics = runs[VARIANT, "2026-03-29"]["metrics"]
        ratio = metrics["tickets_per_session"]
        for arm in ("control", "treatment"):
            assert (
                ratio["arms"][arm]["numerator"] > 100 and ratio["arms"][arm]["denominator"] > 1000
            )
        assert "delta" in ratio["comparisons"]["treatment"]["method"]
        assert ratio["comparisons"]["treatment"]["se"] > 0
        cuped = metrics["sessions_7d"]["comparisons"]["treatment"]["cuped"]
        assert cuped["theta"] != 0 and cuped["se_unadjusted"] > 0
        assert cuped["covariate"] == "sessions_7d" and cuped["lookback"] == "3d"


def test_everything_stays_in_the_throwaway_schema(both: tuple[Any, ...]) -> None:
    *_, info = both
    tables = info["tables"]
    assert {"exposures", "events", "ab_readouts", "ab_metric_results", "ab_gate_results"} <= set(
        tables
    )
    assert any(t.startswith("ab_units__") for t in tables)


def test_the_password_appears_in_no_output(
    both: tuple[Any, ...], caplog: pytest.LogCaptureFixture
) -> None:
    _, postgres, info = both
    assert SECRET not in json.dumps(list(postgres.values()))
    for path in Path(info["root"], "postgres").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_the_password_appears_in_no_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run whose warehouse cannot be reached logs and raises without the password."""
    url = with_password("postgresql://ab@127.0.0.1:1/nowhere", SECRET)
    caplog.set_level(logging.DEBUG)
    ctx = RunContext(CONFIGS[0], date(2026, 5, 31), url, tmp_path)
    with pytest.raises(Exception) as raised:
        run_pipeline(ctx, deliver=False)
    assert SECRET not in str(raised.value)
    assert SECRET not in caplog.text


def test_the_units_table_goes_to_the_work_schema() -> None:
    config = load_config(CONFIGS[0])
    assert "." not in units_table_name(config, config.end)
    source = config.source.model_copy(update={"exposures": "raw.exposures"})
    assert units_table_name(config.model_copy(update={"source": source}), config.end).startswith(
        "raw.ab_units__"
    )
    source = source.model_copy(update={"work_schema": "scratch"})
    assert units_table_name(config.model_copy(update={"source": source}), config.end).startswith(
        "scratch.ab_units__"
    )
