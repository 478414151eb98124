# The two commands that matter: `make run` and `make test` (see README).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench install clean browser-deps test-browser

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/audioprep up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict services shared

# Debian's Chromium for the browser tests (tests/browser, Playwright from PyPI drives it).
browser-deps:
	@test -x /usr/bin/chromium || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } \
		|| echo "warning: could not install chromium (need root + Debian); browser tests will be skipped"

test-browser: $(STAMP) browser-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/browser

pytest: $(STAMP) browser-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m bench.all

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache
