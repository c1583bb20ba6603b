#!/usr/bin/env bash
# sqlx's compile-time checked queries (`sqlx::query!` and friends) and their offline data.
#
# Builds read the committed `.sqlx/` (SQLX_OFFLINE=true in .cargo/config.toml), so building needs
# no database. This script describes the queries against a fresh database with every migration
# applied, in the embedded Postgres under target/tmp/sqlx-pg:
#
#   scripts/sqlx.sh prepare   rewrite .sqlx/ from the current queries (run after changing one)
#   scripts/sqlx.sh check     clippy with the queries checked against the live schema, then fail
#                             when .sqlx/ is not exactly what they produce (stale or missing data)
#   scripts/sqlx.sh url       print the URL of the migrated database (for DATABASE_URL)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
DATA_DIR=target/tmp/sqlx-pg
mode=${1:-check}

# The binary that starts the embedded Postgres builds from the committed offline data; while a
# new query has none yet (prepare), an earlier build of it serves.
if ! TESSERA_LOG=warn $CARGO build --quiet --bin tessera 2>/dev/null; then
    if [ "$mode" = check ] || [ ! -x target/debug/tessera ]; then
        TESSERA_LOG=warn $CARGO build --quiet --bin tessera
    fi
    echo "sqlx: using the earlier build of target/debug/tessera to start Postgres" >&2
fi
url=$(TESSERA_LOG=warn target/debug/tessera --data-dir "$DATA_DIR" db schema tessera_schema)

# Queries are only re-described when the crate recompiles.
rerun() {
    touch src/lib.rs
    DATABASE_URL="$url" SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$1" "${@:2}"
}

case "$mode" in
    url)
        echo "$url"
        ;;
    prepare)
        mkdir -p .sqlx && rm -f .sqlx/query-*.json
        rerun "$PWD/.sqlx" $CARGO check --quiet --all-targets
        echo "sqlx: $(ls .sqlx | wc -l) queries described in .sqlx/"
        ;;
    check)
        mkdir -p .sqlx
        fresh=$PWD/target/sqlx-fresh
        rm -rf "$fresh" && mkdir -p "$fresh"
        rerun "$fresh" $CARGO clippy --all-targets -- -D warnings
        if ! diff -r -q .sqlx "$fresh" >/dev/null; then
            diff -r -q .sqlx "$fresh" || true
            echo "sqlx: .sqlx/ is stale; run 'scripts/sqlx.sh prepare' and commit .sqlx/" >&2
            exit 1
        fi
        echo "sqlx: .sqlx/ matches the $(ls "$fresh" | wc -l) checked queries"
        ;;
    *)
        echo "usage: scripts/sqlx.sh prepare|check|url" >&2
        exit 64
        ;;
esac
