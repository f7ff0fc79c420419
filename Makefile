# Set-up and entry points. `make demo` and `make test` are the two commands a fresh machine needs.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install install-test demo test lint bench

install:
	$(PIP) install -q -e .

# torchscale is the reference implementation the parity tests compare against; it is installed without its
# dependencies (timm, fairscale) because the tests stand in for the two helpers it imports from them.
install-test:
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps torchscale==0.3.0

demo: install
	beit3 demo

test: install-test
	$(PYTHON) -m pytest -q

lint:
	ruff check . && ruff format --check .

bench: install-test
	$(PYTHON) benchmarks/train_step.py
