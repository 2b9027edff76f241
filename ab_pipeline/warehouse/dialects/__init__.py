"""The engines the pipeline runs on, one module each; a new engine is a new module here.

Each module defines `DIALECT`, an instance of a `base.Dialect` subclass. `dialect_for(url)`
finds the one whose `schemes` name the URL's scheme; `dialect_named(name)` by its name.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from ab_pipeline.warehouse.dialects.base import Dialect, embedded, recording

__all__ = [
    "Dialect",
    "all_dialects",
    "dialect_for",
    "dialect_for_conn_type",
    "dialect_named",
    "embedded",
    "recording",
]


@functools.cache
def all_dialects() -> tuple[Dialect, ...]:
    """Every engine module's DIALECT, found by listing this package (cheap: no engine's
    driver is imported)."""
    from ab_pipeline.core import sql_safety

    found = []
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            dialect = importlib.import_module(f"{__name__}.{module.name}").DIALECT
            found.append(dialect)
            sql_safety.ENGINE_DIALECTS.add(dialect.sqlglot_name)
    return tuple(sorted(found, key=lambda d: d.name))


def scheme_of(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def dialect_for(url: str) -> Dialect:
    """The engine a warehouse URL names; ValueError listing the known schemes otherwise."""
    scheme = scheme_of(url)
    for dialect in all_dialects():
        if scheme in dialect.schemes:
            return dialect
    known = ", ".join(s for d in all_dialects() for s in d.schemes)
    raise ValueError(f"warehouse URL scheme {scheme!r} is not supported (known: {known})")


def dialect_for_conn_type(conn_type: str) -> Dialect | None:
    """The engine an Airflow connection type names, or None."""
    for dialect in all_dialects():
        if conn_type in dialect.conn_types:
            return dialect
    return None


def dialect_named(name: str) -> Dialect:
    for dialect in all_dialects():
        if name == dialect.name or name in dialect.schemes:
            return dialect
    raise ValueError(f"no dialect named {name!r}")
