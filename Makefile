# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint schemas install bench clean

install: $(STAMP)

# Re-installs when pyproject.toml changes. torch/torchvision come from the machine's local
# disk through pip's configured constraints (see README).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/graphopt run docs/examples/resnet18_demo.yaml

test: $(STAMP)
	$(BIN)/ruff check graphopt passes tests docs/examples
	$(BIN)/ruff format --check graphopt passes tests docs/examples
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check graphopt passes tests

schemas: $(STAMP)
	$(BIN)/python -m graphopt.schema_export

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/pruning.py
	$(BIN)/python bench/low_rank.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
