# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing and are fast after.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Reinstall only when the project's dependencies change.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
export CHUNKWISE_HOME ?= $(CURDIR)/.chunkwise
PIP_FLAGS := --disable-pip-version-check --no-input -q

.PHONY: install demo test lint format ui sim bench clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[test]' 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	rm -f $(VENV)/.installed-*
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -n 2

demo: $(STAMP)
	$(BIN)/python -m scripts.demo $(if $(PIPELINE),--pipeline "$(PIPELINE)") $(if $(DATA),--data "$(DATA)") $(if $(CHUNK),--chunk-size "$(CHUNK)") $(if $(MODE),--mode "$(MODE)")

sim: $(STAMP)
	$(BIN)/python -m llm_sim serve --host 127.0.0.1 --port $(or $(PORT),8765)

ui: $(STAMP)
	$(BIN)/python -m scripts.ui

bench: $(STAMP)
	$(BIN)/python bench/ratelimit.py

clean:
	rm -rf $(VENV) .chunkwise .pytest_cache .ruff_cache
