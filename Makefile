# Set-up, services, tests, demo and benchmark for attachment-ops.
# Every target that needs a service starts it first; `make services-down` stops them all.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SERVICES := $(PY) scripts/services.py
WITH_ENV := set -a && source .local/services.env && set +a &&
PYTEST_ARGS ?=

.PHONY: help system venv services-up services-down services-status airflow-init test demo bench lint format airflow clean

help:
	@echo "make demo            set everything up and run attachment_maintenance on demo data"
	@echo "make test            start the services and run the whole test suite"
	@echo "make bench           run the performance benchmark (docs/benchmarks.md)"
	@echo "make airflow         run Airflow's components with the UI on 127.0.0.1 (AIRFLOW__API__PORT, default 8080)"
	@echo "make lint            ruff check and format check"
	@echo "make services-down   stop PostgreSQL, SeaweedFS and the Docker engine"

system:
	@scripts/install-system-packages.sh

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.installed

services-up: system venv
	$(SERVICES) up postgres s3 docker

services-down:
	@test -x $(PY) && $(SERVICES) down || true

services-status:
	@$(SERVICES) status

airflow-init: services-up
	$(SERVICES) up airflow

test: airflow-init
	$(WITH_ENV) $(PY) -m ruff check include dags plugins tests scripts
	$(WITH_ENV) $(PY) -m pytest $(PYTEST_ARGS)

demo: airflow-init
	$(WITH_ENV) $(PY) scripts/demo.py

bench: airflow-init
	$(WITH_ENV) $(PY) scripts/bench.py $(BENCH_ARGS)

lint: venv
	$(PY) -m ruff check include dags plugins tests scripts
	$(PY) -m ruff format --check include dags plugins tests scripts

format: venv
	$(PY) -m ruff format include dags plugins tests scripts

airflow: airflow-init
	$(WITH_ENV) $(PY) scripts/airflow_local.py

clean:
	@test -x $(PY) && $(SERVICES) clean || rm -rf .local
