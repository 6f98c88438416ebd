# telerad-broker — `make help` lists the targets. The README's two commands are `make run` and `make test`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
CACHE ?= $(HOME)/.cache/telerad
GO_TOOLS := opa,regal,helm
export OPA := $(CACHE)/bin/opa-v1.22.3
export REGAL := $(CACHE)/bin/regal-$(shell sed -n 's/^REGAL_VERSION = "\(.*\)"/\1/p' devstack/provision.py)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "== installing Python dependencies into $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off -q --upgrade pip
	$(BIN)/pip install --progress-bar off -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

.PHONY: install
install: $(STAMP) ## create .venv and install the broker with its dev tools

.PHONY: provision
provision: install ## fetch/build Kafka, OPA, Regal, Keycloak, Orthanc into ~/.cache/telerad
	$(BIN)/telerad stack provision --tools $(GO_TOOLS)

.PHONY: lint
lint: install ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: policy-check
policy-check: provision ## opa fmt, opa check --strict, opa test with coverage, Regal
	bash policies/check.sh

.PHONY: helm-check
helm-check: provision ## the Helm chart: lint, template per scenario, values table, chart tests
	bash scripts/helm-check.sh

.PHONY: bench
bench: provision ## benchmarks against the real stack (BENCH_ARGS=--quick for a smoke run)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The container tests (tests/containers) and the testcontainers subset run in test-containers.
CONTAINER_SUBSET := tests/containers tests/integration/test_identity.py \
	tests/integration/test_links.py tests/integration/test_audit_stream.py

.PHONY: pytest
pytest: provision ## the pytest suite (unit + integration against the real stack as processes, 3 Kafka nodes)
	TELERAD_STACK_KAFKA_NODES=$${TELERAD_STACK_KAFKA_NODES:-3} $(BIN)/pytest --ignore=tests/containers

.PHONY: test-containers
test-containers: provision ## the image built and run, a subset on testcontainers (own dockerd if none answers)
	TELERAD_STACK_BACKEND=testcontainers TELERAD_STACK_IMAGES=$${TELERAD_STACK_IMAGES:-local} $(BIN)/pytest $(CONTAINER_SUBSET)

.PHONY: test
test: lint policy-check pytest test-containers ## README command: install, provision, lint, policy gates, all tests

.PHONY: run
run: provision ## README command: start Kafka, OPA, Keycloak, Orthanc and the broker; Ctrl-C stops all
	$(BIN)/telerad stack up --with-broker --port $${TELERAD_PORT:-8000} --env-file .stack.env

.PHONY: stack
stack: provision ## start only the dev stack and write its environment to .stack.env
	$(BIN)/telerad stack up --env-file .stack.env

.PHONY: clean
clean: ## remove the virtualenv and tool caches of this checkout (not ~/.cache/telerad)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .stack.env
