# Every target runs with the project's own virtualenv in .venv (created by `make install`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow test-all lint smoke bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

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

# The decay-languages experiment on the UDHR (docs/experiments/decay_languages.md): pretrain -> midtrain -> three
# decays -> TIES merge for seeds 21, 22, 23 (two at a time), held-out scoring, report + plot. ~15 min per seed on
# one CPU core.
experiment: $(STAMP)
	$(PY) scripts/decay_languages_experiment.py --seeds 21 22 23 --jobs 2
