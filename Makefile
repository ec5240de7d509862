# Quick start: `make demo` (set up + the quick run), `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/quick

.PHONY: setup demo test bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m hadfl_jax.main --config configs/default.py --workdir $(WORKDIR)

test: setup
	$(PY) -m pytest -q -n 2 --dist worksteal

bench: setup
	$(PY) -m benchmarks.run --out benchmarks/results

clean:
	rm -rf $(VENV) workdirs
