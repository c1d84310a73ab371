# Every target runs with the virtualenv of one software stack (created by `make install`):
#   STACK=pinned  (default) .venv          torch 2.7.0 + transformers 4.57, everything as pyproject.toml pins it
#   STACK=current           .venv-current  the newest torch available (CURRENT_PINS) + transformers 5, with
#                           Composer 0.32.1 and Streaming 0.13.0 installed --no-deps (their other pins kept)
# e.g. `make install STACK=current && make test STACK=current`.
PYTHON ?= python3
STACK ?= pinned
# torch and torchvision must be one matching pair from the same build (CPU with CPU, CUDA with CUDA): Composer
# imports torchvision, and a CUDA torchvision next to a CPU torch fails (`operator torchvision::nms does not exist`).
CURRENT_PINS ?= torch==2.14.1 torchvision==0.29.1 'transformers>=5,<6'

ifeq ($(STACK),pinned)
VENV := .venv
else ifeq ($(STACK),current)
VENV := .venv-current
else
$(error STACK must be 'pinned' or 'current', not '$(STACK)')
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow test-all lint smoke gpu-check gpu-wheels experiment clean

install: $(STAMP)

ifeq ($(STACK),pinned)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)
else
$(STAMP): pyproject.toml scripts/stack_requirements.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip packaging
	$(PY) -m pip install -q $(CURRENT_PINS)
	$(PY) -m pip install -q --no-deps mosaicml==0.32.1 mosaicml-streaming==0.13.0
	$(PY) scripts/stack_requirements.py --extra dev > $(VENV)/requirements-rest.txt
	$(PY) -m pip install -q -r $(VENV)/requirements-rest.txt $(CURRENT_PINS)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -c "import torch, torchvision, transformers, composer, streaming; print('stack current:', \
	  'torch', torch.__version__, 'torchvision', torchvision.__version__, 'transformers', transformers.__version__)"
	touch $(STAMP)
endif

# Fast suite (default markers exclude slow, dist and gpu).
test: $(STAMP)
	$(PY) -m pytest -q

# Slow and multi-process tests; CI runs these too.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m 'slow or dist' || [ $$? -eq 5 ]

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(PY) -m ruff check mmbert_train data_prep tests bench scripts train.py
	$(PY) -m ruff format --check mmbert_train data_prep tests bench scripts train.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# The whole chain at toy scale on CPU (prep -> 5 phases -> merge -> export -> fill-mask); last line: final model: DIR
smoke: $(STAMP)
	$(PY) scripts/smoke.py

# On one CUDA GPU, offline, <= 8 minutes: gpu tests, backend parity, compiled Composer runs at 1024 / 8192 tokens,
# GPU throughput; writes build/gpu_check/gpu_check.json + a table (docs/benchmarks.md). On the lent GPU machines
# (their own image, no network) run `bash scripts/gpu_device.sh` instead, with the wheels of `make gpu-wheels`.
# `make gpu-check GPU_CHECK_ARGS=--dry-run` runs the CPU part.
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

# The lent GPU machines (their own image: Python 3.12, torch 2.11, transformers 5, no network, 64 MiB travel):
# `make gpu-wheels` fetches into .whl/ the CPython 3.12 wheels of what the check imports and the image lacks
# (scripts/gpu_wheels.txt, ~20 MiB); there, `bash scripts/gpu_device.sh` installs them and runs the check.
gpu-wheels: $(STAMP)
	$(PY) scripts/gpu_wheels.py download

# The decay-languages experiment on the UDHR (docs/experiments/decay_languages.md): pretrain -> midtrain -> three
# decays -> TIES merge for seeds 21, 22, 23 (two at a time), held-out scoring, report + plot. ~15 min per seed on
# one CPU core.
experiment: $(STAMP)
	$(PY) scripts/decay_languages_experiment.py --seeds 21 22 23 --jobs 2
