"""Numbers as the brief and the decision say them: shares, percentage points, metric units.

Light on purpose (no jinja2): metric kinds (`ab_pipeline.metrics`) format their values with
these, and `ab_pipeline.report.brief` re-exports them for its templates.
"""

from __future__ import annotations

from typing import Any

MISSING = "—"


def fmt_count(n: Any) -> str:
    return MISSING if n is None else f"{int(n):,}"


def fmt_pct(x: float | None, digits: int = 1, signed: bool = False) -> str:
    if x is None:
        return MISSING
    return f"{clean(x * 100, digits):{'+' if signed else ''}.{digits}f}%"


def fmt_pp(x: float | None, digits: int = 1, signed: bool = True) -> str:
    """A difference of proportions, in percentage points: 0.04 -> '+4.0 pp'."""
    if x is None:
        return MISSING
    return f"{clean(x * 100, digits):{'+' if signed else ''}.{digits}f} pp"


def fmt_p(p: float | None) -> str:
    if p is None:
        return MISSING
    return f"{p:.1e}" if p < 1e-4 else f"{p:.3g}"


def fmt_num(x: float | None, signed: bool = False, digits: int | None = None) -> str:
    """A value in the metric's own unit; precision suits its size unless `digits` is given."""
    if x is None:
        return MISSING
    sign = "+" if signed else ""
    if digits is None:
        digits = 0 if float(x).is_integer() else digits_for(x)
    return f"{clean(x, digits):{sign},.{digits}f}"


def digits_for(scale: float | None) -> int:
    """Decimals that show a number of this size without false precision."""
    scale = abs(scale or 0.0)
    return 0 if scale >= 100 else 1 if scale >= 10 else 2 if scale >= 1 else 3


def clean(value: float, digits: int) -> float:
    # Rounds away "-0.0" so a null effect never prints with a minus sign.
    return round(value, digits) + 0.0
