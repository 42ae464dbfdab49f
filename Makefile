# kdjax: `make demo` and `make test` install everything into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast test-long lint bench constraints clean experiments experiments-quick experiments-report

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: install
	$(PY) -m experiments.run --config experiments/configs/demo.py

# The default suite (under 10 minutes on 2 cores); `make test-long` runs the rest.
test: lint
	$(PY) -m pytest -n 2 -q -m "not long"

lint: install
	$(PY) -m flake8 kdjax experiments tests
	$(PY) -m isort --check-only --quiet kdjax experiments tests

test-fast: install
	$(PY) -m pytest -n 2 -q -m "not slow and not long"

# Experiment smoke runs and benchmark scripts (several minutes of training).
test-long: install
	$(PY) -m pytest -n 2 -q -m long

bench: install
	$(PY) -m experiments.bench.cohort
	$(PY) -m experiments.bench.cache
	$(PY) -m experiments.bench.train_loop

# Every committed experiment from scratch (hours on 2 cores; timing in experiments/results/timing.json).
experiments: install
	$(PY) -m experiments.all

# Each experiment's smoke mode (results in experiments/results/*_quick/, not committed).
experiments-quick: install
	$(PY) -m experiments.all --quick

# Tables, verdicts, plots and experiments/README.md from the committed records (no training).
experiments-report: install
	$(PY) -m experiments.report --from-records --index

constraints: install
	$(PY) -m pip freeze --exclude-editable | sed '1i # Pinned, tested versions (Python 3.11, CPU). Regenerate with `make constraints`.' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
