# iso3d developer entry points. Every pip call passes constraints.txt so that pip never swaps in a
# multi-GB CUDA torch on a CPU machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet -c constraints.txt

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test,models,export]"
	touch $@

# The main job: image -> 3D asset on the bundled example with the shipped iso3d-tiny model
# (about 1.5 minutes on 2 CPU cores); outputs in out/demo/.
demo: setup
	$(VENV)/bin/iso3d generate examples/red_ball.png -o out/demo

# Correctness tests (Triton kernels through the interpreter on CPU), then one smoke pass of the
# benchmark suite at small shapes so that it cannot rot.
test: setup
	$(PY) -m pytest tests -q
	$(PY) -m pytest benchmarks -q --benchmark-disable --smoke

bench: setup
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=median,iqr,rounds --benchmark-sort=name

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks *.egg-info
