# Set-up lives here so that the README's two commands do everything from a fresh clone:
#   make demo   installs (venv, pinned torch/torchvision, Debian's Fashion-MNIST) and runs the demo sweep
#   make test   installs the venv and runs the test suite
PY ?= python3
VENV := .venv
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast bench bench-engine install

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(FMNIST):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: $(VENV)/.installed $(FMNIST)
	$(VENV)/bin/python -m sweep run configs/demo_fashion_mnist.yaml

# pytest exits 5 when it collects no test: that is not a failure of the code under test.
test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest; rc=$$?; [ $$rc -eq 5 ] && echo "pytest: no tests collected" && rc=0; exit $$rc

# the fast tier: unit and numeric tests, no Ray cluster started (under 2 minutes on 2 cores); a test
# that starts Ray is marked `ray` (tests/conftest.py fails an unmarked one that does), a long one `slow`
test-fast: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -m "not ray and not slow"; rc=$$?; [ $$rc -eq 5 ] && echo "pytest: no tests collected" && rc=0; exit $$rc

bench: $(VENV)/.installed
	$(VENV)/bin/python -m sweep.bench

# wall time of the demo sweep: sequential in one process vs the Ray engine (about 5 minutes)
bench-engine: $(VENV)/.installed $(FMNIST)
	$(VENV)/bin/python -m sweep.bench_engine
