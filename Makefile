# One target per habit. `make install` builds .venv with the dev tools; the rest use it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install test lint bench smoke clean

install: $(BIN)/binance-extractor

$(BIN)/binance-extractor: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
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
