# The two commands a newcomer needs: `make demo` and `make test`. Everything else is optional.
# Python 3.10+ with venv; installs come from PyPI, torch pinned (constraints.txt) to the CPU build.

PYTHON      ?= python3
VENV        ?= .venv
ROBOT_VENV  ?= .venv-robot
PY          := $(VENV)/bin/python
ROBOT_PY    := $(ROBOT_VENV)/bin/python
PIP_FLAGS   ?= --quiet --disable-pip-version-check
DEMO_OUT    ?= demo_out
export PYTHONUNBUFFERED := 1
# The suite runs in a shuffled order (pytest-randomly) so that no test can lean on what an earlier
# one left behind; the seed is printed and `make test PYTEST_SEED=N` replays an order exactly.
ifndef PYTEST_SEED
PYTEST_SEED := $(shell $(PYTHON) -c 'import random; print(random.randrange(10**9))')
endif

.PHONY: help setup test lint pytest test-robot demo bench format clean

help:
	@echo "make test    set up .venv, lint, run the test suite, then prove the robot install (no torch)"
	@echo "make demo    set up and run the whole pipeline on the embedded rescue-scenes data"
	@echo "make bench   print the speed benchmarks (measure only; never pass/fail on time)"
	@echo "make format  apply ruff formatting and safe fixes"

# The stamp is rebuilt when the project's dependencies change: "creates or refreshes .venv".
$(VENV)/.stamp: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade "pip>=23"
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e ".[train,export,dev,lexicon]"
	touch $@

# The robot install: the base package only (plus test tools), never torch.
$(ROBOT_VENV)/.stamp: pyproject.toml constraints.txt
	test -x $(ROBOT_PY) || $(PYTHON) -m venv $(ROBOT_VENV)
	$(ROBOT_PY) -m pip install $(PIP_FLAGS) --upgrade "pip>=23"
	$(ROBOT_PY) -m pip install $(PIP_FLAGS) -c constraints.txt ".[dev]"
	touch $@

setup: $(VENV)/.stamp

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

pytest: $(VENV)/.stamp
	@echo "pytest: shuffled order, --randomly-seed=$(PYTEST_SEED) (replay: make test PYTEST_SEED=$(PYTEST_SEED))"
	$(PY) -m pytest -q -p randomly --randomly-seed=$(PYTEST_SEED)

# Non-editable base install in its own venv: every edge_runtime module imports, torch is not
# importable, and the torch-free tier passes (torch tests skip themselves). The pytest script,
# unlike `python -m pytest`, does not put the checkout on sys.path, so the installed copy is tested.
test-robot: $(ROBOT_VENV)/.stamp
	$(ROBOT_PY) -m pip install $(PIP_FLAGS) --no-deps --force-reinstall .
	@echo "robot tests: shuffled order, --randomly-seed=$(PYTEST_SEED)"
	RESCUE_ROBOT_INSTALL=1 $(ROBOT_VENV)/bin/pytest -q -p no:cacheprovider -p randomly \
		--randomly-seed=$(PYTEST_SEED)

test: lint pytest test-robot

demo: $(VENV)/.stamp
	$(PY) scripts/demo.py $(DEMO_OUT)

# Measure only: export's speed table (generator and text encoder; torch eager, onnxruntime fp32
# with ConvTranspose, fp32 and int8 rewritten; batch 1 and 16; 1 and 2 threads). Never pass/fail.
# Then GAN training images/s: the trainer vs a plain loop (same run, interleaved), widths 32/48/64,
# and the GAN-CLS loader's samples/s.
bench: $(VENV)/.stamp
	$(PY) -m export.bench
	$(PY) -m train.gan.bench

format: $(VENV)/.stamp
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(ROBOT_VENV) .pytest_cache .ruff_cache *.egg-info build dist
