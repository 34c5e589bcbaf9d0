# Set-up and the two everyday commands. Each target creates .venv and installs what it needs:
#   make train [ARGS="+exp=... key=value"]   the main job (default: the embedded tiny run)
#   make test  [PYTEST_ARGS=...]             the test suite (what CI runs)
# torch + torchvision are installed first as a matching pair (TORCH_PAIR); on a GPU machine with
# its own CUDA torch, set TORCH_PAIR to that pair, or pip install -e . into your own env.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=
PYTEST_ARGS ?=

.PHONY: train test bench setup

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install $(TORCH_PAIR)
	$(PY) -m pip install -e ".[dev]"
	touch $@

train: $(VENV)/.installed
	$(PY) -m t2i_align.train $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) scripts/bench_step.py $(ARGS)
