"""Backfills: one readout per date, one email (for the latest date with data)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

from ab_pipeline.core.config import load_config
from ab_pipeline.orchestration.backfill import latest_data_date, should_email
from ab_pipeline.warehouse import Warehouse
from tests.warehouse_fixtures import create_contract_tables, insert_rows

CONFIG = Path(__file__).resolve().parents[2] / "dags" / "experiments" / "refund-query-rewrite.yaml"
LATEST = date(2026, 5, 31)


def test_a_backfill_emails_only_for_the_latest_date_with_data() -> None:
    days = [date(2026, 5, d) for d in (29, 30, 31)]
    sends = [should_email("backfill", day, LATEST)[0] for day in days]
    assert sends == [False, False, True]
    assert "no email" in should_email("backfill", days[0], LATEST)[1]


def test_scheduled_and_manual_runs_always_email() -> None:
    for run_type in ("scheduled", "manual"):
        assert should_email(run_type, date(2026, 5, 10), LATEST)[0]


def test_a_backfill_without_data_emails_nobody() -> None:
    assert not should_email("backfill", LATEST, None)[0]


def test_latest_data_date_is_the_last_exposure_capped_at_end(
    duckdb_warehouse: Warehouse,
) -> None:
    config = load_config(CONFIG)
    create_contract_tables(duckdb_warehouse)
    assert latest_data_date(duckdb_warehouse, config) is None
    row = (config.key, "u1", "control", datetime(2026, 5, 20, 13), False, False, None)
    insert_rows(duckdb_warehouse, [row], [])
    assert latest_data_date(duckdb_warehouse, config) == date(2026, 5, 20)
    late = (config.key, "u2", "control", datetime(2026, 6, 9, 1), False, False, None)
    insert_rows(duckdb_warehouse, [late], [])
    assert latest_data_date(duckdb_warehouse, config) == config.end


def test_after_the_final_readout_only_a_manual_run_emails() -> None:
    # A scheduled or backfill run after the run that read out `end` reads out `end` again:
    # stakeholders already have that final brief.
    for run_type in ("scheduled", "backfill"):
        send, why = should_email(run_type, LATEST, LATEST, past_final=True)
        assert not send and "after the final readout" in why
    assert should_email("backfill", LATEST, LATEST, past_final=False)[0]
    assert should_email("manual", LATEST, LATEST, past_final=True)[0]  # someone asked for it
