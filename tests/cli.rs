//! End to end through the built binary: train, generate, interrupt, and every bad input.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn charrnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_charrnn"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure with a one-line error containing `needle`, and never a panic.
fn assert_fails_with(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panic reached the user: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

fn tiny_corpus(dir: &Path) -> String {
    let text = "the quick brown fox jumps over the lazy dog.\nthe dog sleeps; the fox runs away.\n"
        .repeat(40);
    let path = dir.join("tiny.txt");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

const SMALL: &[&str] = &[
    "--batch-size",
    "4",
    "--seq-len",
    "20",
    "--embedding-dim",
    "8",
    "--rnn-units",
    "16",
    "--device",
    "cpu",
];

#[test]
fn train_two_epochs_then_generate() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ckpt = dir.path().join("ckpt");
    let ckpt_s = ckpt.to_str().unwrap();
    let mut args = vec![
        "train",
        "--data",
        &data,
        "--epochs",
        "2",
        "--checkpoint-dir",
        ckpt_s,
        "--seed",
        "1",
    ];
    args.extend_from_slice(SMALL);
    let o = charrnn(&args);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(o.stdout.is_empty(), "training writes nothing to stdout");
    for needle in [
        "Epoch 1 Batch 0 Loss",
        "Epoch 2 Loss:",
        "validation loss",
        "Time taken for 1 epoch",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    assert!(
        ckpt.join("ckpt_2.safetensors").exists(),
        "the last epoch is saved"
    );

    let gen = |seed: &str| {
        charrnn(&[
            "generate",
            "--checkpoint",
            ckpt_s,
            "--start",
            "the ",
            "--length",
            "60",
            "--seed",
            seed,
        ])
    };
    let a = gen("7");
    assert!(a.status.success(), "{}", stderr(&a));
    let text = String::from_utf8(a.stdout.clone()).unwrap();
    assert!(text.starts_with("the "), "{text:?}");
    assert_eq!(
        text.trim_end_matches('\n').chars().count(),
        4 + 60,
        "{text:?}"
    );
    assert_eq!(
        gen("7").stdout,
        a.stdout,
        "a seed makes sampling reproducible"
    );
}

#[test]
fn ctrl_c_saves_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ckpt = dir.path().join("ckpt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_charrnn"))
        .args([
            "train",
            "--data",
            &data,
            "--epochs",
            "1000",
            "--checkpoint-dir",
            ckpt.to_str().unwrap(),
        ])
        .args(SMALL)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("Batch 0 Loss") {
            break;
        }
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let saved = ckpt.join("interrupted.safetensors");
    assert!(
        rest.iter().any(|l| l.contains("interrupted.safetensors")),
        "{rest:?}"
    );
    charrnn::checkpoint::load(&saved, &candle_core::Device::Cpu).expect("the saved weights load");
    let stray: Vec<_> = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn bad_corpora_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let ck = ck.to_str().unwrap();
    let train = |data: &str| {
        let mut a = vec!["train", "--data", data, "--checkpoint-dir", ck];
        a.extend_from_slice(SMALL);
        charrnn(&a)
    };
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    assert_fails_with(&train(empty.to_str().unwrap()), "is empty");

    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    assert_fails_with(
        &train(latin1.to_str().unwrap()),
        "not valid UTF-8 (bad byte at offset 3)",
    );

    let short = dir.path().join("short.txt");
    std::fs::write(&short, "a short text".repeat(5)).unwrap();
    let o = train(short.to_str().unwrap());
    assert_fails_with(&o, "too short");
    assert!(
        stderr(&o).contains("needs at least 94 characters"),
        "{}",
        stderr(&o)
    );

    assert_fails_with(&train("/no/such/corpus.txt"), "charrnn download");
    assert!(!Path::new(ck).join("ckpt_1.safetensors").exists());
}

#[test]
fn nonsense_flags_are_refused() {
    for (args, needle) in [
        (vec!["train", "--batch-size", "0"], "at least 1"),
        (vec!["train", "--seq-len", "0"], "at least 1"),
        (vec!["train", "--epochs", "0"], "at least 1"),
        (vec!["train", "--val-fraction", "1"], "must be in [0, 1)"),
        (vec!["train", "--val-fraction", "-0.1"], "must be in [0, 1)"),
        (vec!["train", "--learning-rate", "0"], "positive"),
        (vec!["generate", "--length", "0"], "at least 1"),
        (
            vec!["generate", "--temperature", "-0.5"],
            "must be 0 (greedy) or a positive number",
        ),
        (
            vec!["generate", "--temperature", "NaN"],
            "must be 0 (greedy) or a positive number",
        ),
        (vec!["train", "--device", "tpu"], "invalid value 'tpu'"),
    ] {
        assert_fails_with(&charrnn(&args), needle);
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_in_a_cpu_build_says_how_to_get_it() {
    assert_fails_with(
        &charrnn(&["train", "--device", "cuda"]),
        "rebuild with --features cuda",
    );
}

#[test]
fn generate_refuses_bad_checkpoints_and_unknown_start_characters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_fails_with(&charrnn(&["generate", "--checkpoint", d]), "no checkpoint");

    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    assert_fails_with(
        &charrnn(&["generate", "--checkpoint", junk.to_str().unwrap()]),
        "junk.safetensors",
    );

    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    let mut a = vec![
        "train",
        "--data",
        &data,
        "--epochs",
        "1",
        "--checkpoint-dir",
        ck.to_str().unwrap(),
    ];
    a.extend_from_slice(SMALL);
    assert!(charrnn(&a).status.success());
    let o = charrnn(&[
        "generate",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--start",
        "ROMEO: Zebra",
    ]);
    assert_fails_with(
        &o,
        "6 character(s) are not in the model's vocabulary: ':', 'E', 'M', 'O', 'R', 'Z'",
    );
    assert!(
        o.stdout.is_empty(),
        "nothing is printed before the start is checked"
    );
}
