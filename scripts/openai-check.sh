#!/usr/bin/env bash
# `charrnn serve` through the official `openai` Python package (from PyPI, in a venv of its
# own under target/): tests/python/test_openai_client.py against the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv-openai
if [[ ! -x "$venv/bin/pytest" ]] || ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'openai>=1.40,<3' 'pytest>=8'
fi
cargo build --release --quiet
CHARRNN="$PWD/target/release/charrnn" "$venv/bin/pytest" -q tests/python/test_openai_client.py
