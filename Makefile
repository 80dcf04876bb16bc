# Developer entry points. `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench reproduce reproduce-beyond clean

$(STAMP): pyproject.toml scripts/install.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) scripts/install.py --extras dev
	@if command -v npm >/dev/null 2>&1 && [ -f clients/node/package-lock.json ]; then \
		cd clients/node && npm ci --no-audit --no-fund --loglevel=error; fi
	touch $@

setup: $(STAMP)

demo: setup  ## train on MNIST, export, serve, query
	$(PY) scripts/demo.py

test: setup  ## the full test suite
	$(PY) -m pytest -q

lint: setup  ## style, and the layering contracts of .importlinter
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

bench: setup  ## speed tables (benchmarks/*.py)
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/spiking_speed.py

reproduce: setup  ## the paper's table, full MNIST, 10 epochs per row, mean ± sd over 5 seeds (~35 min, 1 core)
	$(VENV)/bin/sjff reproduce paper --out runs/paper

reproduce-beyond: setup  ## the models beyond the paper, 10 epochs, mean ± sd over 3 seeds (~37 h of one-thread runs here, docs/results/beyond.json)
	$(VENV)/bin/sjff reproduce beyond --out runs/beyond

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
