# nestlearn: the two commands of the README.
#   make demo   set up .venv (torch pinned), install nestlearn, run the main job
#   make test   set up .venv, install nestlearn[dev], run the test suite
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned here (a CPU build is cached on the dev machines); the package itself
	# only asks for torch>=2.5 so GPU users keep their own build.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/nestlearn demo

test: setup
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(VENV)/bin/nestlearn bench --model transformer --dim 256 --layers 4 --vocab 256 --batch 4 --seq 512 --threads 2

clean:
	rm -rf $(VENV) runs .pytest_cache
