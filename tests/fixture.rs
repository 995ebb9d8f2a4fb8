//! Checkpoints written by an earlier build keep loading and resuming bit for bit.
//!
//! `tests/fixtures/main-e09027d/{gru,lstm}` hold epoch 1 of two small runs (the LSTM with two
//! layers, dropout, --stateful, clipping, cosine schedule and weight decay) and the epoch-2
//! files that build wrote when it trained on; a fresh run must write the same files and a
//! resumed one the same epoch 2. Both runs used the portable kernel, whose
//! arithmetic is the same on every CPU, so the comparison holds on any machine.

use std::path::Path;

mod common;
use common::tensor_bytes;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/main-e09027d");

/// The training position saved in an optimizer file.
fn position(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let state = &meta.metadata().as_ref().unwrap()["state"];
    serde_json::from_str(state).unwrap()
}

/// A folder with the fixture's corpus, where `charrnn` runs with the portable kernel.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(Path::new(FIXTURES).join("tiny.txt"), dir.path().join("tiny.txt")).unwrap();
        Run { dir }
    }

    fn charrnn(&self, args: &[&str]) {
        let out = common::charrnn_command(args)
            .env("CHARRNN_KERNEL", "portable")
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Every (written, fixture) pair holds the same tensors, bit for bit.
    fn assert_same_tensors(&self, cell: &str, pairs: &[(&str, &str)]) {
        for (got, want) in pairs {
            let (got, want) =
                (self.dir.path().join(cell).join(got), Path::new(FIXTURES).join(cell).join(want));
            assert!(
                tensor_bytes(&got) == tensor_bytes(&want),
                "{cell}: {} differs from {}",
                got.display(),
                want.display()
            );
        }
    }
}

const EPOCH_2: [(&str, &str); 2] = [
    ("ckpt_2.safetensors", "expected_ckpt_2.safetensors"),
    ("ckpt_2.optim.safetensors", "expected_ckpt_2.optim.safetensors"),
];

fn resumes_bit_for_bit(cell: &str) {
    let run = Run::new();
    std::fs::create_dir(run.dir.path().join(cell)).unwrap();
    for f in ["ckpt_1.safetensors", "ckpt_1.optim.safetensors"] {
        std::fs::copy(Path::new(FIXTURES).join(cell).join(f), run.dir.path().join(cell).join(f)).unwrap();
    }
    run.charrnn(&["train", "--device", "cpu", "--resume", &format!("{cell}/ckpt_1.safetensors")]);
    run.assert_same_tensors(cell, &EPOCH_2);
    let got = position(&run.dir.path().join(cell).join("ckpt_2.optim.safetensors"));
    let want = position(&Path::new(FIXTURES).join(cell).join("expected_ckpt_2.optim.safetensors"));
    assert_same_position(&got, &want);
}

/// Equal positions; losses (reports, not weights) within f32 rounding, because the earlier
/// build added the rows' losses in a thread-dependent order.
fn assert_same_position(got: &serde_json::Value, want: &serde_json::Value) {
    use serde_json::Value;
    match (got, want) {
        (Value::Number(g), Value::Number(w)) if g.is_f64() || w.is_f64() => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
        }
        (Value::Object(g), Value::Object(w)) => {
            assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>());
            for (k, v) in w {
                assert_same_position(&g[k], v);
            }
        }
        _ => assert_eq!(got, want),
    }
}

/// The same run started afresh writes, bit for bit, what the earlier build wrote: the
/// initialisation, data order, dropout masks, steps and optimizer state are unchanged.
fn trains_afresh_bit_for_bit(cell: &str, extra: &[&str]) {
    let run = Run::new();
    let mut args = vec!["train", "--data", "tiny.txt", "--epochs", "2", "--save-every", "1", "--seed", "7"];
    args.extend(["--rnn-units", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-len", "20"]);
    args.extend([
        "--cell",
        cell,
        "--checkpoint-dir",
        cell,
        "--clip-grad-norm",
        "1",
        "--lr-schedule",
        "cosine",
    ]);
    args.extend(["--warmup-steps", "3", "--weight-decay", "0.01", "--device", "cpu"]);
    args.extend(extra);
    run.charrnn(&args);
    run.assert_same_tensors(
        cell,
        &[
            ("ckpt_1.safetensors", "ckpt_1.safetensors"),
            ("ckpt_1.optim.safetensors", "ckpt_1.optim.safetensors"),
        ],
    );
    run.assert_same_tensors(cell, &EPOCH_2);
}

#[test]
fn a_fresh_gru_run_reproduces_the_earlier_build() {
    trains_afresh_bit_for_bit("gru", &[]);
}

#[test]
fn a_fresh_stateful_lstm_run_reproduces_the_earlier_build() {
    trains_afresh_bit_for_bit("lstm", &["--layers", "2", "--dropout", "0.1", "--stateful"]);
}

#[test]
fn a_gru_run_from_an_earlier_build_resumes_bit_for_bit() {
    resumes_bit_for_bit("gru");
}

#[test]
fn a_stateful_two_layer_lstm_run_from_an_earlier_build_resumes_bit_for_bit() {
    resumes_bit_for_bit("lstm");
}
