# The two commands a new user needs: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test test-fast lint typecheck clean

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

test: install browser
	$(BIN)/python -m pytest

# The suite without the tests marked `slow` (real Airflow DAG runs, api-server, Celery stack,
# Chromium): quick feedback while developing; `make test` stays what CI runs.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

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
