"""Airflow DAG file: one DAG per experiment config in dags/experiments/*.yaml (see ab_pipeline.dag_factory)."""

from pathlib import Path

from ab_pipeline.dag_factory import build_dags

globals().update(build_dags(Path(__file__).resolve().parent / "experiments"))
