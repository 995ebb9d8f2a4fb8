"""The Python package against the command line: the same texts, scores and refusals, Ctrl-C
and exact resume, several models and threads in one process, and the installed command.

The command compared against is `CHARRNN_BIN` when set (the cargo-built binary), else the
`charrnn` the wheel installed beside this Python.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import charrnn

HERE = Path(__file__).resolve().parent
# A tiny model: a few seconds per run on two cores.
TINY = dict(rnn_units=32, embedding_dim=8, seq_len=20, batch_size=8, seed=1, progress=False)


def command() -> str:
    explicit = os.environ.get("CHARRNN_BIN")
    if explicit:
        return explicit
    installed = Path(sys.executable).parent / "charrnn"
    assert installed.exists(), f"the wheel's charrnn command is not at {installed}"
    return str(installed)


def run(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [command(), *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs
    )
    if check and result.returncode != 0:
        raise AssertionError(f"charrnn {args} failed ({result.returncode}): {result.stderr}")
    return result


def corpus_text() -> str:
    lines = [
        "ROMEO: But soft, what light through yonder window breaks?",
        "JULIET: O Romeo, Romeo, wherefore art thou Romeo?",
        "ROMEO: It is the east, and Juliet is the sun.",
        "JULIET: Deny thy father and refuse thy name.",
    ]
    return "\n".join(lines * 40) + "\n"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(corpus_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    epochs = []
    model = charrnn.train(corpus, folder, epochs=3, on_epoch=epochs.append, **TINY)
    return model, folder, epochs


def tensors_sha256(path) -> str:
    """The digest of a checkpoint's tensors, from its safetensors header's metadata."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return header["__metadata__"]["tensors_sha256"]


# --- training ---------------------------------------------------------------------------------


def test_train_returns_the_newest_checkpoint_and_reports_each_epoch(trained):
    model, folder, epochs = trained
    assert Path(model.path) == folder / "ckpt_3.safetensors"
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert set(epochs[0]) == {"epoch", "train_loss", "val_loss", "seconds"}
    # The loss really falls on this tiny, repetitive corpus.
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] - 0.3, epochs
    assert model.info["provenance"]["epoch"] == 3
    assert "".join(model.vocab) == "".join(sorted(set(corpus_text())))
    assert model.config["rnn_units"] == 32


def test_model_info_is_what_the_command_shows(trained):
    model, _, _ = trained
    shown = json.loads(run("info", model.path, "--json").stdout)
    assert model.info == shown


# --- sampling, scoring ------------------------------------------------------------------------

SAMPLING_CASES = [
    dict(),
    dict(temperature=0.7, top_k=5),
    dict(top_p=0.9, length=300),
    dict(temperature=0),
    dict(stop=["\n"], include_stop=True, length=200),
    dict(start="JULIET: ", stop="Romeo", length=200),
]


def flags_of(options):
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, list) else [value]
        for v in values:
            out += [flag] if v is True else [f"{flag}={v}"]
    return out


@pytest.mark.parametrize("options", SAMPLING_CASES, ids=lambda o: " ".join(flags_of(o)) or "defaults")
def test_generate_equals_the_command_byte_for_byte(trained, options):
    model, _, _ = trained
    for seed in (1, 2):
        text = model.generate(seed=seed, **options)
        shown = run("generate", "--checkpoint", model.path, "--seed", seed, *flags_of(options)).stdout
        # The command prints the sample and a newline.
        assert shown == text + "\n"
        assert text.startswith(options.get("start", "ROMEO: "))


def test_several_samples_come_back_as_a_list_as_the_command_prints_them(trained):
    model, _, _ = trained
    texts = model.generate(seed=5, num_samples=3, length=80)
    assert isinstance(texts, list) and len(texts) == 3 and len(set(texts)) == 3
    shown = run("generate", "--checkpoint", model.path, "--seed", 5, "--num-samples", 3, "--length", 80).stdout
    assert shown == "".join(f"--- sample {i + 1} of 3 ---\n{t}\n" for i, t in enumerate(texts))


def test_stream_pieces_join_to_the_generated_text(trained):
    model, _, _ = trained
    for options in SAMPLING_CASES:
        pieces = list(model.stream(seed=3, **options))
        assert len(pieces) > 1
        assert pieces[0] == options.get("start", "ROMEO: ")
        assert "".join(pieces) == model.generate(seed=3, **options)


