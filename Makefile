# Everything starts from nothing but python3: `make test` and `make demo` build their venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint format typecheck check check-floors clean demo bench soak

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The suite on every core (pytest-xdist), with branch coverage of orchestrator/ printed and
# held to the floor in pyproject.toml ([tool.coverage.report] fail_under). Commands run
# in-process; the few real processes are marked 'subprocess'. The soak is `make soak`.
# PYTEST_ARGS adds options (e.g. --durations=20).
test: install
	$(BIN)/python -m pytest -q -n auto --dist worksteal --cov --cov-report=term-missing:skip-covered $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy orchestrator

check: lint typecheck test

# Honest floors: every dependency at the lower bound pyproject.toml gives it (tools/floors.py
# writes the constraints), in a venv of its own: the linters at their floors, and the in-process
# tests on the libraries at theirs. A floor the code has outgrown fails here. The floor mypy
# checks against the main venv's libraries: old libraries' type hints are not what `make
# typecheck` promises. FLOORS_PYTEST_ARGS narrows the tests.
FLOORS := .venv-floors
FLOORS_PYTEST_ARGS ?= -m "not subprocess"
check-floors: install
	rm -rf $(FLOORS)
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install --quiet --upgrade pip
	$(PYTHON) tools/floors.py > $(FLOORS)/constraints.txt
	$(FLOORS)/bin/python -m pip install --quiet -c $(FLOORS)/constraints.txt -e '.[dev]'
	$(FLOORS)/bin/python -m pip list --format=freeze > $(FLOORS)/installed.txt
	$(FLOORS)/bin/lint-imports --no-cache
	$(FLOORS)/bin/ruff check .
	$(FLOORS)/bin/ruff format --check .
	$(FLOORS)/bin/mypy --cache-dir $(FLOORS)/.mypy_cache --python-executable $(BIN)/python orchestrator
	$(FLOORS)/bin/python -m pytest -q -p no:cacheprovider $(FLOORS_PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(FLOORS) $(DEMO) .mypy_cache .pytest_cache .ruff_cache

# The main job against the bundled simulator: no credentials, no network beyond loopback.
# The simulator runs time-scaled (a Linux install takes 3 s), so the run takes seconds.
# The tool runs as a user gets it: the package alone, without the dev extras, in a venv of its
# own (.venv-demo, rebuilt when the package changes), and the manifest is the example that
# ships inside it (`edis-fleet init --example`), not the checkout's copy.
DEMO     := .venv-demo
DEMO_SRC := pyproject.toml $(shell find orchestrator -type f ! -path '*/__pycache__/*')

# setuptools builds in build/ and never removes what the package no longer has: start clean.
$(DEMO)/.installed: $(DEMO_SRC)
	$(PYTHON) -m venv $(DEMO)
	$(DEMO)/bin/python -m pip install --quiet --upgrade pip
	rm -rf build
	$(DEMO)/bin/python -m pip install --quiet .
	rm -rf build
	touch $@

demo: $(DEMO)/.installed
	@bash -c 'set -euo pipefail; \
	  work=$$(mktemp -d); \
	  $(DEMO)/bin/edis-fleet init --example "$$work/fleet.yaml" > /dev/null; \
	  $(DEMO)/bin/edis-fleet simulator --vps 5 --port 0 --time-scale 0.01 \
	    --url-file "$$work/url" > "$$work/simulator.log" 2>&1 & sim=$$!; \
	  trap "kill $$sim 2>/dev/null; wait $$sim 2>/dev/null; rm -rf \"$$work\"" EXIT; \
	  for i in $$(seq 100); do [ -s "$$work/url" ] && break; sleep 0.1; done; \
	  [ -s "$$work/url" ] || { cat "$$work/simulator.log"; exit 1; }; \
	  echo "== simulator at $$(cat "$$work/url") (5 VPSes, installs time-scaled x0.01)"; \
	  echo "== edis-fleet apply fleet.yaml (the bundled example: edis-fleet init --example)"; \
	  EDIS_EMAIL=operator@example.com EDIS_PASSWORD=sim-pass EDIS_ROOT_PASSWORD=demo-Root-pass-42 \
	  $(DEMO)/bin/edis-fleet apply "$$work/fleet.yaml" --session-url "$$(cat "$$work/url")" \
	    --allow-api-host 127.0.0.0/8 --journal "$$work/journal.sqlite"'

# Benchmarks: scripts, not tests (tests/bench is not collected). Each prints its numbers;
# apply_bench also writes bench-results.json. Every script runs even when one misses its goal,
# and the target fails at the end if any did. BENCH_FLAGS=--quick scales apply_bench down.
bench: install
	@status=0; \
	$(BIN)/python tests/bench/apply_bench.py $(BENCH_FLAGS) || status=1; \
	$(BIN)/python tests/bench/sim_throughput.py || status=1; \
	$(BIN)/python tests/bench/validate_10k.py || status=1; \
	$(BIN)/python tests/bench/journal_cost.py || status=1; \
	$(BIN)/python tests/bench/journal_cost.py --backend postgresql --post-ms 100 --goal-pct 10 || status=1; \
	$(BIN)/python tests/bench/profiles_bench.py || status=1; \
	$(BIN)/python tests/bench/eta_bench.py || status=1; \
	$(BIN)/python tests/bench/startup.py || status=1; \
	$(BIN)/python tests/bench/ssh_bench.py $(BENCH_FLAGS) || status=1; \
	exit $$status

# The soak: chaos, kill-and-resume and bad-input runs of the real CLI against the simulator,
# one line per promise; fails when one is broken (tests/soak/soak.py; about 12 minutes on
# 2 cores). SOAK_FLAGS=--short runs the small version (2-3 minutes; not part of `make test`;
# `pytest tests/soak/test_soak_short.py` runs it with a check of every promise line).
soak: install
	$(BIN)/python tests/soak/soak.py $(SOAK_FLAGS)
