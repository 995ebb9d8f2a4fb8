#!/usr/bin/env bash
# Type-checks and lints the `cuda` feature (with NCCL for ranks on GPUs, so MPI must be
# installed: scripts/install-mpi.sh) without a GPU or CUDA toolkit (see fake-nvcc).
# Uses its own target folder so the CPU build is not invalidated.
set -euo pipefail
cd "$(dirname "$0")/.."
stand_in=$(mktemp -d)
trap 'rm -rf "$stand_in"' EXIT
install -m 755 scripts/fake-nvcc "$stand_in/nvcc"
export PATH="$stand_in:$PATH" NVCC="$stand_in/nvcc" CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
cargo clippy --release --all-targets --features nccl --target-dir target/cuda-check -- -D warnings -W clippy::undocumented_unsafe_blocks
