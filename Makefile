# The two commands a new user needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ./switchboard-data

.PHONY: install run test test-fast lint bench clean system-deps

$(BIN)/switchboard: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/switchboard

# Debian packages the integration tests and benchmarks drive for real (nginx and apache2 as the
# front servers, wrk as the load generator, chromium as the browser that runs the demo page's
# script, strace to see a worker fsync its journal before it acknowledges, systemd for
# `systemd-analyze verify` of the generated unit). Installed only when missing; the tests run
# their own nginx and Apache on free ports (RUNLEVEL=1: apache2 is not started as a service).
system-deps:
	@command -v nginx >/dev/null && command -v wrk >/dev/null && command -v chromium >/dev/null \
	  && command -v strace >/dev/null && command -v apachectl >/dev/null \
	  && command -v systemd-analyze >/dev/null || \
	  { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq nginx-light wrk \
	      chromium strace apache2 systemd; }
	@# PostgreSQL for cluster mode's tests (docs/cluster.md): they run their own initdb + pg_ctl.
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
	  { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq postgresql; }

run: install
	$(BIN)/python -m ops.demo --data-dir $(DATA)

test: install system-deps
	$(BIN)/pytest -q --durations=20

test-fast: install system-deps
	$(BIN)/pytest -q -m 'not slow'

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
