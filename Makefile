# The two commands a newcomer needs: `make run` and `make test`. `make test` bootstraps
# .venv, `make run` .venv-run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint system-deps standin bench clean

# `make run` has an environment of its own, without what only the tests need (the example
# backend plugin among them).
RUN_VENV := .venv-run
RUN_STAMP := $(RUN_VENV)/.installed-stamp

$(STAMP): setup.cfg pyproject.toml tests/plugin_example/setup.cfg
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[docker,kubernetes,serve,gateway,test]' -e tests/plugin_example
	touch $@

$(RUN_STAMP): setup.cfg pyproject.toml
	test -x $(RUN_VENV)/bin/python || $(PYTHON) -m venv $(RUN_VENV)
	$(RUN_VENV)/bin/python -m pip install -q --upgrade pip
	$(RUN_VENV)/bin/python -m pip install -q -e '.[docker,kubernetes,serve,gateway]'
	touch $@

## run: serve ovas on http://$(HOST):$(PORT) with the Docker backend and the sample catalog
run: $(RUN_STAMP)
	$(RUN_VENV)/bin/ovas serve --host $(HOST) --port $(PORT)

## test: lint, check the dependency direction, and run every test
test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## system-deps: as root, install the Debian packages the tests drive (Docker, Chromium...)
system-deps:
	@bash config/system-deps.sh

## standin: build the stand-in Kit image (needs a Docker daemon)
standin:
	bash config/standin/build.sh

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(RUN_VENV) .pytest_cache .ruff_cache *.egg-info .tools
