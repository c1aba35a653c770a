# Two commands set everything up on a fresh machine (see README.md):
#   make demo   create .venv if missing, install, train AT vs MAT on the embedded data
#               (on a GPU if there is one, else the CPU)
#   make test   create .venv if missing, install, run the tests
# TORCH_SPEC pins the CPU build that lies on this project's machines; on a GPU machine use
# e.g. `make TORCH_SPEC=torch test` inside a venv that already has the CUDA build you want.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Test workers (pytest-xdist), one file each so a module's fixtures are built once; each
# worker runs torch on one thread (tests/conftest.py). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto

.PHONY: demo test test-all bench install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	# torchattacks is only a test-time reference; its torchvision requirement is not needed
	# for the attacks we compare against, so it goes in without dependencies.
	$(PY) -m pip install -q --no-deps "torchattacks==3.5.1"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m mutualat demo --out runs/demo

# MUTUALAT_REQUIRE_REFERENCES: the reference libraries installed above must import (the
# cross-checks against torchattacks and AutoAttack fail instead of skipping).
test: $(VENV)/.installed
	MUTUALAT_REQUIRE_REFERENCES=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-all: $(VENV)/.installed
	MUTUALAT_REQUIRE_REFERENCES=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "slow or not slow" $(PYTEST_ARGS)

bench: $(VENV)/.installed
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
