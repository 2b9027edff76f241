"""Deterministic assignment: stable, on-allocation, re-randomised by a version bump, and the
same bucket in Python, DuckDB and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import chisquare

from ab_pipeline.core.assignment import (
    BUCKETS,
    arm_case_sql,
    assign,
    assign_many,
    boundaries,
    bucket_of,
    bucket_sql,
    digest_sql,
    salt_prefix,
)
from ab_pipeline.orchestration.cli import main
from ab_pipeline.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[2]
REFUND = REPO / "dags" / "experiments" / "refund-query-rewrite.yaml"
THREE_WAY = {"control": 0.5, "small": 0.2, "large": 0.3}
IDS = [f"user-{n}" for n in range(100_000)]


def test_same_unit_same_arm_across_processes() -> None:
    code = (
        "from ab_pipeline.core.assignment import assign_many; "
        "print(','.join(assign_many('exp', 3, [f'u{n}' for n in range(200)], "
        "{'control': 0.5, 'small': 0.2, 'large': 0.3})))"
    )
    # Fresh interpreters with different hash seeds: Python's salted hash() must play no part.
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            cwd=REPO,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    here = ",".join(assign_many("exp", 3, [f"u{n}" for n in range(200)], THREE_WAY))
    assert outputs == {here}


def test_allocation_holds_within_sampling_error_on_100k_ids() -> None:
    arms = assign_many("alloc-test", 1, IDS, THREE_WAY)
    observed = [arms.count(arm) for arm in THREE_WAY]
    expected = [share * len(IDS) for share in THREE_WAY.values()]
    assert chisquare(observed, expected).pvalue > 0.001
    uneven = assign_many("alloc-test", 1, IDS, {"a": 0.9, "b": 0.1})
    assert chisquare([uneven.count("a"), uneven.count("b")], [90_000, 10_000]).pvalue > 0.001


def test_buckets_are_uniform() -> None:
    buckets = [bucket_of("uniform", 1, i) for i in IDS]
    assert min(buckets) >= 0 and max(buckets) < BUCKETS
    tenths = [0] * 10
    for b in buckets:
        tenths[b * 10 // BUCKETS] += 1
    assert chisquare(tenths).pvalue > 0.001


def test_a_version_bump_re_randomises() -> None:
    v1 = assign_many("bump", 1, IDS[:20_000], {"control": 0.5, "treatment": 0.5})
    v2 = assign_many("bump", 2, IDS[:20_000], {"control": 0.5, "treatment": 0.5})
    assert v1 == assign_many("bump", 1, IDS[:20_000], {"control": 0.5, "treatment": 0.5})
    same = sum(a == b for a, b in zip(v1, v2, strict=True)) / len(v1)
    assert 0.48 < same < 0.52  # independent: half keep their arm by chance, not all


def test_boundaries_follow_config_order_and_end_at_buckets() -> None:
    assert boundaries(THREE_WAY) == [("control", 5000), ("small", 7000), ("large", BUCKETS)]
    assert assign("k", 1, "u", {"only": 0.999999, "rest": 0.000001}) == "only"


def _sql_arms(warehouse: Warehouse, ids: list[str], schema: str = "") -> dict[str, tuple[int, str]]:
    table = f"{schema}.ids" if schema else "ids"
    warehouse.execute([f"DROP TABLE IF EXISTS {table}", f"CREATE TABLE {table} (unit_id TEXT)"])
    from sqlalchemy import text

    with warehouse.connect() as connection:
        connection.execute(text(f"INSERT INTO {table} VALUES (:u)"), [{"u": u} for u in ids])
    case, params = arm_case_sql("b.bucket", THREE_WAY)
    rows = warehouse.query(
        f"SELECT b.unit_id, b.bucket, {case} AS arm FROM (SELECT d.unit_id, "
        f"{bucket_sql('d.digest')} AS bucket FROM (SELECT unit_id, {digest_sql('unit_id')} "
        f"AS digest FROM {table}) d) b",
        {**params, "assign_prefix": salt_prefix("sql-parity", 7)},
    )
    return {row["unit_id"]: (int(row["bucket"]), row["arm"]) for row in rows}


# Ids with non-ASCII text, quotes and separators: md5 is over the UTF-8 bytes everywhere.
PARITY_IDS = [f"acct-{n}" for n in range(3000)] + ["", "é-ü", "a:b", "o'neil", "  x  ", "日本"]


def _python_arms(ids: list[str]) -> dict[str, tuple[int, str]]:
    return {u: (bucket_of("sql-parity", 7, u), assign("sql-parity", 7, u, THREE_WAY)) for u in ids}


def test_duckdb_computes_the_same_buckets(duckdb_warehouse: Warehouse) -> None:
    assert _sql_arms(duckdb_warehouse, PARITY_IDS) == _python_arms(PARITY_IDS)


def test_postgres_computes_the_same_buckets(postgres_schema: tuple[Warehouse, str]) -> None:
    warehouse, schema = postgres_schema
    assert _sql_arms(warehouse, PARITY_IDS, schema) == _python_arms(PARITY_IDS)


def test_cli_assign_prints_each_units_arm(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hashed = tmp_path / "refund-query-rewrite.yaml"  # `assign` refuses `assignment: external`
    hashed.write_text(REFUND.read_text() + "\nassignment: hash\n")
    assert main(["assign", str(hashed), "acct-1", "acct-2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [
        f"{u}\t{assign('refund-query-rewrite', 1, u, {'control': 0.5, 'treatment': 0.5})}"
        for u in ("acct-1", "acct-2")
    ]
    assert lines == expected
