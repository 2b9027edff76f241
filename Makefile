# The two commands a new user needs: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint typecheck clean

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

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check ab_pipeline dags plugins tests
	$(BIN)/ruff format --check ab_pipeline dags plugins tests

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
