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

# A second SQS/S3 implementation for the aws backend's tests: LocalStack, run
# without Docker. It needs Python 3.13 (pyenv's on these machines; set
# LOCALSTACK_PYTHON to use another), in a venv of its own.
LS_VENV    := .venv-localstack
LS_PINS    := 'localstack-core[base-runtime]==4.14.0' 'cbor2<6' 'pyopenssl<24.3' 'cryptography<44' service-identity
PYENV_DIRS := $(shell pyenv root 2>/dev/null) $(PYENV_ROOT) $(HOME)/.pyenv
LOCALSTACK_PYTHON ?= $(firstword $(wildcard $(addsuffix /versions/3.13.*/bin/python,$(PYENV_DIRS))) $(shell command -v python3.13 2>/dev/null))

$(LS_VENV)/.installed:
	@if [ -z "$(LOCALSTACK_PYTHON)" ] || ! "$(LOCALSTACK_PYTHON)" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then \
	  echo "localstack: needs Python 3.13 (found '$(LOCALSTACK_PYTHON)'); install it (pyenv install 3.13) or set LOCALSTACK_PYTHON=/path/to/python3.13" >&2; \
	  exit 1; \
	fi
	rm -rf $(LS_VENV)
	"$(LOCALSTACK_PYTHON)" -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --disable-pip-version-check $(LS_PINS)
	touch $@

.PHONY: localstack
localstack: $(LS_VENV)/.installed

test: lint test-deps localstack
	$(PY) -m pytest

bench: $(VENV)/.bench
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_scale.py --quick

# 200 local workers x 2,000 one-second tasks on sqlite and redis; idle CPU on aws (moto)
.PHONY: bench-scale
bench-scale: $(VENV)/.bench
	$(PY) benchmarks/bench_scale.py --workers 200 --tasks 2000 --sleep 1 --write

.PHONY: bench-aws
bench-aws: $(VENV)/.bench
	$(PY) benchmarks/bench_aws.py

# one ec2 boot in the cloud-in-a-box, phase by phase (as root: network namespaces)
.PHONY: bench-boot
bench-boot: $(VENV)/.bench
	$(PY) benchmarks/bench_boot.py --repeat 3 --write

.PHONY: bench-group
bench-group: $(VENV)/.bench
	$(PY) benchmarks/bench_group.py --repeat 2 --write

clean:
	rm -rf $(VENV) $(LS_VENV) .cloudloop .pytest_cache .ruff_cache

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

# the core suite on Python 3.10, 3.12 and 3.13 (pyenv's), a venv each under .venv-py/
.PHONY: test-pythons
test-pythons:
	bash scripts/pythons.sh

# leave-one-out random forests in R: cloudloop (a process per row, --serve) beside doMC and furrr
.PHONY: bench-r
bench-r: $(VENV)/.bench
	bash scripts/bench-deps.sh
	$(PY) benchmarks/bench_r_loo.py --repeat 3 --write

.PHONY: demo-loo-r
demo-loo-r: $(VENV)/.demo
	$(PY) examples/loo_r.py
