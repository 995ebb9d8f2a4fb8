#!/usr/bin/env bash
# One run that times every CPU kernel this machine has, beside PyTorch and TensorFlow on the
# same model, so the ratios come from the same moment of a shared machine. Each line of output
# is one JSON object (charrnn's `bench --json` or a peer script's).
#
# Usage: scripts/cpu-bench.sh [--rnn-units H] [--batches N] [--bf16]
#   --bf16: also charrnn `bench --precision bf16` and PyTorch under bf16 autocast (where the CPU
#   has avx512_bf16).
#   TORCH_PYTHON / TF_PYTHON: interpreters with torch / tensorflow-cpu installed (each peer
#   is skipped when its variable is unset), e.g. from `python3 -m venv v && v/bin/pip install
#   torch` and `... "tensorflow-cpu==2.15.*"`.
set -euo pipefail
cd "$(dirname "$0")/.."
units=1024
batches=9
bf16=0
while (($#)); do
    case $1 in
        --rnn-units) units=$2; shift 2 ;;
        --batches) batches=$2; shift 2 ;;
        --bf16) bf16=1; shift ;;
        *) echo "usage: $0 [--rnn-units H] [--batches N] [--bf16]" >&2; exit 2 ;;
    esac
done
if ((bf16)) && ! grep -q avx512_bf16 /proc/cpuinfo; then
    echo "--bf16: this CPU lacks avx512_bf16" >&2
    exit 2
fi
cargo build --release --quiet
./target/release/charrnn bench --kernel all --rnn-units "$units" --batches "$batches" --gen-chars 20000 --json |
    python3 -c 'import json, sys; [print(json.dumps(r)) for r in json.load(sys.stdin)]'
if ((bf16)); then
    ./target/release/charrnn bench --precision bf16 --rnn-units "$units" --batches "$batches" \
        --gen-chars 20000 --json | python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))'
    if [[ -n "${TORCH_PYTHON:-}" ]]; then
        "$TORCH_PYTHON" scripts/torch_gru_baseline.py --device cpu --bf16 --rnn-units "$units" \
            --batches 3 --gen-chars 200
    fi
fi
# Each peer twice: as it runs here, and capped at AVX2 (oneDNN, MKL and ATen's own kernels), as
# it would run on a CPU without AVX-512, to set beside charrnn's avx2 kernel.
avx2_cap=(env ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2)
for cap in "" "${avx2_cap[*]}"; do
    if [[ -n "${TORCH_PYTHON:-}" ]]; then
        $cap "$TORCH_PYTHON" scripts/torch_gru_baseline.py --device cpu --rnn-units "$units" \
            --batches "$batches" --gen-chars 2000
    fi
    if [[ -n "${TF_PYTHON:-}" ]]; then
        $cap "$TF_PYTHON" scripts/tf_gru_baseline.py --rnn-units "$units" --batches "$batches"
    fi
done