def test_score_equals_eval_json(trained, tmp_path):
    model, _, _ = trained
    text = corpus_text()[:3000] + "ROMEO: zebra!\n"  # 'z', 'b' and '!' are not in the vocabulary
    data = tmp_path / "held-out.txt"
    data.write_text(text, encoding="utf-8")
    shown = json.loads(run("eval", "--checkpoint", model.path, "--data", data, "--json", "--seq-len", 50).stdout)
    score = model.score(text, seq_len=50)
    assert score == shown
    assert score["skipped"] > 0 and score["nats_per_char"] > 0
    assert score["bits_per_char"] == pytest.approx(score["nats_per_char"] / 0.6931471805599453)


def test_probabilities_are_distributions_whose_argmax_greedy_sampling_takes(trained):
    np = pytest.importorskip("numpy")
    model, _, _ = trained
    start = "ROMEO: It is the"
    p = model.probabilities(start)
    assert p.shape == (len(start), len(model.vocab)) and p.dtype == np.float32
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    greedy = model.generate(start=start, length=1, temperature=0)
    assert model.vocab[int(p[-1].argmax())] == greedy[-1]


# --- bad input --------------------------------------------------------------------------------

BAD_SAMPLING = [
    (dict(temperature=-1), r"--temperature.*must be 0 \(greedy\) or a positive number, got -1"),
    (dict(top_k=0), r"--top-k.*must be at least 1, got 0"),
    (dict(top_p=1.5), r"--top-p.*must be in \(0, 1\], got 1.5"),
    (dict(length=0), r"--length.*must be at least 1, got 0"),
    (dict(num_samples=0), r"--num-samples.*must be at least 1, got 0"),
    (dict(stop=""), r"--stop.*give at least one character"),
    (dict(precision="fp8"), r"'fp8' for '--precision.*possible values: f32"),
    (dict(include_stop=True), r"--stop"),
    (dict(start="ROMEO: zebra"), r"--start.*'z'"),
]


@pytest.mark.parametrize("options,message", BAD_SAMPLING, ids=lambda x: str(x))
def test_each_bad_sampling_argument_is_a_value_error_with_the_flags_message(trained, options, message):
    model, _, _ = trained
    with pytest.raises(ValueError, match=message):
        model.generate(**options)
    flags = flags_of(options)
    shown = run("generate", "--checkpoint", model.path, *flags, check=False)
    assert shown.returncode != 0


def test_unknown_keywords_are_type_errors(trained, corpus, tmp_path):
    model, _, _ = trained
    with pytest.raises(TypeError):
        model.generate(tempreature=0.5)
    with pytest.raises(TypeError, match="rnn_unit"):
        charrnn.train(corpus, tmp_path / "x", rnn_unit=8, progress=False)


def test_bad_training_settings_are_refused_with_the_flags_message(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"--batch-size.*must be at least 1, got 0"):
        charrnn.train(corpus, tmp_path / "a", batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"--learning-rate"):
        charrnn.train(corpus, tmp_path / "b", learning_rate=-1.0, progress=False)
    with pytest.raises(ValueError, match=r"'nonsense' for '--preset.*possible values: tutorial"):
        charrnn.train(corpus, tmp_path / "c", preset="nonsense", progress=False)
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    with pytest.raises(ValueError, match="short"):
        charrnn.train(short, tmp_path / "d", progress=False, **{k: v for k, v in TINY.items() if k != "progress"})
    assert not list((tmp_path / "a").glob("*.safetensors")) if (tmp_path / "a").exists() else True


def test_regularisers_are_keywords_and_leave_a_plain_model(corpus, tmp_path):
    tiny = {**TINY, "embedding_dim": TINY["rnn_units"]}
    model = charrnn.train(
        corpus, tmp_path / "r", epochs=1, weight_drop=0.3, locked_dropout=0.2, embedding_dropout=0.1,
        tie_weights=True, **tiny
    )
    assert model.config["embedding_dim"] == model.config["rnn_units"]
    assert len(model.generate(start=corpus_text()[:3], length=40, seed=1)) >= 40
    with pytest.raises(ValueError, match=r"--weight-drop.*must be in \[0, 1\), got 1"):
        charrnn.train(corpus, tmp_path / "w", weight_drop=1.0, progress=False)
    with pytest.raises(ValueError, match="--tie-weights needs --embedding-dim equal to --rnn-units"):
        charrnn.train(corpus, tmp_path / "t", tie_weights=True, **{**TINY, "embedding_dim": 8})


