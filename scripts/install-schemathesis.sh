#!/usr/bin/env bash
# Installs the pinned schemathesis that the contract test runs against the committed OpenAPI document
# (tests/gateway.rs::openapi_contract_holds_under_schemathesis) into its own virtualenv, ./.schemathesis
# (ignored by git), from PyPI. Idempotent: returns at once when the pinned version is already there.
# Prints the path of the `schemathesis` executable on stdout. Needs python3 (with venv or pip); no root.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${TESSERA_SCHEMATHESIS_DIR:-.schemathesis}"
PIN="schemathesis==4.32.5"
STAMP="$VENV/.installed"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$PIN" && -x "$VENV/bin/schemathesis" ]]; then
    echo "$PWD/$VENV/bin/schemathesis"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install-schemathesis: python3 is required (for example: apt-get install python3 python3-venv)." >&2
    exit 1
fi

echo "install-schemathesis: installing $PIN into $VENV" >&2
# Built in place (a venv records its own path in its scripts); the stamp, written last, marks it complete.
rm -rf "$VENV"
if "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
    PIP=("$VENV/bin/python" -m pip)
else
    # Debian's python3 without python3-venv has no ensurepip: make the venv bare and install into it with
    # the interpreter's own pip.
    rm -rf "$VENV"
    "$PYTHON" -m venv --without-pip "$VENV"
    PIP=("$PYTHON" -m pip --python "$VENV/bin/python")
fi
"${PIP[@]}" install --quiet --disable-pip-version-check --no-input "$PIN" >&2
echo "$PIN" > "$STAMP"
echo "install-schemathesis: done" >&2
echo "$PWD/$VENV/bin/schemathesis"
