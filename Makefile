# Relight: the project's verbs. `make demo` and `make test` each set up everything they need
# (a virtualenv, the packages, Postgres and Redis when not reachable, the schema).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATABASE ?= relight
export RELIGHT_DATABASE_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/$(DATABASE)
# What `make services` ensures and `make migrate` migrates is RELIGHT_DATABASE_URL's database,
# on its server, whether the URL came from DATABASE or from the environment: its name, host,
# port and user (a password is taken from PGPASSWORD, never from the URL).
DATABASE_URL_PARTS := $(shell $(PYTHON) -c 'import sys, urllib.parse as u; \
p = u.urlsplit(sys.argv[1]); \
print(p.path.lstrip("/") or "postgres", p.hostname or "127.0.0.1", p.port or 5432, \
      u.unquote(p.username or "postgres"))' '$(RELIGHT_DATABASE_URL)')
DATABASE_NAME := $(word 1,$(DATABASE_URL_PARTS))
DATABASE_SERVER := PGHOST=$(word 2,$(DATABASE_URL_PARTS)) PGPORT=$(word 3,$(DATABASE_URL_PARTS)) \
	PGUSER=$(word 4,$(DATABASE_URL_PARTS))

.PHONY: help install services migrate demo test test-fast lint typecheck bench bench-smoke soak wrk chromium pgbouncer redis-sentinel up down compose-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install the project with its dev tools

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is required (set PYTHON=...)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { echo "python venv failed: on Debian, apt-get install python3-venv"; exit 1; }
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,node]'
	$(BIN)/pip install --quiet --disable-pip-version-check -e ./clients/python
	@touch $(STAMP)

services:  ## make sure Postgres and Redis answer (installs and starts them on Debian if not)
	@$(DATABASE_SERVER) bash scripts/ensure-services.sh $(DATABASE_NAME)

migrate: install services  ## apply the database migrations (to RELIGHT_DATABASE_URL's database)
	@echo "migrating database $(DATABASE_NAME) at $(word 2,$(DATABASE_URL_PARTS)):$(word 3,$(DATABASE_URL_PARTS))"
	$(BIN)/alembic upgrade head

demo: install services  ## relight a sample image through the real API, queue and worker
	$(BIN)/alembic upgrade head
	$(BIN)/python scripts/demo.py

test: install services wrk chromium pgbouncer redis-sentinel  ## run the test suite against real Postgres and Redis
	$(BIN)/pytest

test-fast: install  ## the unit tests that need no server (no Postgres, Redis, processes): ~1 min
	$(BIN)/pytest -m fast

lint: install  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install  ## mypy --strict
	$(BIN)/mypy

bench: install services wrk  ## benchmarks (each prints a markdown table)
	$(BIN)/python bench/submit.py
	$(BIN)/python bench/submit_cpu.py
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/fairness.py
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/classic_engine.py
	$(BIN)/python bench/submit_overhead.py
	$(BIN)/python bench/webhook_latency.py
	$(BIN)/python bench/segmind_overhead.py

bench-smoke: install services wrk  ## every bench/ script at its smallest size (seconds each); fails on any error
	$(BIN)/python scripts/bench_smoke.py

soak: install services  ## 10 minutes of mixed load: memory and descriptors must come back flat (bench/soak.py)
	$(BIN)/python bench/soak.py

wrk:  ## the HTTP load generator the submit benchmark drives (apt-get install wrk when missing)
	@bash scripts/ensure-tool.sh wrk

chromium:  ## the headless browser of the /docs and operators' page tests (apt-get install when missing)
	@bash scripts/ensure-tool.sh chromium

pgbouncer:  ## the pooler tests/production runs in front of Postgres (apt-get install when missing)
	@PATH="$$PATH:/usr/sbin" bash scripts/ensure-tool.sh pgbouncer

redis-sentinel:  ## redis-server and redis-sentinel for tests/production's failover tests
	@bash scripts/ensure-tool.sh redis-server
	@bash scripts/ensure-tool.sh redis-sentinel

compose-check:  ## validate docker-compose.yml
	@bash scripts/validate-compose.sh

up:  ## the full stack in Docker (postgres, redis, migrate, api, worker)
	docker compose up --build -d

down:  ## stop the Docker stack
	docker compose down

clean:  ## remove the virtualenv, caches and local data
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache var out
