"""Airflow DAG file: one DAG per experiment config in dags/experiments/*.yaml.

The work is in ab_pipeline.dag_factory; this file stays thin and fast to parse. Under
`ab-pipeline run CONFIG`, $AB_PIPELINE_ONLY_CONFIG makes it build that one config's DAG instead.
"""

from pathlib import Path

from ab_pipeline.dag_factory import dag_file_dags

globals().update(dag_file_dags(Path(__file__).resolve().parent / "experiments"))
