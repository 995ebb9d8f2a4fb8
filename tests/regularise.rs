//! The training regularisers (weight drop, locked and embedding dropout, weight tying) from
//! the command line: they change training, resume bit for bit, and leave a checkpoint that
//! samples, scores and loads by PyTorch's names like any other.

use std::path::Path;

mod common;
use common::{charrnn, stderr, tensor_bytes, Runs};

/// The embedding as wide as the state, so the output weight can be tied to it.
const SMALL: &[&str] = &[
    "--batch-size",
    "4",
    "--seq-len",
    "20",
    "--embedding-dim",
    "16",
    "--rnn-units",
    "16",
    "--layers",
    "2",
    "--device",
    "cpu",
    "--seed",
    "4",
];

const ALL: &[&str] = &[
    "--weight-drop",
    "0.3",
    "--locked-dropout",
    "0.2",
    "--embedding-dropout",
    "0.1",
    "--dropout",
    "0.1",
    "--tie-weights",
];

fn tensor(path: &Path, name: &str) -> Vec<u8> {
    let all = tensor_bytes(path);
    all.into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} in {}", path.display())).1
}

/// Each regulariser on its own changes what training computes (against the same run without
/// it), and so do all together.
#[test]
fn each_regulariser_changes_training() {
    let runs = Runs::new(SMALL);
    runs.train("plain", &["--epochs", "1"]);
    let plain = tensor_bytes(&runs.folder("plain").join("ckpt_1.safetensors"));
    for (i, flags) in [
        &["--weight-drop", "0.3"][..],
        &["--locked-dropout", "0.2"],
        &["--embedding-dropout", "0.2"],
        &["--tie-weights"],
        ALL,
    ]
    .iter()
    .enumerate()
    {
        let name = format!("r{i}");
        runs.train(&name, &[&["--epochs", "1"], *flags].concat());
        let got = tensor_bytes(&runs.folder(&name).join("ckpt_1.safetensors"));
        assert_eq!(got.len(), plain.len(), "{flags:?}: the same tensors are saved");
        assert_ne!(got, plain, "{flags:?} changed nothing");
    }
}

/// Two epochs straight equal one epoch, then a run stopped mid-epoch and resumed, bit for bit,
/// with every regulariser on: the masks follow the step, not the process.
#[test]
fn regularised_runs_resume_bit_for_bit() {
    let runs = Runs::new(SMALL);
    runs.train("straight", &[&["--epochs", "2"], ALL].concat());
    runs.train("split", &[&["--epochs", "2", "--max-steps", "13"], ALL].concat());
    let split = runs.folder("split");
    let o = charrnn(&["train", "--data", &runs.data, "--resume", split.to_str().unwrap(), "--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming"), "{}", stderr(&o));
    let name = "ckpt_2.safetensors";
    assert_eq!(tensor_bytes(&runs.folder("straight").join(name)), tensor_bytes(&split.join(name)));
    // A resumed run keeps its regularisers: another value is refused, naming the flag.
    let o = charrnn(&[
        "train",
        "--data",
        &runs.data,
        "--resume",
        split.to_str().unwrap(),
        "--epochs",
        "3",
        "--weight-drop",
        "0.5",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--weight-drop"), "{}", stderr(&o));
}

/// A tied, regularised run's checkpoint holds both of PyTorch's tensors (equal), and samples
/// and scores with none of the regularisers: `eval` gives the validation loss training
/// reported, and a seeded `generate` the same text twice.
#[test]
fn a_regularised_checkpoint_samples_and_scores_as_any_other() {
    let runs = Runs::new(SMALL);
    let log = runs.train("tied", &[&["--epochs", "2"], ALL].concat());
    let ckpt = runs.folder("tied").join("ckpt_2.safetensors");
    let (embedding, dense) = (tensor(&ckpt, "embedding.weight"), tensor(&ckpt, "dense.weight"));
    assert_eq!(embedding, dense, "a tied model saves its one matrix under both names");
    assert!(!embedding.iter().all(|&b| b == 0));

    let reported = log
        .lines()
        .filter_map(|l| l.strip_prefix("Epoch 2 validation loss "))
        .map(|rest| rest.split_whitespace().next().unwrap().to_string())
        .next()
        .unwrap_or_else(|| panic!("no validation loss in {log}"));
    // The validation split is the text's last 10% (ASCII: a character is a byte), scored in
    // sequences of the training's length.
    let text = common::tiny_text();
    let val = runs.folder("val.txt");
    std::fs::write(&val, &text[(text.len() as f64 * 0.9).floor() as usize..]).unwrap();
    let (ckpt_s, val_s) = (ckpt.to_str().unwrap(), val.to_str().unwrap());
    let o = charrnn(&["eval", "--checkpoint", ckpt_s, "--data", val_s, "--seq-len", "20"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let scored: f64 = out.split_whitespace().find_map(|w| w.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    let reported: f64 = reported.parse().unwrap();
    assert!((scored - reported).abs() < 1e-3, "eval {scored} against training's {reported}");

    let generate = || {
        let o = charrnn(&[
            "generate",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--length",
            "60",
            "--seed",
            "2",
            "--start",
            "the ",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    let text = generate();
    assert!(text.len() > 20);
    assert_eq!(text, generate());
}

/// Tying needs the embedding as wide as the state; the probabilities are fractions.
#[test]
fn bad_regulariser_flags_are_refused_with_the_fix() {
    let runs = Runs::new(SMALL);
    let o = charrnn(&[
        "train",
        "--data",
        &runs.data,
        "--tie-weights",
        "--embedding-dim",
        "8",
        "--rnn-units",
        "16",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--embedding-dim equal to --rnn-units"), "{}", stderr(&o));
    for flag in ["--weight-drop", "--locked-dropout", "--embedding-dropout"] {
        let o = charrnn(&["train", "--data", &runs.data, flag, "1.2"]);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(flag) && e.contains("must be in [0, 1), got 1.2"), "{e}");
    }
}

/// Fine-tuning ties only a parent whose output weight already is its embedding: a tied parent
/// continues tied; an untied one is refused with the way out, its weights untouched.
#[test]
fn fine_tuning_ties_only_a_tied_parent() {
    let runs = Runs::new(SMALL);
    runs.train("untied", &["--epochs", "1"]);
    runs.train("tied", &["--epochs", "1", "--tie-weights"]);
    let parent = |name: &str| runs.folder(name).join("ckpt_1.safetensors").to_string_lossy().into_owned();
    let o = charrnn(
        &[
            &[
                "train",
                "--data",
                &runs.data,
                "--init-from",
                &parent("untied"),
                "--tie-weights",
                "--epochs",
                "1",
            ][..],
            &["--checkpoint-dir", runs.folder("a").to_str().unwrap()],
            SMALL,
        ]
        .concat(),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("leave --tie-weights out"), "{}", stderr(&o));
    runs.train("b", &["--init-from", &parent("tied"), "--tie-weights", "--epochs", "1"]);
    let child = runs.folder("b").join("ckpt_1.safetensors");
    assert_eq!(tensor(&child, "embedding.weight"), tensor(&child, "dense.weight"));
    assert_ne!(tensor(&child, "embedding.weight"), tensor(Path::new(&parent("tied")), "embedding.weight"));
}
