"""The Cookie Cats example (examples/cookie-cats/): the game's one-row-per-player table read
through `{sql: ...}` sources gives exactly the readout of the same players converted into the
contract's exposures and events tables, on DuckDB and on PostgreSQL, and the published counts.

Each readout is the real pipeline (`run_pipeline`, as tests/test_postgres_parity.py runs it):
extract, every gate, analysis, decision, brief.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ab_pipeline.core.config import load_config
from ab_pipeline.devtools.cookie_cats import PUBLISHED, cookie_cats_frame, load_cookie_cats
from ab_pipeline.orchestration.pipeline import RunContext, run_pipeline
from ab_pipeline.warehouse import Warehouse, dispose_all
from tests.conftest import POSTGRES_URL, REPO_ROOT
from tests.test_postgres_parity import same
from tests.warehouse_fixtures import create_contract_tables, insert_rows

EXAMPLE = REPO_ROOT / "examples" / "cookie-cats" / "cookie-cats.yaml"
RUN_DATE = date(2026, 3, 15)
INSTALL = datetime(2026, 3, 2)


def test_the_generated_table_has_the_published_counts_and_is_deterministic() -> None:
    frame = cookie_cats_frame()
    assert len(frame) == 90_189 and frame["userid"].is_unique
    for version, counts in PUBLISHED.items():
        mine = frame[frame["version"] == version]
        assert len(mine) == counts.players
        assert int(mine["retention_1"].sum()) == counts.retained_1
        assert int(mine["retention_7"].sum()) == counts.retained_7
    assert cookie_cats_frame().equals(frame)


def contract_rows(frame: Any) -> tuple[list[Any], list[Any]]:
    """The players as contract rows, converted in Python (independently of the config's SQL):
    one exposure at install, an event per retention flag, the game rounds as a value."""
    exposures, events = [], []
    for userid, version, rounds, day_1, day_7 in frame.itertuples(index=False):
        unit = str(userid)
        exposures.append(("cookie-cats", unit, version, INSTALL, False, False, None))
        events.append((unit, "game_rounds", INSTALL, float(rounds), "cookie-cats"))
        if day_1:
            events.append(
                (unit, "retained_day_1", INSTALL + timedelta(days=1), None, "cookie-cats")
            )
        if day_7:
            events.append(
                (unit, "retained_day_7", INSTALL + timedelta(days=7), None, "cookie-cats")
            )
    return exposures, events


def with_table_sources(folder: Path) -> Path:
    """The example config with the contract tables as its sources (nothing else changed)."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["source"] = {"exposures": "exposures", "events": "events"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cookie-cats.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def readout(config: Path, url: str, out: Path) -> dict[str, Any]:
    ctx = RunContext(config, RUN_DATE, url, out)
    run_pipeline(ctx, deliver=False)
    return dict(json.loads((ctx.run_dir / "results.json").read_text()))


@pytest.fixture(scope="module")
def readouts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """{engine/shape: results.json}: both shapes loaded into one warehouse per engine."""
    root = tmp_path_factory.mktemp("cookie_cats")
    frame = cookie_cats_frame()
    exposures, events = contract_rows(frame)
    tables = with_table_sources(root / "tables")
    admin = Warehouse(POSTGRES_URL)
    schema = f"ab_cookie_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    urls = {
        "duckdb": f"duckdb:///{root / 'warehouse.duckdb'}",
        "postgres": f"{POSTGRES_URL}?options=-csearch_path%3D{schema}",
    }
    try:
        runs = {}
        for engine, url in urls.items():
            table_schema = schema if engine == "postgres" else None
            load_cookie_cats(url, table_schema, frame)
            warehouse = Warehouse(url)
            create_contract_tables(warehouse, table_schema or "")
            insert_rows(warehouse, exposures, events, table_schema or "")
            if engine == "postgres":
                admin.execute([f"ANALYZE {schema}.exposures", f"ANALYZE {schema}.events"])
            runs[f"{engine}/sql"] = readout(EXAMPLE, url, root / engine / "sql")
            runs[f"{engine}/tables"] = readout(tables, url, root / engine / "tables")
        yield runs
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        dispose_all()


def findings(results: dict[str, Any]) -> dict[str, Any]:
    """What a readout found: decision, checks, gates' verdicts and counts, every metric."""
    gates = results["gates"]
    return {
        "decision": results["decision"],
        "decision_reason": results["decision_reason"],
        "checks": results["checks"],
        "srm": gates["srm"]["counts"],
        "gates_passed": {name: (gate or {}).get("passed") for name, gate in gates.items()},
        "data_quality": [(c["name"], c["passed"]) for c in gates["data_quality"]["checks"]],
        "metrics": results["metrics"],
    }


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_sql_sources_read_out_exactly_like_the_contract_tables(
    readouts: dict[str, dict[str, Any]], engine: str
) -> None:
    through_sql, through_tables = readouts[f"{engine}/sql"], readouts[f"{engine}/tables"]
    assert findings(through_sql) == findings(through_tables)


def test_the_two_engines_agree(readouts: dict[str, dict[str, Any]]) -> None:
    duckdb, postgres = findings(readouts["duckdb/sql"]), findings(readouts["postgres/sql"])
    assert duckdb["srm"] == postgres["srm"] and duckdb["decision"] == postgres["decision"]
    assert same(duckdb, postgres) == []


@pytest.mark.parametrize("run", ["duckdb/sql", "postgres/sql"])
def test_the_readout_has_the_published_numbers(
    readouts: dict[str, dict[str, Any]], run: str
) -> None:
    results = readouts[run]
    assert results["gates"]["srm"]["counts"] == {"gate_30": 44_700, "gate_40": 45_489}
    assert all(gate is None or gate["passed"] for gate in results["gates"].values())
    d7 = results["metrics"]["retention_7d"]
    assert d7["arms"]["gate_30"]["value"] == pytest.approx(8_502 / 44_700)  # 19.02%
    assert d7["arms"]["gate_40"]["value"] == pytest.approx(8_279 / 45_489)  # 18.20%
    assert round(100 * d7["arms"]["gate_30"]["value"], 2) == 19.02
    assert round(100 * d7["arms"]["gate_40"]["value"], 2) == 18.20
    d1 = results["metrics"]["retention_1d"]
    assert d1["arms"]["gate_30"]["value"] == pytest.approx(20_034 / 44_700)
    assert d1["arms"]["gate_40"]["value"] == pytest.approx(20_119 / 45_489)
    # Two-proportion z-test on the published day-7 counts: p = 0.0016; gate_40 is worse.
    comparison = d7["comparisons"]["gate_40"]
    assert comparison["p_value"] == pytest.approx(0.00155, abs=5e-5)
    assert results["decision"] == "STOP"


def test_the_example_config_is_valid_against_the_loaded_table(tmp_path: Path) -> None:
    """`validate --warehouse` runs both queries with LIMIT 0 and finds nothing to say."""
    from ab_pipeline.devtools.lint import check_source_queries

    config = load_config(EXAMPLE)
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    load_cookie_cats(url)
    assert check_source_queries(config, Warehouse(url)) == []
