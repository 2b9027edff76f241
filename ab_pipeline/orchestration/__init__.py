"""How readouts are run: the Airflow DAG factory, the command line, backfills."""
