# Spellbook. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DB := data/demo.db
PORT ?= 8001
CHROMIUM := /usr/bin/chromium
# pip's own cap on this machine keeps torch at the pair that lies on disk; the pins in pyproject say the same.
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# The Datasette line `make test` runs on (the current stable one), and the 1.0 line `make test-datasette-1` runs on.
DATASETTE ?= datasette==0.65.5
DATASETTE_1 ?= datasette>=1.0a0,<1.1
VENV_1 := .venv-datasette1
# A run writes up to ~1 GB of temporary files: say so first when the disk is nearly full.
DISK_CHECK = @df -Pk . "$${TMPDIR:-/tmp}" | awk 'NR > 1 && $$4 < 2097152 && !seen[$$6]++ {print "warning: only " int($$4 / 1024) " MB free on " $$6 "; a test run writes up to ~1 GB of temporary files"}'

.DEFAULT_GOAL := help
.PHONY: help install install-serve demo demo-db test test-datasette-1 browser-deps bench clean

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed-serve: pyproject.toml | $(BIN)/python
	$(PIP) install -e . '$(DATASETTE)'
	touch $@

$(VENV)/.installed-all: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[clip,runner,test]' '$(DATASETTE)'
	touch $@ $(VENV)/.installed-serve

install-serve: $(VENV)/.installed-serve ## Install what serving and ingest need (no torch) into .venv

install: $(VENV)/.installed-all ## Install everything into .venv, extras included (CLIP, runner, tests)

$(DEMO_DB): $(VENV)/.installed-serve $(wildcard data/laion/*.parquet data/laion/*.csv data/prompts/*) $(wildcard ingest/*.py ingest/readers/*.py database/*.py text/*.py text/vocab/*)
	$(BIN)/python -m spellbook.ingest.demo $(DEMO_DB)

demo-db: $(DEMO_DB) ## Build data/demo.db from the bundled real samples

demo: $(DEMO_DB) ## Install, build the demo database and serve it on http://127.0.0.1:8001
	$(BIN)/spellbook serve $(DEMO_DB) --port $(PORT)

browser-deps: ## Debian's Chromium for the browser tests (installed when running as root)
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-dejavu-core >/dev/null; \
	  else echo "Chromium is missing and this is not root: the browser tests will be skipped"; fi; \
	fi

test: install browser-deps ## Install everything and run the whole test suite (on Datasette 0.65)
	$(DISK_CHECK)
	$(BIN)/python -m pytest -p no:cacheprovider -q

$(VENV_1)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_1)
	$(VENV_1)/bin/python -m pip --disable-pip-version-check -q install --upgrade pip
	$(VENV_1)/bin/python -m pip --disable-pip-version-check -q install -e '.[test]' '$(DATASETTE_1)'
	touch $@

test-datasette-1: $(VENV_1)/.installed browser-deps ## Run the page tests on the latest Datasette 1.0 alpha, in its own venv (.venv-datasette1)
	@$(VENV_1)/bin/python -c "import importlib.metadata as m; print('Datasette', m.version('datasette'))"
	$(DISK_CHECK)
	$(VENV_1)/bin/python -m pytest -p no:cacheprovider -q -m pages

bench: install ## Run the benchmarks (ingest 1M rows, ROWS=12096835 for full size; search and prompts at 12.1M)
	$(BIN)/python bench/ingest.py $(if $(ROWS),--rows $(ROWS))
	$(BIN)/python bench/search.py $(if $(SEARCH_ROWS),--rows $(SEARCH_ROWS))
	$(BIN)/python bench/prompts.py $(if $(SEARCH_ROWS),--training-rows $(SEARCH_ROWS))

clean: ## Remove the venv, the demo database and benchmark caches
	rm -rf $(VENV) $(VENV_1) $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm bench/cache
