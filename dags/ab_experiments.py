"""Airflow DAG file: one DAG per experiment config in dags/experiments/*.yaml.

The work is in ab_pipeline.orchestration.dag_factory; this file stays thin and fast to parse. Parsed
by
`ab-pipeline run CONFIG` (in its own process), it builds that one config's DAG instead.
"""

from pathlib import Path

from ab_pipeline.orchestration.dag_factory import dag_file_dags

globals().update(dag_file_dags(Path(__file__).resolve().parent / "experiments"))
