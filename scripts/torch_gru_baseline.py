"""PyTorch's nn.GRU (cuDNN on a GPU) on the tutorial's model, timed the way `charrnn bench` times
itself.

Same model (Embedding 256 -> GRU 1024 -> Linear 65), batch 64 x 100 characters, Adam with the
tutorial's settings; each training step reads its loss back (as charrnn's does). Generation is
the usual step loop at batch 1: one character in, softmax at temperature 1, multinomial draw,
the drawn id fed back, all on the device with no copy to the host per character.

With --bf16 the forward pass and the loss run under torch.autocast in bf16 (on a CPU with AMX
or AVX512-BF16, oneDNN's bf16 kernels), PyTorch's own mixed precision: f32 weights and Adam.

Usage: python3 scripts/torch_gru_baseline.py [--device cuda|cpu] [--rnn-units H] [--tf32]
       [--bf16] [--batches N] [--gen-chars N]
Prints one JSON object.
"""

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--rnn-units", type=int, default=1024)
    p.add_argument("--tf32", action="store_true", help="allow TF32 in cuDNN and cuBLAS")
    p.add_argument("--bf16", action="store_true", help="autocast the forward pass and loss to bf16")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--gen-chars", type=int, default=2000)
    a = p.parse_args()
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    dev = torch.device(a.device)
    V, E, H, B, T = 65, 256, a.rnn_units, 64, 100

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, E)
            self.gru = torch.nn.GRU(E, H, batch_first=True)
            self.dense = torch.nn.Linear(H, V)

        def forward(self, x, h=None):
            out, h = self.gru(self.embedding(x), h)
            return self.dense(out), h

    torch.manual_seed(0)
    model = Model().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    x = torch.randint(0, V, (B, T), device=dev)
    y = torch.randint(0, V, (B, T), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            logits, _ = model(x)
            loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(5):
        step()
    times = []
    for _ in range(a.batches):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3

    @torch.no_grad()
    def generate(n):
        h = None
        ids = torch.zeros((1, 1), dtype=torch.long, device=dev)
        out = torch.empty(n, dtype=torch.long, device=dev)
        for i in range(n):
            logits, h = model(ids, h)
            probs = torch.softmax(logits[:, -1, :] / 1.0, dim=-1)
            ids = torch.multinomial(probs, 1)
            out[i] = ids[0, 0]
        return out.tolist()

    generate(100)
    sync()
    t0 = time.perf_counter()
    generate(a.gen_chars)
    sync()
    gen = a.gen_chars / (time.perf_counter() - t0)
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}"
        + (f", cuDNN {torch.backends.cudnn.version()}" if dev.type == "cuda" else ""),
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
        "rnn_units": H,
        # Set by scripts/cpu-bench.sh to run the CPU kernels of an AVX2-only machine.
        "isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA", "none"),
        "tf32": a.tf32,
        "bf16": a.bf16,
        "train_ms_per_batch": ms,
        "train_ms_per_batch_all": [t * 1e3 for t in times],
        "gen_chars_per_s": gen,
    }))


if __name__ == "__main__":
    main()
