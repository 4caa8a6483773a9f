# `make demo` and `make test` each install what they need on a fresh machine, then run.
PY ?= python3
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1
DEMO_OUT ?= demo_out

.PHONY: install browser demo test lint format

install:
	$(PY) -m pip install -q -e ".[dev]"

# Headless Chromium for the browser checks (report / retrieval pages); best effort:
# tests that need it skip with a clear message when it cannot be installed.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: could not install chromium; browser checks will be skipped" )

demo: install
	$(PY) -m cellbag demo --out $(DEMO_OUT)

test: install browser
	$(PY) -m pytest -q

lint:
	ruff check src tests benchmarks
	ruff format --check src tests benchmarks

format:
	ruff format src tests benchmarks
	ruff check --fix src tests benchmarks
