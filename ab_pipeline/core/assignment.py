"""Deterministic assignment: the function product code calls to put a unit in an arm.

arm = f(experiment key, version, unit id), with no state and no randomness:

    digest = md5("<key>:<version>:<unit id>")            (UTF-8, lowercase hex)
    bucket = int(first 7 hex digits, 16) mod 10,000      (0 .. 9,999)
    arm    = the first arm (in config order) whose cumulative allocation boundary exceeds bucket,
             boundaries = round(cumulative share * 10,000)

Why md5 and not SHA-256 (or Python's `hash()`, which is salted per process): the pipeline must
recompute every enrolled unit's arm *in the warehouse* (the assignment gate), and md5() is the
one digest both DuckDB and PostgreSQL have built in. It is used as a uniform mixer, not for
security. Seven hex digits (28 bits) keep every intermediate of the SQL below 2^31, so the same
expression works with plain integers in any dialect; the modulo bias of 2^28 mod 10,000 is below
1e-4 of a bucket. Allocations are honoured to 1/10,000 (0.01 percentage points).

The version is part of the salt: bumping it re-randomises every unit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

BUCKETS = 10_000
HEX_DIGITS = 7
_HEX = "0123456789abcdef"


def salt_text(key: str, version: int, unit_id: str) -> str:
    return f"{key}:{version}:{unit_id}"


def bucket_of(key: str, version: int, unit_id: str) -> int:
    """The unit's bucket in [0, BUCKETS); identical to `bucket_sql` in every warehouse."""
    text = salt_text(key, version, unit_id).encode()
    digest = hashlib.md5(text, usedforsecurity=False).hexdigest()
    return int(digest[:HEX_DIGITS], 16) % BUCKETS


def boundaries(allocation: Mapping[str, float]) -> list[tuple[str, int]]:
    """(arm, exclusive upper bucket) in config order; the last arm always ends at BUCKETS."""
    arms = list(allocation)
    if not arms:
        raise ValueError("an allocation needs at least one arm")
    total = sum(allocation.values())
    result, cumulative = [], 0.0
    for arm in arms[:-1]:
        cumulative += allocation[arm] / total
        result.append((arm, round(cumulative * BUCKETS)))
    result.append((arms[-1], BUCKETS))
    return result


def arm_for_bucket(bucket: int, allocation: Mapping[str, float]) -> str:
    for arm, upper in boundaries(allocation):
        if bucket < upper:
            return arm
    raise AssertionError("unreachable: the last boundary is BUCKETS")


def assign(key: str, version: int, unit_id: str, allocation: Mapping[str, float]) -> str:
    """The arm of one unit: stable across processes and machines; a new version re-randomises."""
    return arm_for_bucket(bucket_of(key, version, unit_id), allocation)


def assign_many(
    key: str, version: int, unit_ids: Iterable[str], allocation: Mapping[str, float]
) -> list[str]:
    bounds = boundaries(allocation)
    arms = []
    for unit_id in unit_ids:
        bucket = bucket_of(key, version, unit_id)
        arms.append(next(arm for arm, upper in bounds if bucket < upper))
    return arms


# --- the same function in SQL -------------------------------------------------------------------


def digest_sql(unit_expr: str, prefix_param: str = ":assign_prefix") -> str:
    """md5 of the salt text in SQL; bind `prefix_param` to `salt_prefix(key, version)`."""
    return f"md5({prefix_param} || CAST({unit_expr} AS VARCHAR))"


def salt_prefix(key: str, version: int) -> str:
    return salt_text(key, version, "")


def bucket_sql(digest_expr: str) -> str:
    """The bucket from a digest column (compute `digest_sql` once in a subquery, then this).

    Hex digits are decoded with strpos() over '0123456789abcdef' in Horner form rather than a
    dialect's own hex cast (PostgreSQL `::bit(32)`, DuckDB `'0x..'::UBIGINT`): one expression,
    the same in DuckDB and PostgreSQL (and any SQL with md5, substr and strpos).
    """
    value = ""
    for i in range(1, HEX_DIGITS + 1):
        digit = f"(strpos('{_HEX}', substr({digest_expr}, {i}, 1)) - 1)"
        value = digit if i == 1 else f"({value}) * 16 + {digit}"
    return f"(({value}) % {BUCKETS})"


def arm_case_sql(
    bucket_expr: str, allocation: Mapping[str, float]
) -> tuple[str, dict[str, object]]:
    """CASE expression mapping a bucket column to its arm, with its bound parameters."""
    params: dict[str, object] = {}
    whens = []
    for i, (arm, upper) in enumerate(boundaries(allocation)):
        params[f"assign_arm{i}"] = arm
        params[f"assign_upper{i}"] = upper
        whens.append(f"WHEN {bucket_expr} < :assign_upper{i} THEN :assign_arm{i}")
    return f"CASE {' '.join(whens)} END", params
