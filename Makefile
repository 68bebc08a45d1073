# The README's commands. `make test` is what CI runs (.ci/run): it creates the
# virtual environment if missing, installs the package with its test extra and
# runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# `make test-agents`: the real agent CLIs (pinned versions, installed here when missing;
# the lab's /work/cache/agents is reused when it holds them) through a real batchd, against
# mock model servers, inside a loopback-only network namespace. Not part of `make test`.
AGENTS_CACHE ?= $(HOME)/.cache/batchd-agents
AGENTS_REUSE ?= /work/cache/agents

.PHONY: test test-agents test-browser lint typecheck run chaos bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.cfg | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not chaos and not browser and not agents' -p no:cacheprovider --durations=25

# The dashboard in headless Chromium (Debian's chromium + chromium-driver, installed with
# apt when missing and possible; the test says why it skips otherwise). Saves docs/*.png.
test-browser: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,browser]'
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	      || echo "test-browser: could not install chromium (the test will skip)"; \
	  else echo "test-browser: chromium missing and apt-get not usable here (the test will skip)"; fi; \
	fi
	$(BIN)/python -m pytest -q -m browser -p no:cacheprovider -rs tests/browser

test-agents: $(STAMP)
	@if ! unshare -n true 2>/dev/null; then \
	  echo "test-agents: SKIPPED: no network namespace (unshare -n: $$(unshare -n true 2>&1 | head -1)); it needs root or user namespaces"; \
	  exit 0; fi
	$(BIN)/python tests/agents/install.py --cache $(AGENTS_CACHE) \
	  $(if $(wildcard $(AGENTS_REUSE)),--reuse $(AGENTS_REUSE)) --env-file $(AGENTS_CACHE)/agents.json
	unshare -n sh -c 'ip link set lo up && exec env BATCHD_AGENTS_ENV=$(AGENTS_CACHE)/agents.json \
	  $(BIN)/python -m pytest -q -m agents -p no:cacheprovider tests/agents'

chaos: $(STAMP)
	$(BIN)/python -m pytest -q -m chaos -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

typecheck: lint

run: $(STAMP)
	$(BIN)/python -m supervisor.batchd.devrun

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench.queue --json
	$(BIN)/python -m bench.supervisor --json
	$(BIN)/python -m bench.jobs --json
	$(BIN)/python -m bench.jobcontrol --json
	$(BIN)/python -m bench.reaper --json
	$(BIN)/python -m bench.retention --json
	$(BIN)/python -m bench.api --json
	$(BIN)/python -m bench.locks --json
	$(BIN)/python -m bench.callbacks --json
	$(BIN)/python -m bench.results --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
