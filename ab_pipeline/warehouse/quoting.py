"""The one quoting helper for generated identifiers (canonical SQL: double quotes; each
dialect's rendering turns them into its own quoting)."""

from __future__ import annotations

import re

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote_ident(name: str) -> str:
    """Validate and return an identifier (optionally schema-qualified) for interpolation.

    Quoted, so a capitalised name keeps its case on every engine (unquoted, PostgreSQL folds
    it to lower case and Snowflake to upper case)."""
    parts = name.split(".")
    if not parts or not all(_IDENT.match(p) for p in parts):
        raise ValueError(f"{name!r} is not a safe SQL identifier")
    return ".".join(f'"{p}"' for p in parts)
