#!/usr/bin/env bash
# Data-parallel training under MPI: builds the binary with the `mpi` feature and runs
# tests/mpi.rs against Open MPI's `mpirun` (scripts/install-mpi.sh), its traffic on TCP over
# loopback, and two hosts made of network namespaces, which CI (root) must be able to make.
# (Its code is linted by scripts/cuda-check.sh, whose nccl feature includes mpi.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-mpi.sh
if [[ $(id -u) -eq 0 ]] && command -v ip >/dev/null; then
    export CHARRNN_REQUIRE_NETNS=1
fi
cargo test --release --features mpi --test mpi
