"""charrnn serve through the official `openai` package: completions, streamed and not, n > 1
and stop strings, the API key as the client's; each text what `charrnn generate` writes."""

import os
import subprocess
import sys

import openai
import pytest

CHARRNN = os.environ["CHARRNN"]
KEY = "sk-charrnn-test-0123"


def generate(checkpoint, *args):
    out = subprocess.run(
        [CHARRNN, "generate", "--checkpoint", checkpoint, "--device", "cpu", *args],
        check=True, capture_output=True, text=True,
    )
    return out.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("openai")
    text = work / "tiny.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\nthe dog sleeps; the fox runs away.\n" * 40)
    ck = work / "ck"
    subprocess.run(
        [CHARRNN, "train", "--data", str(text), "--checkpoint-dir", str(ck), "--epochs", "1",
         "--batch-size", "4", "--seq-len", "20", "--embedding-dim", "8", "--rnn-units", "16",
         "--device", "cpu", "--seed", "1"],
        check=True, capture_output=True, env={**os.environ, "CHARRNN_CACHE_DIR": str(work / "cache")},
    )
    proc = subprocess.Popen(
        [CHARRNN, "serve", "--checkpoint", str(ck), "--port", "0", "--api-key", KEY],
        stderr=subprocess.PIPE, text=True,
    )
    url = None
    for line in proc.stderr:
        if line.startswith("listening on "):
            url = line.split()[-1]
            break
    assert url, "the server never said where it listens"
    yield url, str(ck)
    proc.terminate()
    proc.wait(timeout=10)


def client(url, key=KEY):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_a_completion_is_what_generate_writes(server):
    url, ck = server
    r = client(url).completions.create(model="charrnn", prompt="the ", max_tokens=80, seed=3, temperature=0.9)
    want = generate(ck, "--start", "the ", "--length", "80", "--seed", "3", "--temperature", "0.9")
    assert r.choices[0].text == want[len("the "):].rstrip("\n")
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 80


def test_streamed_pieces_join_to_the_same_text(server):
    url, ck = server
    pieces, reasons = [], []
    for chunk in client(url).completions.create(
        model="charrnn", prompt="the ", max_tokens=80, seed=3, temperature=0.9, stream=True
    ):
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    want = generate(ck, "--start", "the ", "--length", "80", "--seed", "3", "--temperature", "0.9")
    assert "".join(pieces) == want[len("the "):].rstrip("\n")
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])


def test_several_samples_and_stop_strings(server):
    url, ck = server
    r = client(url).completions.create(model="charrnn", prompt="the ", max_tokens=40, seed=5, n=3)
    want = generate(ck, "--start", "the ", "--length", "40", "--seed", "5", "--num-samples", "3")
    assert [c.index for c in r.choices] == [0, 1, 2]
    for i, c in enumerate(r.choices):
        assert f"--- sample {i + 1} of 3 ---\nthe {c.text}\n" in want
    r = client(url).completions.create(model="charrnn", prompt="the ", max_tokens=300, seed=5, stop=["o", "e"])
    want = generate(ck, "--start", "the ", "--length", "300", "--seed", "5", "--stop", "o", "--stop", "e")
    assert r.choices[0].finish_reason == "stop"
    assert "the " + r.choices[0].text + "\n" == want
    streamed = "".join(
        c.choices[0].text
        for c in client(url).completions.create(
            model="charrnn", prompt="the ", max_tokens=300, seed=5, stop=["o", "e"], stream=True
        )
    )
    assert streamed == r.choices[0].text


def test_the_key_is_required_and_errors_are_openais(server):
    url, _ = server
    with pytest.raises(openai.AuthenticationError):
        client(url, key="sk-wrong-key-0000").completions.create(model="charrnn", prompt="the ")
    with pytest.raises(openai.BadRequestError) as e:
        client(url).completions.create(model="charrnn", prompt="the ", max_tokens=0)
    assert "max_tokens" in str(e.value)
    models = client(url).models.list()
    assert [m.id for m in models.data] == ["ckpt_1.safetensors"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
