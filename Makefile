# Two commands for a fresh machine: `make serve` and `make test` (both install what they need).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint bench clean

install: $(STAMP)  ## create .venv, install pinned dependencies, assemble + verify the models

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	$(BIN)/voicebot models
	@touch $(STAMP)

serve: install  ## start the server on http://127.0.0.1:8000 (Ctrl-C stops it)
	$(BIN)/voicebot serve $(ARGS)

test: install  ## run the whole test suite (real engines, real speech)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install  ## ruff, mypy, and the layer contracts of docs/architecture.md (import-linter)
	$(BIN)/ruff check voicebot tests scripts
	$(BIN)/mypy voicebot
	$(BIN)/lint-imports

bench: install  ## voice-to-voice and barge-in latency through the official SDK
	$(BIN)/python scripts/bench_latency.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
