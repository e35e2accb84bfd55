# The two commands a newcomer needs: `make demo` and `make test`. Both bootstrap .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-floor unit lint typecheck deploy-check bench faults cluster clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	bash scripts/validate-deploy.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The declared lower bounds are true: the lowest direct versions (constraints/floors.txt) in a
# venv of their own, then the unit tests.
FLOOR_VENV := .venv-floor
test-floor:
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install --quiet --constraint constraints/floors.txt -e '.[dev]'
	$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/unit

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/simulator

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

deploy-check: $(STAMP)
	bash scripts/validate-deploy.sh

bench: $(STAMP)
	$(BIN)/python -m bench

faults: $(STAMP)
	$(BIN)/python -m pytest -q tests/faults -m "faults or slow_faults" --run-slow-faults

# A three-node RabbitMQ cluster of its own on 5701-5703 (docs/cluster.md); a few minutes.
cluster: $(STAMP)
	$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/cluster --run-cluster --basetemp=/tmp/rapidly-cluster-tests

clean:
	rm -rf $(VENV) $(FLOOR_VENV) .pytest_cache .mypy_cache .ruff_cache
