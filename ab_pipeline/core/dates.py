"""Experiment dates are UTC days."""

from __future__ import annotations

from datetime import date, datetime, tzinfo


def midnight(day: date, tz: tzinfo | None = None) -> datetime:
    """The start of `day`: naive, as the warehouse's UTC timestamps are, or in `tz` (Airflow
    refuses naive datetimes: pass `UTC`)."""
    return datetime(day.year, day.month, day.day, tzinfo=tz)
