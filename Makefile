# One target per habit. `make install` builds .venv with the dev tools; the rest use it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The dev tools are installed once per pyproject.toml: a venv made by `pip install .` alone has none.
DEV_STAMP := $(VENV)/.dev-tools-installed
PYTEST_ARGS ?=

.PHONY: install test lint bench smoke clean

install: $(DEV_STAMP)

$(DEV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(BIN)/pytest -n 2 -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check extractor utils tests
	$(BIN)/ruff format --check extractor utils tests
	$(BIN)/mypy

bench: install
	$(BIN)/python -m tests.bench

smoke: install
	$(BIN)/python -m tests.smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
