# One-command set-up: every target creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := tests/js/node_modules/.installed

.PHONY: run test bench bench-tools install lint clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test,postgres]'
	touch $(STAMP)

$(NODE_STAMP): tests/js/package.json
	cd tests/js && npm install --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

install: $(STAMP)

# make run PORT=9000: serve on another port; the printed links follow it unless
# [server] base_url (or CALSYNC_BASE_URL) says where the server is reached.
PORT ?= 8080
run: $(STAMP)
	$(BIN)/calsync db upgrade
	$(BIN)/calsync demo --if-empty --port $(PORT)
	$(BIN)/calsync serve --host 127.0.0.1 --port $(PORT)

# The browser tests drive Debian's chromium (never a browser download of Playwright's).
chromium:
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

test: $(STAMP) $(NODE_STAMP) chromium lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Benchmarks compare with vdirsyncer (pip, the bench extra), nginx and wrk (Debian).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test,postgres,bench]'
	touch $(BENCH_STAMP)

bench-tools:
	(command -v nginx || test -x /usr/sbin/nginx) >/dev/null && command -v wrk >/dev/null || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light wrk)

bench: $(BENCH_STAMP) bench-tools
	$(BIN)/python -m bench.run $(ARGS)

# ruff and mypy --strict over the product code (src/ and connectors/), as STYLE asks.
lint: $(STAMP)
	$(BIN)/python -m ruff check src connectors
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) tests/js/node_modules var
