# One entry point for developers and CI. `make test` sets up a fresh Debian 12 machine
# (root) and runs every check; each stage prints "==> [stage] NAME" and how it ended.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV       ?= .venv
BIN        := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
STAGE      := scripts/stage
# Molecule scenarios: every directory of molecule/ with a molecule.yml.
SCENARIOS  ?= $(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))
export STAGE_LOG ?= $(abspath .cache/stages.log)

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: test
test: ## Everything CI runs: setup, lint, app tests, collection build, every Molecule scenario
	@mkdir -p .cache && : > $(STAGE_LOG)
	@$(MAKE) --no-print-directory setup lint test-alert-rules test-app bench-smoke test-collection molecule
	@echo "== make test: stage timings (seconds) =="; awk '{printf "  %-26s %s %ss\n", $$1, ($$2==0?"ok":"FAILED"), $$3}' $(STAGE_LOG)

.PHONY: setup
setup: ## Install Debian packages, start Docker, build the venv, collections and the base image
	@$(STAGE) host-packages-and-docker scripts/setup-host.sh
	@$(STAGE) python-venv $(MAKE) --no-print-directory venv
	@$(STAGE) collections ansible-galaxy collection install -r requirements.yml
	@$(STAGE) base-image scripts/build-base-image.sh

.PHONY: venv
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: lint
lint: ## ruff, ansible-lint (production profile) and every role's argument specs, option by option
	@$(STAGE) lint-ruff bash -c 'ruff check . && ruff format --check .'
	@$(STAGE) argument-specs python scripts/check-argument-specs.py
	@$(STAGE) lint-ansible ansible-lint --profile production

.PHONY: test-alert-rules
test-alert-rules: ## promtool check + test of the monitoring role's alert rules on synthetic series
	@$(STAGE) alert-rules scripts/test-alert-rules.sh

.PHONY: test-app
test-app: ## The service's tests against real PostgreSQL, PgBouncer and Redis on loopback
	@$(STAGE) app-tests pytest app/tests -q

.PHONY: bench-app
bench-app: ## The service's req/s and p50/p95/p99 per route next to a bare Quart hello-world
	@$(STAGE) bench-app python bench/app_http.py

.PHONY: bench
bench: ## Every benchmark against the `make up` stack (HTTP, cache, queue, PgBouncer, scale-out, deploy) -> BENCHMARKS.md
	@$(STAGE) bench python bench/run.py --write

.PHONY: bench-smoke
bench-smoke: ## The benchmarks in their smallest mode, so they cannot rot (part of make test)
	@$(STAGE) bench-smoke bash -c 'python bench/app_http.py --smoke && python bench/run.py --smoke'

.PHONY: test-collection
test-collection: ## Build the collection tarball, install it, run its roles by FQCN
	@$(STAGE) collection-build scripts/test-collection.sh

.PHONY: up
up: ## The whole stack on local containers, deployed by site.yml; prints the URL
	@$(MAKE) --no-print-directory setup
	@$(STAGE) up scripts/up.sh

.PHONY: down
down: ## Remove the containers of make up
	@scripts/down.sh

.PHONY: molecule
molecule: ## molecule test for every scenario (SCENARIOS="data default" to choose)
	@for s in $(SCENARIOS); do $(STAGE) molecule-$$s molecule test -s $$s || exit 1; done
