#!/usr/bin/env bash
# Builds target/release/charrnn with the `cuda` feature on a machine with no GPU and no CUDA
# install, for NVIDIA H100/H200 (compute capability 9.0) under driver 580 / CUDA 13.0.
#
# It installs the CUDA 13.0.2 toolkit wheels from PyPI into a throwaway virtual environment
# (the same versions PyTorch's cu130 builds pin), adds what the wheels lack for linking
# (unversioned library names and a stub libcuda), and runs cargo. nvcc must stay 13.0.x:
# newer releases write PTX that driver 580 cannot load.
#
# Usage: scripts/build-cuda.sh [extra cargo args]     (WORK=dir keeps the toolkit between runs)
# Output: target/cuda/charrnn and the GPU tests target/cuda/gpu-tests (stripped), and both
# xz-compressed in target/gpu/ for scripts/gpu-check.sh.
# Run time: the binary needs CUDA 13 libcublas, libcublasLt, libcurand and libcudart on the
# library path (e.g. a PyTorch cu130 install's site-packages/nvidia/cu13/lib) and the
# driver's libcuda.so.1. Never ship the stub libcuda made here.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
[ -x "$WORK/venv/bin/python" ] || python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "cuda-toolkit[nvcc,crt,cccl,nvvm,cudart,cublas,curand,nvrtc]==13.0.2"
CU=$("$WORK/venv/bin/python" -c 'import nvidia.cu13 as m; print(list(m.__path__)[0])')
"$CU/bin/nvcc" --version | grep -q 'release 13\.0' || { echo "nvcc is not 13.0.x" >&2; exit 1; }

# Link-time names: -lcudart -lcublas ... resolve to the wheels' versioned libraries.
LINK="$WORK/linkroot/lib"
mkdir -p "$LINK"
for lib in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
  ln -sf "$CU/lib/lib$lib" "$LINK/lib${lib%%.so*}.so"
done
# A stub libcuda (soname libcuda.so.1) exporting the driver functions cudarc declares; the
# real one comes from the driver at run time.
cargo fetch -q
CUDARC=$(cargo metadata --format-version 1 --features cuda | "$WORK/venv/bin/python" -c '
import json, os, sys
pkgs = json.load(sys.stdin)["packages"]
print(next(os.path.dirname(p["manifest_path"]) for p in pkgs if p["name"] == "cudarc"))')
grep -A1 'extern "C" {' "$CUDARC/src/driver/sys/mod.rs" | grep -oP '^\s*(pub )?fn \K\w+' | sort -u \
  | awk '{ print "void " $1 "(void) {}" }' > "$WORK/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$WORK/cuda_stub.c"

export PATH="$CU/bin:$PATH" CUDA_ROOT="$WORK/linkroot" CUDA_COMPUTE_CAP=90 \
  CUDARC_CUDA_VERSION=13000 CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
# A target folder of its own, so CPU and CUDA builds do not rebuild each other's dependencies.
nice -n 19 cargo build --release --features cuda --target-dir target/cuda "$@"
strip -o target/cuda/charrnn target/cuda/release/charrnn
echo "built target/cuda/charrnn ($(du -h target/cuda/charrnn | cut -f1))"

# The GPU-against-CPU tests (tests/cuda.rs), for scripts/gpu-check.sh on a GPU machine.
tests=$(nice -n 19 cargo test --release --features cuda --target-dir target/cuda --test cuda --no-run \
  --message-format json "$@" | "$WORK/venv/bin/python" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
strip -o target/cuda/gpu-tests "$tests"
# Compressed copies to carry to a GPU machine (about a tenth of the size).
mkdir -p target/gpu
for f in charrnn gpu-tests; do xz -T2 -6 -c "target/cuda/$f" > "target/gpu/$f.xz"; done
echo "built target/cuda/gpu-tests; compressed copies of both in target/gpu/"
