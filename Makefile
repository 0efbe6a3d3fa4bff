# The commands the README promises: `make run`, `make test`, `make soak` and `make bench`.
PYTHON ?= python3
VENV ?= .venv
# The suite on the lowest versions pyproject.toml allows, in a venv of its own.
VENV_MIN ?= .venv-min
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml tests/node/package.json 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: run test test-min soak lint format bench bench-scale clean install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	if [ -f tests/node/package.json ]; then npm --prefix tests/node ci --no-audit --no-fund --silent; fi
	# The browser test runs Debian's Chromium (Playwright's own download is not reachable).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium fonts-noto-color-emoji)
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

## Start a local Synapse (SQLite) and the bridge; state lives in .dev/. Ctrl-C stops both.
run: $(STAMP)
	$(BIN)/python -m bridge dev

## Lint, format check and the test suite against real Synapse, PostgreSQL and Redis
## (without the long fault runs: those are `make soak`).
test: $(STAMP)
	$(BIN)/ruff check bridge tests bench
	$(BIN)/ruff format --check bridge tests bench
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not soak" --durations=20

## The same suite on the floors: every direct dependency (dev extra included) at the lowest
## release its range in pyproject.toml admits (uv's lowest-direct resolution; pip has none).
test-min:
	test -x $(VENV_MIN)/bin/python || $(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/pip install --quiet --upgrade pip uv
	$(VENV_MIN)/bin/uv pip install --quiet --python $(VENV_MIN)/bin/python --resolution lowest-direct -e '.[dev]'
	if [ -f tests/node/package.json ]; then npm --prefix tests/node ci --no-audit --no-fund --silent; fi
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium fonts-noto-color-emoji)
	$(VENV_MIN)/bin/python -m pytest -q -p no:cacheprovider -m "not soak"

## The long fault runs (kill -9 during a 2,000-message burst, PostgreSQL crash under load).
soak: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m soak -s

## Every benchmark beside its Synapse-direct baseline, in BENCH_BUDGET seconds (840); writes
## docs/benchmarks.md and its plots. The directory curve goes as far up as the budget allows
## (10k users needs about an hour here). BENCH_QUICK=1: reduced sizes; BENCH_PROFILE=1: cProfile.
bench: $(STAMP)
	$(BIN)/python -m bench.run

## The 10,000-user / 1,000-project directory point alone (30-40 minutes here), kept in
## docs/benchmarks/scale.json; every `make bench` report shows the latest one.
bench-scale: $(STAMP)
	$(BIN)/python -m bench.run --scale

lint: $(STAMP)
	$(BIN)/ruff check bridge tests bench

format: $(STAMP)
	$(BIN)/ruff format bridge tests bench
	$(BIN)/ruff check --fix bridge tests bench

clean:
	rm -rf $(VENV) $(VENV_MIN) .dev .pytest_cache .ruff_cache
