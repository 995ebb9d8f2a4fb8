#!/usr/bin/env bash
# Checks and times the CUDA build on a machine with an NVIDIA GPU and PyTorch (no Rust or
# network needed there), in this order, so that a run cut short still has the important part:
#   1. correctness: the GPU path against the CPU path (tests/cuda.rs: logits, loss, every
#      gradient, whole training steps, the sampler, checkpoints across devices), f32, TF32 off;
#   2. `charrnn bench --device cuda` at the tutorial configuration (f32, then --precision
#      tf32), and PyTorch's nn.GRU (cuDNN, f32 and TF32) with the same model, batch and
#      sequence length, on the same GPU;
#   3. generation at batch 1, both (part of 2);
#   4. one epoch of the tutorial configuration, then on to 10 epochs if the first was fast;
#   5. with BEST_SECONDS=N set, `--preset best` for up to N seconds (the quality target).
#
# Usage: scripts/gpu-check.sh [BIN_DIR] [OUT_DIR]
#   BIN_DIR holds charrnn and gpu-tests, or their .xz (scripts/build-cuda.sh makes both in
#   target/gpu); results go to OUT_DIR (default gpu-check/), a summary to stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/gpu}
OUT=${2:-gpu-check}
MAX_EPOCH_S=${MAX_EPOCH_S:-25}
mkdir -p "$OUT"
RUN=$(mktemp -d)
for f in charrnn gpu-tests; do
  if [ -e "$BIN/$f.xz" ]; then xz -dc "$BIN/$f.xz" > "$RUN/$f"; else cp "$BIN/$f" "$RUN/$f"; fi
  chmod +x "$RUN/$f"
done

# CUDA 13 runtime libraries from the PyTorch install; the driver's libcuda.
NV=$(python3 -c 'import nvidia.cu13 as m; print(list(m.__path__)[0])')/lib
export LD_LIBRARY_PATH="$NV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! ldconfig -p | grep -q 'libcuda.so.1 '; then
  for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
    [ -e "$d/libcuda.so.1" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d" && break
  done
fi
if ldd "$RUN/charrnn" | grep 'not found'; then echo "libraries missing (above)" >&2; exit 127; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== 1. GPU against CPU"
"$RUN/gpu-tests" --test-threads 1 --nocapture > "$OUT/tests.txt" 2>&1
tests=$?
grep -E "relative|logits|gradient|agree|step [0-9]|weights|test result|panicked|FAILED" "$OUT/tests.txt" | tail -80
[ $tests -eq 0 ] || echo "GPU TESTS FAILED (rc $tests); timings follow anyway"

echo "== 2, 3. training step and generation: charrnn vs PyTorch + cuDNN"
"$RUN/charrnn" bench --device cuda --batches 30 --gen-chars 5000 --json > "$OUT/bench-charrnn.json"
"$RUN/charrnn" bench --device cuda --precision tf32 --batches 30 --gen-chars 5000 --json > "$OUT/bench-charrnn-tf32.json"
python3 scripts/torch_gru_baseline.py > "$OUT/bench-torch.json"
python3 scripts/torch_gru_baseline.py --tf32 > "$OUT/bench-torch-tf32.json"
python3 - "$OUT" <<'EOF'
import json, sys
d = sys.argv[1]
c = json.load(open(f"{d}/bench-charrnn.json"))
c32 = json.load(open(f"{d}/bench-charrnn-tf32.json"))
t = json.load(open(f"{d}/bench-torch.json"))
t32 = json.load(open(f"{d}/bench-torch-tf32.json"))
print(f"charrnn: {c['train_ms_per_batch']:.2f} ms/batch, {c['achieved_gflops']:.0f} GFLOP/s "
      f"({100 * c['gemm_fraction']:.0f}% of the {c['gemm_gflops']:.0f} GFLOP/s f32 GEMM), "
      f"generation {c['gen_chars_per_s']:.0f} chars/s")
print(f"charrnn --precision tf32: {c32['train_ms_per_batch']:.2f} ms/batch; against PyTorch with TF32 "
      f"{c32['train_ms_per_batch'] / t32['train_ms_per_batch']:.2f} of its time")
for r in (t, t32):
    print(f"{r['framework']} TF32 {r['tf32']}: {r['train_ms_per_batch']:.2f} ms/batch, generation "
          f"{r['gen_chars_per_s']:.0f} chars/s; charrnn/pytorch time ratio "
          f"{c['train_ms_per_batch'] / r['train_ms_per_batch']:.2f}, generation ratio "
          f"{c['gen_chars_per_s'] / r['gen_chars_per_s']:.2f}")
EOF

echo "== 4. tutorial training on the GPU"
CK=$(mktemp -d)
start=$(date +%s.%N)
"$RUN/charrnn" train --epochs 1 --device cuda --seed 1 --checkpoint-dir "$CK" > "$OUT/train.txt" 2>&1
rc=$?
end=$(date +%s.%N)
epoch_s=$(python3 -c "print(f'{$end - $start:.1f}')")
grep -E "epoch|loss" "$OUT/train.txt" | tail -5
echo "epoch 1: rc $rc, ${epoch_s} s wall (process start and validation included)"
if [ $rc -eq 0 ] && python3 -c "import sys; sys.exit(0 if $epoch_s < $MAX_EPOCH_S else 1)"; then
  start=$(date +%s.%N)
  "$RUN/charrnn" train --epochs 10 --device cuda --resume "$CK" >> "$OUT/train.txt" 2>&1
  echo "epochs 2-10: rc $?, $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s wall"
  grep -E "epoch" "$OUT/train.txt" | tail -12
fi
cp "$CK/metrics.jsonl" "$OUT/" 2>/dev/null
echo "== a sample from the GPU-trained model, drawn on the GPU, then on the CPU (same seed)"
"$RUN/charrnn" generate --checkpoint "$CK" --device cuda --seed 3 --length 300 2>/dev/null | tee "$OUT/sample.txt"
"$RUN/charrnn" generate --checkpoint "$CK" --device cpu --seed 3 --length 300 2>/dev/null > "$OUT/sample-cpu.txt"
cmp -s "$OUT/sample.txt" "$OUT/sample-cpu.txt" && echo "(the CPU drew the same text)" || echo "(the CPU's text differs)"
if [ -n "${BEST_SECONDS:-}" ]; then
  echo "== 5. --preset best for up to $BEST_SECONDS s"
  CB=$(mktemp -d)
  timeout -s INT "$BEST_SECONDS" "$RUN/charrnn" train --preset best --device cuda --seed 1 \
    --checkpoint-dir "$CB" > "$OUT/best.txt" 2>&1
  grep -E "validation|Time taken|stopped" "$OUT/best.txt"
  cp "$CB/metrics.jsonl" "$OUT/best-metrics.jsonl" 2>/dev/null
fi
exit $tests
