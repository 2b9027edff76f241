# The ab-pipeline image: Airflow 3.3 and the pipeline from the same requirements.lock that
# `make install` uses, so the containers run exactly what the tests ran.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/airflow \
    AB_PIPELINE_HOME=/opt/ab-pipeline

# Airflow's containers conventionally run as uid 50000; volumes are writable by it.
RUN useradd --create-home --uid 50000 --gid 0 --home-dir /opt/airflow airflow

WORKDIR /opt/ab-pipeline
COPY requirements.lock pyproject.toml ./
RUN pip install --requirement requirements.lock
COPY ab_pipeline ./ab_pipeline
# expectations/ and templates/ are package data (pyproject.toml maps them into the package), so
# they are there before the install. Baked in for `docker run` without mounts; docker-compose.yaml
# mounts the working copies over these so a template or suite change needs no rebuild.
COPY expectations ./expectations
COPY templates ./templates
# The project itself without dependencies (everything came from the lock), editable: the code
# finds expectations/ and templates/ next to the package, where compose mounts them.
RUN pip install --no-deps --editable . && python -c "import ab_pipeline, airflow.sdk"

COPY dags ./dags
COPY plugins ./plugins
COPY simulations ./simulations

USER airflow
WORKDIR /opt/airflow
CMD ["airflow", "version"]
