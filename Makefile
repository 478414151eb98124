# The two commands that matter: `make run` and `make test` (see README).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench install clean system-deps bench-deps test-browser

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
	$(BIN)/mypy --strict audioprep

# Debian packages the tests use: Chromium for tests/browser (Playwright from PyPI drives it),
# espeak-ng for speech-like test material (tests/speech.py), ffprobe (package ffmpeg) as the
# independent reader of tags and chapters (tests/publish), gcc to build RNNoise with SIMD at
# first use (third_party/rnnoise; without a compiler the pyrnnoise wheel's slower library runs),
# `ip` (iproute2) and `nft` (nftables) for the simulated hosts of tests/faults/netns.py,
# stress-ng to starve the paused workers of tests/faults/test_paused_worker.py of CPU,
# `faketime` (its libfaketime) to step the clock of API and workers in tests/faults/test_clock_jump.py.
# `command:package` when the command is not named like its package.
SYSTEM_DEPS := chromium espeak-ng ffmpeg gcc ip:iproute2 nft:nftables stress-ng faketime
system-deps:
	@missing=""; for d in $(SYSTEM_DEPS); do c=$${d%%:*}; p=$${d#*:}; \
		command -v $$c >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin:/sbin" command -v $$c >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	test -z "$$missing" || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; } \
		|| echo "warning: could not install$$missing (need root + Debian); tests needing them are skipped"

# Debian's ffmpeg CLI: the baseline bench/render.py and bench/loudness.py compare against;
# wrk: the HTTP load generator of bench/api.py and bench/growth.py (bench/loadgen.py without it).
bench-deps:
	@command -v ffmpeg >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ffmpeg wrk; } \
		|| echo "warning: could not install ffmpeg/wrk; CLI baselines are skipped, HTTP load from bench/loadgen.py"

test-browser: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/browser

pytest: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --durations=15

test: lint typecheck pytest

bench: $(STAMP) bench-deps
	$(BIN)/python -m bench.all

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache
