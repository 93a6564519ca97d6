# Two commands a newcomer needs: `make demo` and `make test`. Both set everything up first and
# are idempotent: a second run skips what is already in place.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch is pinned to the CPU wheel through constraints.txt; /opt/wheels is where it lies on our machines.
PIP    := $(PY) -m pip install -c constraints.txt $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PIP) -q torch==2.13.0
	$(PIP) -q -e '.[all,cluster,test]'
	touch $@

setup: $(STAMP)

demo: setup
	$(VENV)/bin/loraops demo

# PostgreSQL is installed (Debian package) and started on loopback for the registry tests;
# scripts/postgres.sh prints its URL, or nothing (loudly) where it cannot be installed. With CI=true
# both scripts fail the run instead, and so does any test that would skip (tests/conftest.py).
# Extra pytest arguments: make test PYTEST_ARGS="--durations=25 -x".
PYTEST_ARGS ?=
test: setup
	bash scripts/system-deps.sh
	url="$$(bash scripts/postgres.sh)" && \
	LORAOPS_TEST_PG_URL="$$url" \
	LORAOPS_MODELS="$${LORAOPS_MODELS:-$$HOME/.loraops/models}" \
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not install" $(PYTEST_ARGS)

bench: setup
	$(PY) bench/train.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
