# The two set-up commands of the README: `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test lint services bench dashboard manifests clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## Run the exporter (on the embedded demo database unless one is configured).
run: $(STAMP)
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
