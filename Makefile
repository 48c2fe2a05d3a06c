# The two set-up commands of the README: `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
SUM    := $(shell cksum pyproject.toml | cut -d' ' -f1)
RUNTIME := $(VENV)/.runtime-$(SUM)
STAMP   := $(VENV)/.installed-$(SUM)

.PHONY: run test lint services bench dashboard manifests clean

# `make run` installs what the exporter needs to run (with the MySQL driver, pure Python);
# `make test` adds the test toolchain (pytest, ruff, mypy, hadolint). Each is redone only
# when pyproject.toml changes.
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[mysql]'
	rm -f $(VENV)/.runtime-*
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(VENV)/bin/python -m pip install -q -e '.[mysql,test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## Run the exporter (on the embedded demo database unless one is configured).
run: $(RUNTIME)
	$(VENV)/bin/convrs-exporter $(ARGS)

## Lint, type-check and run the whole test suite (installs/starts what it needs).
test: $(STAMP) services lint
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

services:
	scripts/ensure-services.sh

## Regenerate grafana/dashboards/convrs-organization-metrics.json from its generator.
dashboard: $(STAMP)
	$(VENV)/bin/python grafana/build_dashboard.py

## The benchmark against query-exporter (about 9 minutes; prints one table).
bench: $(STAMP) services
	$(VENV)/bin/python bench/run.py

## Regenerate the Kubernetes PrometheusRule and dashboard ConfigMap from their sources.
manifests: $(STAMP)
	$(VENV)/bin/python deploy/kubernetes/generate.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