def test_a_time_budget_plans_the_epochs_and_the_bar_follows(corpus, tmp_path, capsys):
    epochs = []
    settings = {**TINY, "progress": True}
    model = charrnn.train(corpus, tmp_path / "f", epochs=3, fit_minutes=0.00001, on_epoch=epochs.append, **settings)
    assert [e["epoch"] for e in epochs] == [1], "a budget below one epoch ends the run after it"
    assert Path(model.path) == tmp_path / "f" / "ckpt_1.safetensors"
    assert "1 of the 3 epochs fit" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--fit-minutes"):
        charrnn.train(corpus, tmp_path / "g", fit_minutes=0, progress=False)


def test_missing_paths_are_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        charrnn.load(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        charrnn.load(tmp_path)  # a folder with no checkpoint in it
    with pytest.raises(FileNotFoundError):
        charrnn.train(tmp_path / "no-corpus.txt", tmp_path / "run", progress=False)


def test_a_damaged_or_foreign_checkpoint_is_a_checkpoint_error(trained, tmp_path):
    model, _, _ = trained
    data = Path(model.path).read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(b"this is not a checkpoint at all")
    for path in (truncated, flipped, foreign):
        with pytest.raises(charrnn.CheckpointError) as caught:
            charrnn.load(path)
        assert isinstance(caught.value, ValueError)
        assert str(path) in str(caught.value)


def test_a_request_over_the_memory_estimate_is_a_memory_error(trained):
    model, _, _ = trained
    with pytest.raises(MemoryError, match="--num-samples"):
        model.generate(num_samples=10**12)


# --- Ctrl-C and exact resume ------------------------------------------------------------------

INTERRUPTED_RUN = textwrap.dedent(
    """
    import os, signal, sys, threading
    import charrnn

    corpus, folder = sys.argv[1], sys.argv[2]
    # Python leaves SIGINT ignored when it starts with it ignored (as a shell's background job
    # does): Ctrl-C must raise KeyboardInterrupt here whoever started the test.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    settings = dict(rnn_units=32, embedding_dim=8, seq_len=20, batch_size=8, seed=1, progress=False)

    def on_epoch(e):
        # Ctrl-C from outside, while the core runs epoch 2 with the GIL released.
        if e["epoch"] == 1:
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()

    try:
        charrnn.train(corpus, folder, epochs=3, on_epoch=on_epoch, **settings)
    except KeyboardInterrupt:
        print("KeyboardInterrupt")
        sys.exit(0)
    print("finished")
    """
)


def test_ctrl_c_saves_a_resumable_checkpoint_and_resume_continues_bit_for_bit(tmp_path):
    # A corpus long enough that epoch 2 outlasts the 50 ms before the signal.
    corpus = tmp_path / "longer.txt"
    corpus.write_text(corpus_text() * 10, encoding="utf-8")
    settings = dict(TINY)
    whole = charrnn.train(corpus, tmp_path / "whole", epochs=3, **settings)

    script = tmp_path / "interrupted_run.py"
    script.write_text(INTERRUPTED_RUN, encoding="utf-8")
    folder = tmp_path / "interrupted"
    result = subprocess.run(
        [sys.executable, str(script), str(corpus), str(folder)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "KeyboardInterrupt", result.stdout + result.stderr
    assert (folder / "interrupted.safetensors").exists()
    assert not (folder / "ckpt_3.safetensors").exists()

    resumed = charrnn.train(corpus, folder, epochs=3, resume=True, **settings)
    assert Path(resumed.path).name == "ckpt_3.safetensors"
    assert tensors_sha256(resumed.path) == tensors_sha256(whole.path)
    assert resumed.generate(seed=9, length=200) == whole.generate(seed=9, length=200)


# --- one process, several models and threads --------------------------------------------------


def bf16_runs_here(model) -> bool:
    try:
        model.generate(length=1, precision="bf16")
        return True
    except ValueError as e:
        assert "bf16" in str(e)
        return False


def test_two_precisions_in_one_process_each_give_the_commands_text(trained):
    model, _, _ = trained
    if not bf16_runs_here(model):
        pytest.skip("this CPU has no bf16 kernel")
    other = charrnn.load(model.path)
    f32 = model.generate(seed=4, length=400)
    bf16 = other.generate(seed=4, length=400, precision="bf16")
    again = model.generate(seed=4, length=400)
    assert f32 == again
    for precision, text in (("f32", f32), ("bf16", bf16)):
        shown = run("generate", "--checkpoint", model.path, "--seed", 4, "--length", 400, "--precision", precision)
        assert shown.stdout == text + "\n"


def test_int8_sampling_and_scoring_are_the_commands(trained, corpus):
    model, _, _ = trained
    text = model.generate(seed=6, length=300, precision="int8")
    shown = run("generate", "--checkpoint", model.path, "--seed", 6, "--length", 300, "--precision", "int8")
    assert shown.stdout == text + "\n"
    with open(corpus, encoding="utf-8") as f:
        text = f.read()
    int8, f32 = model.score(text, precision="int8"), model.score(text)
    assert int8["nats_per_char"] != f32["nats_per_char"]
    assert abs(int8["nats_per_char"] - f32["nats_per_char"]) < 0.01 * f32["nats_per_char"]


def test_generate_from_two_threads_at_once_gives_each_its_own_text(trained):
    model, _, _ = trained
    alone = {seed: model.generate(seed=seed, length=3000) for seed in (11, 12)}
    together = {}

    def sample(seed):
        together[seed] = model.generate(seed=seed, length=3000)

    threads = [threading.Thread(target=sample, args=(seed,)) for seed in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def test_the_gil_is_released_while_sampling(trained):
    model, _, _ = trained
    done = threading.Event()
    ticks = []

    def sample():
        model.generate(seed=1, length=30000)
        done.set()

    worker = threading.Thread(target=sample)
    started = time.monotonic()
    worker.start()
    while not done.is_set():
        ticks.append(time.monotonic())
        time.sleep(0.005)
    worker.join()
    took = time.monotonic() - started
    # Holding the GIL for the whole call would leave this thread one tick at most.
    assert took > 0.05, "sampling was too quick to tell"
    assert len(ticks) >= 5, (len(ticks), took)


def test_the_gil_is_released_while_training(corpus, tmp_path):
    done = threading.Event()
    ticks = []

    def training():
        try:
            charrnn.train(corpus, tmp_path / "run", epochs=3, **TINY)
        finally:
            done.set()

    worker = threading.Thread(target=training)
    worker.start()
    while not done.is_set():
        ticks.append(time.monotonic())
        time.sleep(0.005)
    worker.join()
    assert (tmp_path / "run" / "ckpt_3.safetensors").exists()
    assert len(ticks) >= 5, len(ticks)


def test_a_flag_named_in_a_message_is_told_as_its_keyword(corpus, tmp_path):
    charrnn.train(corpus, tmp_path / "run", epochs=1, **TINY)
    with pytest.raises(ValueError, match=r"(?s)--overwrite.*overwrite=True"):
        charrnn.train(corpus, tmp_path / "run", epochs=1, **TINY)
    again = charrnn.train(corpus, tmp_path / "run", epochs=1, overwrite=True, **TINY)
    assert again.info["provenance"]["epoch"] == 1


# --- the command and downloads ----------------------------------------------------------------


def test_the_installed_command_runs_the_binarys_code(trained):
    model, _, _ = trained
    installed = Path(sys.executable).parent / "charrnn"
    version = subprocess.run([str(installed), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("charrnn ")
    assert charrnn.__version__ in version.stdout
    bad = subprocess.run([str(installed), "generate", "--top-k", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must be at least 1" in bad.stderr
    generated = subprocess.run(
        [str(installed), "generate", "--checkpoint", model.path, "--seed", "8", "--length", "120"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == model.generate(seed=8, length=120) + "\n"
    if os.environ.get("CHARRNN_BIN"):
        assert generated.stdout == run("generate", "--checkpoint", model.path, "--seed", 8, "--length", 120).stdout


def test_download_verifies_the_checksum_from_a_local_server(tmp_path):
    import hashlib
    import http.server
    import socketserver

    served = tmp_path / "served"
    served.mkdir()
    body = corpus_text().encode()
    (served / "corpus.txt").write_bytes(body)
    digest = hashlib.sha256(body).hexdigest()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    with socketserver.TCPServer(("127.0.0.1", 0), Quiet) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/corpus.txt"
        out = tmp_path / "got.txt"
        assert charrnn.download(url=url, output=out, sha256=digest) == str(out)
        assert out.read_bytes() == body
        wrong = tmp_path / "wrong.txt"
        with pytest.raises(ValueError, match="SHA-256"):
            charrnn.download(url=url, output=wrong, sha256="0" * 64)
        assert not wrong.exists()
        server.shutdown()
