# Two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := var/demo

.PHONY: install demo test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@mkdir -p $(DEMO)
	$(BIN)/remind db upgrade
	$(BIN)/remind sample-portfolio --out $(DEMO)/portfolio.csv
	$(BIN)/remind accounts import $(DEMO)/portfolio.csv
	$(BIN)/remind dry-run

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check scheduler channels policies tests bench
	$(BIN)/ruff format --check scheduler channels policies tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/import_bench.py --accounts 100000
	$(BIN)/python bench/dryrun_bench.py --accounts 100000
	$(BIN)/python bench/materialise.py --accounts 20000
	$(BIN)/python bench/dispatch.py --contacts 10000 --concurrency 8 --batch 500
	$(BIN)/python bench/dispatch_pg.py --daemons 3 --contacts 20000   # needs PostgreSQL

clean:
	rm -rf $(VENV) var build *.egg-info
