#!/usr/bin/env python3
"""Measures `charrnn serve` against `charrnn generate` in one run, on one checkpoint.

    scripts/serve-load.py CHECKPOINT [--binary target/release/charrnn] [--length 2000] [--clients 16]
                          [--precision f32[,int8,...]]

Reports, as ratios to numbers measured in this same run:
  - `generate`'s characters per second (from two lengths, so that loading the model cancels) and
    one streaming client's, alternated three times, medians compared;
  - the first byte of a streamed answer after the request, at idle;
  - N concurrent streaming clients' aggregate characters per second, each client's text checked
    to be identical to what the same seed gives alone;
  - the server's resident memory idle and under the N clients.
With several precisions (`--precision f32,int8`) each is measured in turn, and the aggregate
rates and memory are compared with the first's.
Only the Python standard library is used.
"""

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time


def generate_rate(binary, ckpt, length, precision):
    def run(n):
        t = time.perf_counter()
        subprocess.run([binary, "generate", "--checkpoint", ckpt, "--length", str(n), "--seed", "1",
                        "--precision", precision],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t
    short, long_ = run(length // 4), run(length + length // 4)
    return length / (long_ - short)


def stream(port, body, out):
    """One streaming request: fills out with first-byte latency, total time and the text."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/generate", json.dumps(dict(body, stream=True)), {"Content-Type": "application/json"})
    r = c.getresponse()
    first = None
    text = ""
    event = None
    while True:
        line = r.readline()
        if not line:
            break
        if first is None:
            first = time.perf_counter() - t0
        line = line.decode().rstrip("\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            d = json.loads(line[5:])
            if event == "text":
                text += d["text"]
            elif event == "done":
                out.update(done=d)
    out.update(first_byte_s=first, seconds=time.perf_counter() - t0, text=text)
    c.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--binary", default="target/release/charrnn")
    p.add_argument("--length", type=int, default=2000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--precision", default="f32", help="one or more, comma-separated")
    a = p.parse_args()
    reports = [measure(a, precision) for precision in a.precision.split(",")]
    first = reports[0]
    for r in reports[1:]:
        for key in ("aggregate_chars_per_s", "one_client_chars_per_s", "rss_idle_mib", "rss_peak_under_load_mib"):
            r[f"{key}_vs_{first['precision']}"] = round(r[key] / first[key], 2)
    print(json.dumps(reports if len(reports) > 1 else first, indent=2))
    return 0 if all(r["all_identical"] for r in reports) else 1


def measure(a, precision):
    server = subprocess.Popen([a.binary, "serve", "--checkpoint", a.checkpoint, "--port", "0",
                               "--precision", precision],
                              stderr=subprocess.PIPE, text=True)
    port = None
    for line in server.stderr:
        if "listening on http://" in line:
            port = int(line.rsplit(":", 1)[1])
            break
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    try:
        idle_rss = rss_kib(server.pid)
        # Warm up, then one client, then the first byte at idle (short requests).
        stream(port, {"length": 50, "seed": 0}, {})
        # One client and `generate`, alternated three times (this machine is shared and noisy):
        # the medians are compared.
        gens, ones = [], []
        for _ in range(3):
            gens.append(generate_rate(a.binary, a.checkpoint, a.length, precision))
            solo = {}
            stream(port, {"length": a.length, "seed": 1}, solo)
            ones.append(a.length / solo["seconds"])
        gen, one_rate = sorted(gens)[1], sorted(ones)[1]
        firsts = []
        for s in range(5):
            r = {}
            stream(port, {"length": 5, "seed": s}, r)
            firsts.append(r["first_byte_s"])
        # The same seeds alone, to check the texts under load against.
        alone = []
        for s in range(a.clients):
            r = {}
            stream(port, {"length": 200, "seed": 100 + s}, r)
            alone.append(r["text"])
        results = [{} for _ in range(a.clients)]
        peak = [0]

        def watch():
            while any("seconds" not in r for r in results):
                peak[0] = max(peak[0], rss_kib(server.pid))
                time.sleep(0.05)

        threads = [threading.Thread(target=stream, args=(port, {"length": a.length, "seed": 100 + i}, results[i]))
                   for i in range(a.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        w = threading.Thread(target=watch)
        w.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        w.join()
        aggregate = a.clients * a.length / wall
        same = sum(r["text"][:len(alone[i])] == alone[i] for i, r in enumerate(results))
        return {
            "precision": precision,
            "generate_chars_per_s": round(gen),
            "one_client_chars_per_s": round(one_rate),
            "one_client_vs_generate": round(one_rate / gen, 3),
            "first_byte_ms_median": round(sorted(firsts)[len(firsts) // 2] * 1000, 2),
            "clients": a.clients,
            "aggregate_chars_per_s": round(aggregate),
            "aggregate_vs_one_client": round(aggregate / one_rate, 2),
            "texts_identical_to_alone": f"{same} of {a.clients}",
            "rss_idle_mib": round(idle_rss / 1024, 1),
            "rss_peak_under_load_mib": round(peak[0] / 1024, 1),
            "all_identical": same == a.clients,
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
