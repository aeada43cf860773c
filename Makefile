# Two front-door commands (see README):  `make demo`  and  `make test`.
# Idempotent: the venv is reused; dependencies are reinstalled only when pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.fvlm-installed
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: setup demo test test-all lint clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	# torch FIRST: the CPU wheel on this machine (GPU users: TORCH_SPEC="torch==2.13.0 --index-url <cuda index>")
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev,dask]"
	# PyPI 'argparse' (batchgenerators -> unittest2) shadows the stdlib inside Prefect's server
	$(BIN)/python -m pip uninstall -q -y argparse || true
	touch $(STAMP)

demo: setup
	$(BIN)/fvlm demo

test: setup
	$(BIN)/python -m pytest -m "not slow" -q

test-all: setup
	$(BIN)/python -m pytest -q

# ruff (pyflakes, pycodestyle, isort, bugbear, pyupgrade) over the tree; mypy on core/ and training/
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean-demo:
	rm -rf demo_work
