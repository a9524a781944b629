# The whole set-up: `make train` or `make test` on a fresh machine creates .venv and installs
# everything on first use. torch is pinned here only (pyproject keeps open ranges for GPU users).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: install train test bench compare clean-venv

# `make train ARGS="model=fpn dataset.modality=rgb"` passes Hydra overrides through.

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev,export,dashboard]' $(TORCH_PIN)
	@# Replaced by our own sweeper; its optuna<3 pin would clash with the optuna it now needs.
	$(PY) -m pip uninstall --quiet --yes hydra-optuna-sweeper 2>/dev/null || true
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m event_seg.train $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

# The benchmark suite (CPU, a few minutes): prints every ratio, writes benchmarks/RESULTS.md
# (ARGS=--quick writes benchmarks/RESULTS.quick.md, leaving the full figures alone).
# tonic, the reference for the event representations, comes from the `bench` extra.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]' $(TORCH_PIN)
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/run_all.py $(ARGS)

compare: $(STAMP)
	$(PY) benchmarks/compare_modalities.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
