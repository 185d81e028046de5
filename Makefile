# Two commands on a fresh machine:
#   make demo   - create .venv, install cloudloop, run the main example on the embedded default
#   make test   - create/update .venv with the test dependencies, lint, run the whole suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test lint bench clean test-deps

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo: pyproject.toml | $(PY)
	$(PIP) -e '.[demo]'
	touch $@

$(VENV)/.test: pyproject.toml | $(PY)
	$(PIP) -e '.[test]'
	touch $@

$(VENV)/.bench: pyproject.toml | $(PY)
	$(PIP) -e '.[test,bench]'
	touch $@

demo: $(VENV)/.demo
	$(PY) examples/grid_search.py

lint: $(VENV)/.test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# system packages the tests drive for real (installed only when missing)
test-deps:
	bash scripts/test-deps.sh

test: lint test-deps
	$(PY) -m pytest

bench: $(VENV)/.bench
	$(PY) benchmarks/bench_core.py

.PHONY: bench-aws
bench-aws: $(VENV)/.bench
	$(PY) benchmarks/bench_aws.py

clean:
	rm -rf $(VENV) .cloudloop .pytest_cache .ruff_cache

# the other examples, each on the embedded default (see examples/*.py)
.PHONY: demo-loo demo-forest demo-text demo-montecarlo demo-r
demo-loo: $(VENV)/.demo
	$(PY) examples/loo_random_forest.py
demo-forest: $(VENV)/.demo
	$(PY) examples/parallel_forest.py
demo-text: $(VENV)/.demo
	$(PY) examples/text_sample.py
demo-montecarlo: $(VENV)/.demo
	$(PY) examples/monte_carlo.py
demo-r: $(VENV)/.demo
	$(PY) examples/r_command.py
