# sluice development tasks. Local services run without Docker (scripts/services.sh);
# endpoints and development credentials come from dev.env.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Cargo's output directory; CARGO_TARGET_DIR from the environment wins.
TARGET_DIR := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),$(CURDIR)/target)
SLUICE_BIN ?= $(TARGET_DIR)/release/sluice
export SLUICE_BIN
MODULES_DIR := $(CURDIR)/modules
GUEST_DIR := $(TARGET_DIR)/wasm32-wasip2/guest
GUESTS := producer backup features
# Test-only guests (host/tests/guests, cargo examples) for the integration
# tests, copied into modules/test/ with the WAT component grow_table.wat.
TEST_GUESTS := loop_forever grow_memory trap_on_user wrong_count read_clock sleep read_random \
	open_file open_socket read_env features_rebuilt features_v2 always_fails generator_xts generator_users hoard_keys \
	filter_batch filter_records
TEST_GUEST_CRATE := host/tests/guests

# Tools installed with `cargo install` live here.
export PATH := $(if $(CARGO_HOME),$(CARGO_HOME),$(HOME)/.cargo)/bin:$(PATH)
# Exports dev.env into a recipe's shell.
LOAD_ENV := set -a && . ./dev.env && set +a

.PHONY: help wasm-target guests test-guests build tools demo-tools services services-demo services-down services-status setup demo test lint bench clean-data

help:
	@echo 'make build          build the host binary (release)'
	@echo 'make guests         build the wasm32-wasip2 guests into modules/'
	@echo 'make test-guests    build the test-only guests into modules/test/'
	@echo 'make tools          install the wasm target, nisshi and garage if missing (slow the first time)'
	@echo 'make services       start the local services (scripts/services.sh up)'
	@echo 'make services-demo  the same without Garage (what make demo uses)'
	@echo 'make services-down  stop them'
	@echo 'make setup          services + sluice setup (topics, users, schemas)'
	@echo 'make demo           produce, back up and compute features end to end'
	@echo 'make test           guests + test guests + services, then the test suite'
	@echo 'make lint           rustfmt and clippy'
	@echo 'make bench          records/s of both jobs against the Python peer baseline'
	@echo 'make clean-data     stop services; delete .sluice/, data/, the Kafka database, Redis feature keys'

wasm-target:
	bash scripts/install-tools.sh wasm-target

guests: wasm-target
	$(CARGO) build --profile guest --target wasm32-wasip2 $(foreach g,$(GUESTS),-p sluice-guest-$(g))
	mkdir -p $(MODULES_DIR)
	$(foreach g,$(GUESTS),cp $(GUEST_DIR)/sluice_guest_$(g).wasm $(MODULES_DIR)/$(g).wasm && ) true
	@ls -l $(MODULES_DIR)

test-guests: wasm-target
	$(CARGO) build --profile guest --target wasm32-wasip2 -p sluice-test-guests --examples
	mkdir -p $(MODULES_DIR)/test
	$(foreach g,$(TEST_GUESTS),cp $(GUEST_DIR)/examples/$(g).wasm $(MODULES_DIR)/test/$(g).wasm && ) true
	cp $(TEST_GUEST_CRATE)/grow_table.wat $(MODULES_DIR)/test/grow_table.wat
	@ls -l $(MODULES_DIR)/test

build:
	$(CARGO) build --release -p sluice

tools:
	bash scripts/install-tools.sh

# The demo writes file://, so it needs neither Garage nor its 11-minute build.
demo-tools:
	bash scripts/install-tools.sh wasm-target nisshi

services: tools build
	bash scripts/services.sh up

services-demo: demo-tools build
	bash scripts/services.sh up --no-s3

services-down:
	bash scripts/services.sh down

services-status:
	bash scripts/services.sh status

setup: services-demo
	$(LOAD_ENV) && $(SLUICE_BIN) setup

demo: guests setup
	bash scripts/demo.sh

# The broker-outage test stops the broker every test shares, so it runs alone,
# after the others.
test: guests test-guests services
	$(LOAD_ENV) && export SLUICE_TEST_MODULES=$(MODULES_DIR) && \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --release --no-fail-fast -E 'not test(outage)' && \
		$(CARGO) nextest run --workspace --release -E 'test(outage)'; \
	else \
		$(CARGO) test --workspace --release -- --skip outage && \
		$(CARGO) test --workspace --release -- outage; \
	fi

# Throughput against the Python peer baseline (../shared/bench/peer.py).
bench: guests test-guests services
	bash scripts/bench.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Kafka records (PostgreSQL), schema ids (.sluice/registry.json), the archive
# (data/) and the Redis features derive from one another: delete them together.
clean-data:
	bash scripts/services.sh reset
