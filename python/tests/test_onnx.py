"""`charrnn export --onnx` through onnxruntime: GRU, LSTM and RNN models of one and two layers
give charrnn's logits over a text, and a greedy continuation stepped through the exported
states is `charrnn generate --temperature 0`'s text."""

import json
import subprocess

import pytest

import charrnn
from test_charrnn import TINY, command, corpus_text, run

np = pytest.importorskip("numpy")
ort = pytest.importorskip("onnxruntime")

CASES = [(cell, layers) for cell in ("gru", "lstm", "rnn") for layers in (1, 2)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx-data") / "tiny.txt"
    path.write_text(corpus_text(), encoding="utf-8")
    return path


@pytest.mark.parametrize("cell,layers", CASES, ids=lambda x: str(x))
def test_the_onnx_graph_computes_what_charrnn_does(corpus, tmp_path, cell, layers):
    model = charrnn.train(corpus, tmp_path / "run", epochs=2, cell=cell, layers=layers, **TINY)
    path = tmp_path / "model.onnx"
    run("export", "--checkpoint", model.path, "--onnx", path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    vocab = json.loads(meta["vocab"])
    assert vocab == model.vocab and json.loads(meta["config"]) == model.config
    names = [o.name for o in session.get_outputs()]
    lstm = cell == "lstm"
    assert [i.name for i in session.get_inputs()] == ["ids", "h0"] + (["c0"] if lstm else [])
    assert names == ["logits", "hn"] + (["cn"] if lstm else [])
    ids = {c: i for i, c in enumerate(vocab)}
    hidden = model.config["rnn_units"]

    def step(chars, state):
        feed = {"ids": np.array([[ids[c]] for c in chars], dtype=np.int64), "h0": state[0]}
        if lstm:
            feed["c0"] = state[1]
        out = dict(zip(names, session.run(None, feed)))
        return out["logits"][:, 0, :], (out["hn"], out.get("cn"))

    zero = np.zeros((layers, 1, hidden), np.float32)
    text = corpus_text()[:400]
    logits, _ = step(text, (zero, zero))
    want = model.logits(text)
    worst = np.abs(logits - want).max() / np.abs(want).max()
    assert worst < 1e-4, f"logits differ by {worst:.2e} of their largest"

    # Greedy, one character at a time through the exported states.
    start = "ROMEO: "
    logits, state = step(start, (zero, zero))
    sample = start
    for _ in range(200):
        nxt = vocab[int(np.argmax(logits[-1]))]
        sample += nxt
        logits, state = step(nxt, state)
    shown = run("generate", "--checkpoint", model.path, "--temperature", 0, "--length", 200, "--start", start).stdout
    assert sample + "\n" == shown


def test_a_batch_of_sequences_runs_at_once(corpus, tmp_path):
    model = charrnn.train(corpus, tmp_path / "run", epochs=1, **TINY)
    path = tmp_path / "model.onnx"
    run("export", "--checkpoint", model.path, "--onnx", path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    vocab = model.vocab
    texts = ["ROMEO: But", "JULIET: O "]
    ids = np.array([[vocab.index(c) for c in chars] for chars in zip(*texts)], dtype=np.int64)  # [seq, batch]
    h0 = np.zeros((1, 2, model.config["rnn_units"]), np.float32)
    logits, _ = session.run(None, {"ids": ids, "h0": h0})
    for b, text in enumerate(texts):
        assert np.allclose(logits[:, b, :], model.logits(text), rtol=1e-4, atol=1e-4)
    assert subprocess.run([command(), "--version"], capture_output=True).returncode == 0
