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
# Stages running at once after setup (scripts/run-stages). They mostly wait on containers,
# so one more than the cores keeps the cores busy; 1 runs them in turn, output live.
TEST_JOBS  ?= $(shell echo $$(( $$(nproc) + 1 )))
# Debian release of `make up`'s containers: 13 (trixie) or 12 (bookworm).
DEBIAN     ?= 13
# `make up HA=1` / `make down HA=1`: the high-availability stack (inventories/local-ha).
HA         ?= 0
# `make up SKIP_SETUP=1`: on a machine `make setup` already prepared, go straight to the stack.
SKIP_SETUP ?= 0

# Every stage's command, defined once: `make test` runs them side by side, the targets
# below run their own. A stage molecule-NAME is `molecule test -s NAME`.
# Python deployed to hosts without a .py name is found by its shebang.
host_python_scripts    = $(shell grep -rlI --exclude='*.py' '^\#!/usr/bin/\(env \)\?python3' roles scripts)
stage_lint-ruff        := ruff check . $(host_python_scripts) && ruff format --check . $(host_python_scripts)
stage_lint-shell       := shellcheck scripts/*.sh scripts/stage scripts/stage-table roles/postgresql/files/koinonia-postgresql-check-config \
  roles/pgbouncer/files/koinonia-pgbouncer-check-config roles/redis/files/koinonia-redis-check-config \
  roles/keepalived/files/koinonia-keepalived-notify
stage_lint-lua         := luacheck --no-color roles/nginx/files/lua
stage_changelog        := antsibull-changelog lint
stage_argument-specs   := python scripts/check-argument-specs.py && python scripts/role-readme-tables.py --check
stage_example-inventory := python scripts/check-example-inventory.py
stage_lint-ansible     := ansible-lint --profile production
stage_alert-rules      := scripts/test-alert-rules.sh
stage_app-tests        := pytest app/tests -q --durations=10
stage_bench-smoke      := python bench/app_http.py --smoke && python bench/run.py --smoke && python bench/load_profiles.py --smoke
stage_collection-build := scripts/test-collection.sh
stage_ansible-core-oldest := scripts/test-ansible-core-oldest.sh
stage_ansible-test-sanity := scripts/test-sanity.sh
CHECK_STAGES := lint-ruff lint-shell lint-lua changelog argument-specs example-inventory lint-ansible alert-rules app-tests bench-smoke \
  collection-build ansible-core-oldest ansible-test-sanity
# Longest first, so the longest stage does not start last (scripts/run-stages orders by the
# last run's times instead when .cache/stage-history has them, as on a clean clone it has
# not: this is the order of a whole run's times, 2026-12-07). Unlisted stages go first.
TEST_ORDER := molecule-ha-database molecule-default molecule-operations molecule-data molecule-monitoring \
  molecule-ha-edge molecule-ha-stack molecule-ha-balancer app-tests molecule-loadbalancer molecule-firewall bench-smoke \
  molecule-app molecule-backup ansible-test-sanity lint-ansible ansible-core-oldest collection-build example-inventory \
  alert-rules argument-specs changelog lint-shell lint-ruff lint-lua
longest_first = $(filter-out $(TEST_ORDER),$(1)) $(filter $(1),$(TEST_ORDER))
# Role scenarios whose servers differ most between the releases (PostgreSQL 15/17, PgBouncer
# 1.18/1.24, Redis 7/8; our PgBouncer exporter vs Debian's; nginx and its Lua module) run on
# Debian 13, then again on Debian 12 in the same stage: their containers have fixed names, so
# the two passes cannot run side by side. The firewall role (real packets through each
# release's nftables) runs both passes too. The app role meets Debian 12 (CPython 3.11's lock,
# PgBouncer 1.18 without a statement cache) in molecule-operations, which converges, deploys
# and verifies the whole stack there; its own scenario's Debian 12 pass (62 passed,
# 2026-12-06) costs about 500 s of stage time the budget does not have today.
# ha-balancer runs both passes: keepalived 2.2.7 and 2.3.3, failover timed on each.
# ha-database too: etcd 3.4 / Patroni 3.0.2 / HAProxy 2.6 on 12, 3.5 / 4.0.7 / 3.0 on 13.
DEBIAN12_TOO := data monitoring loadbalancer firewall ha-balancer ha-database
# The scenarios run Ansible with Mitogen's linear strategy: one Python per host, kept from task
# to task, instead of a new interpreter (and Ansible's module payload compiled again) for every
# module run. The suite is bound by its two cores, and Ansible was the largest part of their
# work: on the data scenario the converge took 92 s of CPU, 49 with Mitogen, and the
# idempotence run 62, 20 (2026-12-07). The same modules run with the same arguments; `make up`
# and the collection and ansible-core-oldest stages keep Ansible's own strategy, and
# `make test MOLECULE_STRATEGY=linear` runs the scenarios with it too. The strategy is
# molecule/resources/strategy/mitogen_linear.py: Mitogen's, without its CPU pinning.
MOLECULE_STRATEGY ?= mitogen_linear
# Molecule folds what it prints at the terminal's width (80 columns without a terminal, as in
# CI): COLUMNS keeps a failed test's message on one line of the stage's log, where the stage
# table's excerpt (scripts/stage-table) finds it whole.
molecule_test = export COLUMNS=240 ANSIBLE_STRATEGY=$(MOLECULE_STRATEGY) ANSIBLE_STRATEGY_PLUGINS=$(CURDIR)/molecule/resources/strategy; \
  molecule test -s $(1)$(if $(filter $(1),$(DEBIAN12_TOO)), && KOINONIA_DEBIAN=12 molecule test -s $(1))
stage_command = $(if $(filter molecule-%,$(1)),$(call molecule_test,$(1:molecule-%=%)),$(stage_$(1)))
# $(call run_stages,NAMES): those stages through scripts/run-stages, TEST_JOBS at a time.
run_stages = scripts/run-stages --jobs $(TEST_JOBS) $(foreach n,$(call longest_first,$(1)),'$(n)=$(call stage_command,$(n))')

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: test
test: ## Everything CI runs: setup, then lint, app tests, collection build and every Molecule scenario side by side
	@mkdir -p .cache && : > $(STAGE_LOG)
	@start=$$(date +%s); rc=0; \
	  $(MAKE) --no-print-directory setup && $(call run_stages,$(CHECK_STAGES) $(addprefix molecule-,$(SCENARIOS))) || rc=$$?; \
	  scripts/stage-table $(STAGE_LOG) $$(( $$(date +%s) - start )); exit $$rc

.PHONY: setup
setup: ## Install Debian packages, start Docker, build the venv, collections and the base images (Debian 13, 12)
	@$(STAGE) host-packages-and-docker scripts/setup-host.sh
	@$(STAGE) python-venv $(MAKE) --no-print-directory venv
	@$(STAGE) collections ansible-galaxy collection install -r requirements.yml
	@$(STAGE) base-images scripts/build-base-image.sh 13 12

.PHONY: venv
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: lock
lock: venv ## Regenerate the app's locks with hashes, one per target Python (roles/app/files/requirements-py*.lock), keeping existing pins
	@for target in 3.11:3.11.2:x86_64-manylinux_2_36 3.13:3.13.5:x86_64-manylinux_2_40; do \
	  IFS=: read -r minor python platform <<< "$$target"; lock=roles/app/files/requirements-py$$minor.lock; \
	  sed -n 's/^\(pip==[^ ]*\).*/\1/p' $$lock > $$lock.pip; \
	  grep -v '^#' $$lock > $$lock.body; \
	  uv pip compile pyproject.toml $$lock.pip --python-version $$python --python-platform $$platform \
	    --no-python-downloads --generate-hashes --no-header --no-annotate --quiet --output-file $$lock.body; \
	  { sed -n '/^#/p' $$lock; cat $$lock.body; } > $$lock.new; rm $$lock.pip $$lock.body; \
	  mv $$lock.new $$lock; echo "$$lock: $$(grep -c '==' $$lock) pins for CPython $$python"; \
	done

