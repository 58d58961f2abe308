# Two commands matter: `make run` (set up + run the pipeline) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

# DVC stages call `cesagram`, `dvc` and friends from the virtual environment.
export PATH := $(CURDIR)/$(BIN):$(PATH)

# No telemetry, no hub look-ups: everything runs offline.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export BENTOML_DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_EVALUATE_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: run test install install-dev lint typecheck pytest clean help

help:
	@echo "make run   - create .venv, install, run the pipeline (dvc repro) on the default data"
	@echo "make test  - install test tools, run ruff, mypy and the whole test suite"

# torch first (the local CPU wheel), then the project under the same pins.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed
install-dev: $(BIN)/.installed-dev

run: install
	$(BIN)/dvc repro
	$(BIN)/cesagram status

PYTHON_DIRS := $(wildcard src tests benchmarks serving)

lint: install-dev
	$(BIN)/ruff check $(PYTHON_DIRS)
	$(BIN)/ruff format --check $(PYTHON_DIRS)

typecheck: install-dev
	$(BIN)/mypy

pytest: install-dev
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
