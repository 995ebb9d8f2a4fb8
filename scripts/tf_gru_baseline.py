"""The TensorFlow tutorial's model and training step, timed the way `charrnn bench` times itself.

Embedding(65, 256) -> GRU(1024, return_sequences) -> Dense(65) as the tutorial builds it
(Keras defaults: reset_after, cuDNN-compatible), sparse categorical cross-entropy on logits,
Adam with the tutorial's settings; one compiled `train_on_batch` per batch on random ids.

Usage: python3 scripts/tf_gru_baseline.py [--rnn-units H] [--batches N]
Prints one JSON object.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rnn-units", type=int, default=1024)
    p.add_argument("--batches", type=int, default=9)
    a = p.parse_args()
    V, E, H, B, T = 65, 256, a.rnn_units, 64, 100
    tf.random.set_seed(0)
    model = tf.keras.Sequential([
        tf.keras.layers.Embedding(V, E),
        tf.keras.layers.GRU(H, return_sequences=True),
        tf.keras.layers.Dense(V),
    ])
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B, T))
    for _ in range(3):
        model.train_on_batch(x, y)
    times = []
    for _ in range(a.batches):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    print(json.dumps({
        "framework": f"tensorflow {tf.__version__}",
        "device": f"cpu, {tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} threads",
        "rnn_units": H,
        "isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA", "none"),
        "train_ms_per_batch": statistics.median(times) * 1e3,
        "train_ms_per_batch_all": [t * 1e3 for t in times],
    }))


if __name__ == "__main__":
    main()
