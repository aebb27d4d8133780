# Developer entry points. `make test` is what CI runs (through .ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint

setup: $(STAMP)

# Re-install only when the project's dependencies or its C extensions change.
$(STAMP): pyproject.toml eshram_locator/_collection_reader.c eshram_locator/domain/_history_merge.c \
		eshram_locator/postgres/_append_parameters.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: setup
	scripts/test.sh

demo: setup
	$(BIN)/eshram-locator demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
