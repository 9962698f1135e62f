# Everything runs from a virtual environment in .venv, so a fresh machine needs only
# Python 3.11+ and make. Targets re-install only when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install demo test lint typecheck pytest openapi bench bench-quick clean

help:
	@echo "make demo       set up, then run the demo: workers share a token and lease unique slots"
	@echo "make test       set up, then ruff + mypy --strict + pytest (what CI runs)"
	@echo "make openapi    regenerate openapi.json from the app"
	@echo "make bench      run the benchmark harness (minutes); make bench-quick for < 60 s"
	@echo "make clean      remove the virtual environment and caches"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ephemeral-broker run --log-level warning -- $(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -n 2

test: lint typecheck pytest

# Through a temporary file: a generation that fails leaves openapi.json as it was.
openapi: $(STAMP)
	$(BIN)/python -m ephemeral_broker.openapi > openapi.json.tmp
	mv openapi.json.tmp openapi.json

bench: $(STAMP)
	$(BIN)/python -m bench --json bench-results.json

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick --json bench-results.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache build *.egg-info