.PHONY: lint
lint: ## ruff, shellcheck, luacheck, ansible-lint (production profile) and every role's argument specs
	@$(call run_stages,lint-ruff lint-shell lint-lua changelog argument-specs example-inventory lint-ansible)

.PHONY: test-alert-rules
test-alert-rules: ## promtool check + test of the monitoring role's alert rules on synthetic series
	@$(call run_stages,alert-rules)

.PHONY: test-app
test-app: ## The service's tests against real PostgreSQL, PgBouncer and Redis on loopback
	@$(call run_stages,app-tests)

.PHONY: bench-app
bench-app: ## The service's req/s and p50/p95/p99 per route next to a bare Quart hello-world
	@$(STAGE) bench-app python bench/app_http.py

.PHONY: bench
bench: ## Every benchmark against the `make up` stack (HTTP, cache, queue, PgBouncer, scale-out, deploy) -> BENCHMARKS.md, then the member import
	@$(STAGE) bench python bench/run.py --write
	@$(STAGE) bench-member-import python bench/import_members.py

.PHONY: bench-load
bench-load: ## The load profiles (Locust, loopback): smoke, load, spike with its recovery time, conversation -> .cache/bench/load_profiles.md
	@$(STAGE) bench-load python bench/load_profiles.py --profiles smoke,load,spike,conversation

.PHONY: bench-soak
bench-soak: ## The soak profile: 15 minutes of the realistic mix on loopback, memory and latency over time
	@$(STAGE) bench-soak python bench/load_profiles.py --profiles soak --soak-seconds 900

.PHONY: bench-smoke
bench-smoke: ## The benchmarks in their smallest mode, so they cannot rot (part of make test)
	@$(call run_stages,bench-smoke)

.PHONY: test-collection
test-collection: ## Build the collection tarball, install it, run its roles by FQCN
	@$(call run_stages,collection-build)

.PHONY: up
up: ## The whole stack on local containers (Debian 13; DEBIAN=12 for the other; HA=1: the HA stack), deployed by site.yml; prints the URL
	@env DEBIAN=$(DEBIAN) HA=$(HA) scripts/up.sh --check-args
	@$(if $(filter 1,$(SKIP_SETUP)),:,$(MAKE) --no-print-directory setup)
	@$(STAGE) up$(if $(filter 1,$(HA)),-ha) env DEBIAN=$(DEBIAN) HA=$(HA) scripts/up.sh

.PHONY: down
down: ## Remove the containers of make up (HA=1: of make up HA=1)
	@env HA=$(HA) scripts/down.sh

.PHONY: molecule
molecule: ## molecule test of every scenario, TEST_JOBS at once (SCENARIOS="data default" to choose)
	@$(call run_stages,$(addprefix molecule-,$(SCENARIOS)))
