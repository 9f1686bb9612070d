# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint schemas install system-deps bench clean

install: $(STAMP)

# Re-installs when pyproject.toml changes. torch/torchvision come from the machine's local
# disk through pip's configured constraints (see README).
$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The aarch64 target links with Debian's cross gcc, and the report.html test renders the page
# in Debian's headless Chromium. Installed when we can (root + apt-get); otherwise those tests
# skip with a reason.
system-deps:
	@command -v aarch64-linux-gnu-gcc >/dev/null || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q gcc-aarch64-linux-gnu >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q gcc-aarch64-linux-gnu >/dev/null; }; }; \
	} || echo "warning: aarch64-linux-gnu-gcc not installed; aarch64 tests will skip"
	@command -v chromium >/dev/null || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get install -y -q chromium >/dev/null 2>&1; \
	} || echo "warning: chromium not installed; the report's browser test will skip"

demo: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,demo]'
	$(BIN)/python docs/examples/minilm/demo.py

test: $(STAMP)
	$(BIN)/ruff check graphopt passes tests docs/examples
	$(BIN)/ruff format --check graphopt passes tests docs/examples
	$(BIN)/python -m pytest -q
	./.ci/wheel_smoke.sh $(VENV)

lint: $(STAMP)
	$(BIN)/ruff check graphopt passes tests

schemas: $(STAMP)
	$(BIN)/python -m graphopt.schema_export

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m pytest -q -m slow
	$(BIN)/python bench/pruning.py
	$(BIN)/python bench/pruning_selection.py
	$(BIN)/python bench/group_sparse.py
	$(BIN)/python bench/low_rank.py
	$(BIN)/python bench/net2net.py
	$(BIN)/python bench/fuzz_passes.py
	$(BIN)/python bench/compile.py
	$(BIN)/python bench/e2e_cifar.py
	$(BIN)/python bench/kernels.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
