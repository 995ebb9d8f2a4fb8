#!/usr/bin/env python3
"""Measures preparing and training on a large corpus, against the shipped one, in one run.

    scripts/corpus-bench.py WORKDIR [--binary target/release/charrnn] [--gigabytes 1]

Makes (once) WORKDIR/big.txt, Shakespeare repeated to the size asked, and WORKDIR/folder,
10,000 small files cut from it, then reports:
  - preparing both together (a cold token cache): seconds, MB/s, peak resident and peak
    anonymous memory (RssAnon: what the kernel cannot drop, unlike the mapped pages);
  - training at the tutorial configuration on them and on data/shakespeare.txt: peak RSS and
    anonymous memory, and ms per batch from two run lengths (so start-up cancels).
Only the Python standard library is used.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_corpora(work, gigabytes):
    os.makedirs(work, exist_ok=True)
    src = open(os.path.join(ROOT, "data", "shakespeare.txt"), "rb").read()
    big = os.path.join(work, "big.txt")
    want = int(gigabytes * (1 << 30))
    if not os.path.exists(big) or os.path.getsize(big) < want:
        with open(big, "wb") as f:
            for _ in range(want // len(src) + 1):
                f.write(src)
    folder = os.path.join(work, "folder")
    if not os.path.isdir(folder):
        lines = src.split(b"\n")
        for i in range(10_000):
            d = os.path.join(folder, f"{i // 100:03d}")
            os.makedirs(d, exist_ok=True)
            start = (i * 100) % len(lines)
            with open(os.path.join(d, f"{i:05d}.txt"), "wb") as f:
                f.write(b"\n".join(lines[start:start + 100]))
    return big, folder


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(args, env):
    """Runs the binary; returns (seconds, peak RSS MiB, peak anonymous MiB, stderr)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    peak = {"rss": 0, "anon": 0}

    def watch():
        while p.poll() is None:
            peak["rss"] = max(peak["rss"], status_kib(p.pid, "VmRSS"))
            peak["anon"] = max(peak["anon"], status_kib(p.pid, "RssAnon"))
            time.sleep(0.02)

    w = threading.Thread(target=watch)
    w.start()
    err = p.stderr.read()
    p.wait()
    w.join()
    if p.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{err}")
    return time.perf_counter() - t0, peak["rss"] / 1024, peak["anon"] / 1024, err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "charrnn"))
    ap.add_argument("--gigabytes", type=float, default=1.0)
    a = ap.parse_args()
    big, folder = make_corpora(a.work, a.gigabytes)
    cache = tempfile.mkdtemp(prefix="charrnn-cache-")
    env = dict(os.environ, CHARRNN_CACHE_DIR=cache)
    small = ["--rnn-units", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-len", "20"]

    def train(data, steps, extra, ck):
        args = [a.binary, "train", "--data", *data, "--checkpoint-dir", os.path.join(a.work, ck), "--overwrite",
                "--max-steps", str(steps), "--device", "cpu", *extra]
        return run(args, env)

    report = {}
    size = os.path.getsize(big) + sum(os.path.getsize(os.path.join(d, f))
                                       for d, _, fs in os.walk(folder) for f in fs)
    secs, rss, anon, err = train([big, folder], 1, small, "prep")
    prepared = [l for l in err.splitlines() if l.startswith("prepared")]
    report["prepare"] = {"bytes": size, "seconds_whole_command": round(secs, 2), "log": prepared,
                         "mb_per_s_whole_command": round(size / 1e6 / secs), "peak_rss_mib": round(rss, 1),
                         "peak_anon_mib": round(anon, 1)}
    shakespeare = os.path.join(ROOT, "data", "shakespeare.txt")
    for name, data in [("shakespeare", [shakespeare]), ("large", [big, folder])]:
        train(data, 1, [], "warm-" + name)  # builds the cache where needed
        s1, _, _, _ = train(data, 2, [], "t-" + name)
        s2, rss, anon, _ = train(data, 7, [], "t-" + name)
        report["train_" + name] = {"ms_per_batch": round((s2 - s1) / 5 * 1000), "peak_rss_mib": round(rss, 1),
                                   "peak_anon_mib": round(anon, 1)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
