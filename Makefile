# `make demo` and `make test` each install what they need on a fresh machine, then run.
# Everything goes into a project virtual environment (.venv), so a distribution's own
# python3 (Debian/Ubuntu, PEP 668 "externally managed") works as well as pyenv or conda.
# An already activated virtual environment is used instead of .venv.
# Afterwards: `source .venv/bin/activate` puts `cellbag` on the PATH.
PY ?= python3
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
VPY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1
DEMO_OUT ?= demo_out

.PHONY: install venv browser demo test lint format

# The venv; on Debian/Ubuntu without the python3-venv package, try to install it (best effort).
$(VPY):
	@$(PY) -c "import ensurepip, venv" 2>/dev/null || \
	  ( echo "python3-venv is missing; trying apt-get (or install it: apt-get install python3-venv)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv \
	       "python$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv") >/dev/null 2>&1 \
	    || sudo -n apt-get install -y -qq python3-venv >/dev/null 2>&1 || true )
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

venv: $(VPY)

# The stamp reinstalls when pyproject.toml changes; the package itself is editable.
$(VENV)/.cellbag-installed: pyproject.toml | $(VPY)
	$(VPY) -m pip install -q -e ".[dev]"
	@touch $@

install: $(VENV)/.cellbag-installed

# Headless Chromium for the browser checks (report / retrieval pages); best effort:
# tests that need it skip with a clear message when it cannot be installed.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: could not install chromium; browser checks will be skipped" )

demo: install
	$(VPY) -m cellbag demo --out $(DEMO_OUT)
	@echo "next: source $(VENV)/bin/activate && cellbag --help   (report: $(DEMO_OUT)/report/index.html)"

# The suite on TEST_WORKERS processes (pytest-xdist): about 11 CPU minutes, 6-7 min of wall
# on 2 cores; `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 2
test: install browser
	$(VPY) -m pytest -q -n $(TEST_WORKERS)

lint: install
	$(VPY) -m ruff check src tests benchmarks
	$(VPY) -m ruff format --check src tests benchmarks

format: install
	$(VPY) -m ruff format src tests benchmarks
	$(VPY) -m ruff check --fix src tests benchmarks
