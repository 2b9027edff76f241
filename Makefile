# The two commands a new user needs: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install bq-emulator browser demo test test-fast lint typecheck clean

install: $(STAMP)

# Everything comes from the pinned lock; the project itself is installed without dependencies.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: install
	$(BIN)/ab-pipeline demo

# Two pytest-xdist workers, one per core: most tests wait on Airflow processes, servers and
# warehouses; tests sharing a costly session fixture stay on one worker (tests/conftest.py).
# `make test TEST_WORKERS=0` runs the suite in one process.
TEST_WORKERS ?= 2

test: install browser bq-emulator
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# The suite without the tests marked `slow` (real Airflow DAG runs, api-server, Celery stack,
# Chromium): quick feedback while developing; `make test` stays what CI runs.
test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow"

# The BigQuery emulator the BigQuery tests start (tests/bigquery_server.py): its own venv, since
# it pins sqlglot and DuckDB versions the main lock cannot share. DuckDB loads the emulator's
# spatial extension from $$HOME/.duckdb; the server runs with HOME=$(BQ_HOME), where the
# extension shipped by the duckdb-extension-spatial package is linked (no download).
BQ_VENV := .venv-bq
BQ_HOME := $(BQ_VENV)/home
BQ_STAMP := $(BQ_VENV)/.installed

bq-emulator: $(BQ_STAMP)

$(BQ_STAMP): requirements-bq-emulator.lock
	test -x $(BQ_VENV)/bin/python || $(PYTHON) -m venv $(BQ_VENV)
	$(BQ_VENV)/bin/python -m pip install --quiet -r requirements-bq-emulator.lock
	mkdir -p $(BQ_HOME)/.duckdb/extensions/v1.5.5/linux_amd64
	ln -sf "$$($(BQ_VENV)/bin/python -c 'import duckdb_extension_spatial as m, pathlib; \
		print(next(pathlib.Path(m.__file__).parent.glob("extensions/v1.5.5/spatial.*")))')" \
		$(BQ_HOME)/.duckdb/extensions/v1.5.5/linux_amd64/spatial.duckdb_extension
	touch $(BQ_STAMP)

# The brief's browser tests drive Debian's chromium; install it only when it is missing
# (CI runs `make test` as root, so apt-get needs no sudo there).
browser:
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y --no-install-recommends chromium)

lint: install
	$(BIN)/ruff check ab_pipeline dags plugins tests
	$(BIN)/ruff format --check ab_pipeline dags plugins tests

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
