#!/usr/bin/env bash
# Installs Open MPI (mpirun and the library with its headers) and libclang, which the `mpi`
# crate's bindings are generated with, from Debian's packages: for the `mpi` and `nccl`
# features. Does nothing where they are there. Needs root (as in CI) and Debian's mirror.
set -euo pipefail
if command -v mpirun >/dev/null && command -v mpicc >/dev/null && ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install-mpi: not root; install openmpi-bin, libopenmpi-dev and libclang-dev by hand" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev >/dev/null
echo "install-mpi: $(mpirun --version | head -1)" >&2
