# One command sets up and runs the default grid (`make demo`); one sets up and runs the tests (`make test`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= true

.PHONY: setup demo test test-fast lint bench slurm-up slurm-down clean-results

setup: $(VENV)/.installed

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

# The data first, on the terminal (a progress bar): without a mirror it is downloaded into the cache.
demo: setup
	$(BIN)/metapretrain data fetch config/config.yaml
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)
	$(BIN)/metapretrain status config/config.yaml

# The full suite: unit tests, slow end-to-end tests and, when the local SLURM
# cluster can be started (root on Debian/Ubuntu), the SLURM tests on a real cluster.
test: setup
	@scripts/local-slurm.sh start || echo "local SLURM cluster not started: SLURM tests will be skipped"
	@status=0; PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q || status=$$?; \
	 scripts/local-slurm.sh stop >/dev/null 2>&1 || true; exit $$status

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

lint: setup
	$(BIN)/ruff check src tests bench

bench: setup
	$(BIN)/python bench/run_all.py

slurm-up:
	scripts/local-slurm.sh start

slurm-down:
	scripts/local-slurm.sh stop

clean-results:
	rm -rf results/*/ .snakemake
