#!/usr/bin/env bash
# The Python package: builds the wheel with maturin (from PyPI, in a venv of its own), installs
# it into a fresh venv with pytest, NumPy and tqdm, and runs the package's tests, comparing its
# texts, scores and messages with the cargo-built binary's, and its ONNX exports run by
# onnxruntime with charrnn's own logits.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/venv-maturin
if [[ ! -x $tools/bin/maturin ]]; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check 'maturin>=1.9,<2'
fi
cargo build --release --quiet   # the binary the tests compare with
rm -rf target/wheels
started=$(date +%s)
"$tools/bin/maturin" build --release --quiet -m python/Cargo.toml --out target/wheels
wheel=$(ls target/wheels/charrnn-*.whl)
echo "python-check: built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB) in $(($(date +%s) - started)) s" >&2
venv=target/venv-python
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$wheel" pytest numpy tqdm onnxruntime
CHARRNN_BIN="$PWD/target/release/charrnn" "$venv/bin/python" -m pytest -q python/tests
