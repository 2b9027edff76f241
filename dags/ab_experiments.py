"""Airflow DAG file: one DAG per experiment config in dags/experiments/*.yaml.

The work is in ab_pipeline.dag_factory; this file stays thin and fast to parse.
"""

from pathlib import Path

from ab_pipeline.dag_factory import build_dags

globals().update(build_dags(Path(__file__).resolve().parent / "experiments"))
