//! End to end through the built binary: train, generate, interrupt, and every bad input.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;
use common::{charrnn, cpu_has, stderr, tensor_bytes};

/// A failure with a one-line error containing `needle`, and never a panic.
fn assert_fails_with(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panic reached the user: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

/// The train loss of each epoch, as the log prints it.
fn epoch_losses(o: &Output) -> Vec<f64> {
    stderr(o).lines().filter_map(|l| l.split_once(" Loss: ")?.1.trim().parse().ok()).collect()
}

fn tiny_corpus(dir: &Path) -> String {
    let path = dir.join("tiny.txt");
    std::fs::write(&path, common::tiny_text()).unwrap();
    path.to_string_lossy().into_owned()
}

const SMALL: &[&str] =
    &["--batch-size", "4", "--seq-len", "20", "--embedding-dim", "8", "--rnn-units", "16", "--device", "cpu"];

#[test]
fn train_two_epochs_then_generate() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ckpt = dir.path().join("ckpt");
    let ckpt_s = ckpt.to_str().unwrap();
    let mut args = vec!["train", "--data", &data, "--epochs", "2", "--checkpoint-dir", ckpt_s, "--seed", "1"];
    args.extend_from_slice(SMALL);
    let o = charrnn(&args);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(o.stdout.is_empty(), "training writes nothing to stdout");
    for needle in ["Epoch 1 Batch 0 Loss", "Epoch 2 Loss:", "validation loss", "Time taken for 1 epoch"] {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    assert!(ckpt.join("ckpt_2.safetensors").exists(), "the last epoch is saved");

    let gen = |seed: &str| {
        charrnn(&["generate", "--checkpoint", ckpt_s, "--start", "the ", "--length", "60", "--seed", seed])
    };
    let a = gen("7");
    assert!(a.status.success(), "{}", stderr(&a));
    let text = String::from_utf8(a.stdout.clone()).unwrap();
    assert!(text.starts_with("the "), "{text:?}");
    assert_eq!(text.trim_end_matches('\n').chars().count(), 4 + 60, "{text:?}");
    assert_eq!(gen("7").stdout, a.stdout, "a seed makes sampling reproducible");

    // Stop strings end each sample at its first one (kept with --include-stop); --output
    // writes the same text to a file instead of stdout.
    let long = |extra: &[&str]| {
        let mut args =
            vec!["generate", "--checkpoint", ckpt_s, "--start", "the ", "--length", "400", "--seed", "3"];
        args.extend_from_slice(extra);
        let o = charrnn(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let whole = long(&[]);
    let at = whole[4..].find(' ').expect("a space in 400 characters") + 4;
    assert_eq!(long(&["--stop", " "]), format!("{}\n", &whole[..at]));
    assert_eq!(long(&["--stop", " ", "--include-stop"]), format!("{}\n", &whole[..at + 1]));
    let file = dir.path().join("out.txt");
    assert_eq!(long(&["--stop", " ", "--output", file.to_str().unwrap()]), "");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{}\n", &whole[..at]));
    let three = long(&["--stop", " ", "--num-samples", "3"]);
    assert_eq!(three.matches("--- sample").count(), 3, "{three}");
    for part in three.split("--- sample ").skip(1) {
        let sample = part.split_once('\n').unwrap().1;
        assert!(sample.starts_with("the ") && !sample[4..].contains(' '), "{three}");
    }
    // bf16 sampling where the CPU has it (reproducible, and the same start); a clear refusal
    // where it does not. Training in bf16: bf16_training_learns_resumes_bit_for_bit_and_samples_in_either_precision.
    let bf16 = [
        "generate",
        "--checkpoint",
        ckpt_s,
        "--start",
        "the ",
        "--length",
        "200",
        "--seed",
        "3",
        "--precision",
        "bf16",
    ];
    let sampled = charrnn(&bf16);
    if cpu_has("avx512_bf16") {
        assert!(sampled.status.success(), "{}", stderr(&sampled));
        assert!(sampled.stdout.starts_with(b"the "));
        assert_eq!(charrnn(&bf16).stdout, sampled.stdout);
    } else {
        println!("this CPU lacks avx512_bf16: checking the refusal");
        assert_fails_with(&sampled, "avx512_bf16");
    }
}

/// Trains `cell` for two epochs through the binary and generates from it. The summary must name the cell's layer with `summary`, and the loss fall.
fn cell_trains_and_generates(cell: &str, summary: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ckpt = dir.path().join("ckpt");
    let ckpt_s = ckpt.to_str().unwrap();
    let mut args =
        vec!["train", "--data", &data, "--epochs", "2", "--checkpoint-dir", ckpt_s, "--cell", cell];
    args.extend_from_slice(SMALL);
    let o = charrnn(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(summary), "the summary names the cell: {}", stderr(&o));
    let losses = epoch_losses(&o);
    assert!(losses.len() == 2 && losses[1] < losses[0], "{cell}: {losses:?}");
    let o = charrnn(&[
        "generate",
        "--checkpoint",
        ckpt_s,
        "--start",
        "the ",
        "--length",
        "30",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8(o.stdout).unwrap().strip_suffix('\n').unwrap().chars().count(), 34);
}

#[test]
fn an_lstm_trains_and_generates() {
    cell_trains_and_generates("lstm", "lstm 1664");
}

/// 16 × (8 + 16 + 2) parameters in the layer.
#[test]
fn an_elman_rnn_trains_and_generates() {
    cell_trains_and_generates("rnn", "rnn 416");
}

/// An Elman layer carries its state across an interrupted and resumed stateful run too.
#[test]
fn stateful_elman_runs_resume_exactly() {
    interrupt_then_resume(&["--stateful", "--cell", "rnn", "--layers", "2"]);
}

#[test]
fn ctrl_c_saves_and_exits_130() {
    interrupt_then_resume(&[]);
}

/// Stateful training carries its state across an interrupted and resumed run too.
#[test]
fn stateful_runs_resume_exactly() {
    interrupt_then_resume(&["--stateful"]);
}

/// Two stateful LSTM layers: h and c carried from batch to batch and across the interruption.
#[test]
fn stateful_lstm_runs_resume_exactly() {
    interrupt_then_resume(&["--stateful", "--cell", "lstm", "--layers", "2"]);
}

fn interrupt_then_resume(mode: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ckpt = dir.path().join("ckpt");
    let (status, rest) = train_until(&data, &ckpt, "-INT", &[&["--save-every", "1000"], mode].concat());
    assert_eq!(status, Some(130), "{rest:?}");
    let saved = ckpt.join("interrupted.safetensors");
    assert!(rest.iter().any(|l| l.contains("interrupted.safetensors")), "{rest:?}");
    let done = charrnn_core::checkpoint::load(&saved, &charrnn_core::Compute::cpu())
        .expect("the saved weights load");
    assert_eq!(stray_temporaries(&ckpt), Vec::<String>::new());

    // Resuming from the middle of an epoch ends exactly where an uninterrupted run does.
    let epochs = (done.provenance.epoch + 1).to_string();
    let o = charrnn(&["train", "--data", &data, "--resume", ckpt.to_str().unwrap(), "--epochs", &epochs]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming"), "{}", stderr(&o));
    let straight = dir.path().join("straight");
    let seed = done.provenance.seed.to_string();
    let mut args = vec!["train", "--data", &data, "--epochs", &epochs, "--seed", &seed];
    args.extend(["--checkpoint-dir", straight.to_str().unwrap()]);
    args.extend_from_slice(SMALL);
    args.extend_from_slice(mode);
    assert!(charrnn(&args).status.success());
    let name = format!("ckpt_{epochs}.safetensors");
    assert_eq!(tensor_bytes(&ckpt.join(&name)), tensor_bytes(&straight.join(&name)));
}

/// Temporary files left in a folder (there must never be any).
fn stray_temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn two_epochs_equal_one_plus_a_resumed_one_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let run = |sub: &str, extra: &[&str]| {
        let d = dir.path().join(sub);
        let mut a = vec!["train", "--data", &data, "--seed", "3", "--save-every", "1"];
        let d_s = d.to_str().unwrap().to_string();
        a.extend(["--checkpoint-dir", &d_s]);
        a.extend_from_slice(SMALL);
        a.extend_from_slice(extra);
        let o = charrnn(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        d
    };
    let straight = run("a", &["--epochs", "2"]);
    let split = run("b", &["--epochs", "1"]);
    let o = charrnn(&[
        "train",
        "--data",
        &data,
        "--checkpoint-dir",
        split.to_str().unwrap(),
        "--resume",
        "--epochs",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        tensor_bytes(&straight.join("ckpt_2.safetensors")),
        tensor_bytes(&split.join("ckpt_2.safetensors"))
    );
    assert_eq!(
        tensor_bytes(&straight.join("ckpt_2.optim.safetensors")),
        tensor_bytes(&split.join("ckpt_2.optim.safetensors"))
    );

    // Settings that would change the run are refused; nothing is written.
    let o = charrnn(&["train", "--checkpoint-dir", split.to_str().unwrap(), "--resume", "--rnn-units", "32"]);
    assert_fails_with(&o, "--rnn-units 32 differs from the resumed run's 16");
    let o = charrnn(&["train", "--checkpoint-dir", split.to_str().unwrap(), "--resume", "--cell", "lstm"]);
    assert_fails_with(&o, "--cell lstm differs from the resumed run's gru");
    let o = charrnn(&["train", "--checkpoint-dir", split.to_str().unwrap(), "--resume", "--epochs", "1"]);
    assert_fails_with(&o, "fewer than the 2 epochs already trained");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = charrnn(&["train", "--checkpoint-dir", empty.to_str().unwrap(), "--resume"]);
    assert_fails_with(&o, "nothing to resume");

    // Metrics, plot, best checkpoint; --keep prunes old periodic checkpoints.
    let metrics = std::fs::read_to_string(straight.join("metrics.jsonl")).unwrap();
    let epochs: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "epoch")
        .collect();
    assert_eq!(epochs.len(), 2);
    assert!(epochs[1]["val_loss"].as_f64().unwrap() > 0.0);
    assert!(std::fs::read_to_string(straight.join("loss.svg")).unwrap().contains("<polyline"));
    assert!(straight.join("best.safetensors").exists());
    let kept = run("c", &["--epochs", "3", "--keep", "1"]);
    let mut names: Vec<String> =
        std::fs::read_dir(&kept).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        ["best.safetensors", "ckpt_3.optim.safetensors", "ckpt_3.safetensors", "loss.svg", "metrics.jsonl"]
    );

    // info, human-readable and JSON
    let o = charrnn(&["info", straight.join("ckpt_2.safetensors").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("embedding 8 -> 1 layer(s) of gru 16") && text.contains("resumable   yes"),
        "{text}"
    );
    assert!(text.contains("epoch    2  train"), "{text}");
    let o = charrnn(&["info", straight.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["provenance"]["epoch"], 2);
    assert_eq!(v["provenance"]["seed"], 3);
    assert_eq!(v["config"]["rnn_units"], 16);
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
    assert_fails_with(&train(latin1.to_str().unwrap()), "not valid UTF-8 (bad byte at offset 3)");

    let short = dir.path().join("short.txt");
    std::fs::write(&short, "a short text".repeat(5)).unwrap();
    let o = train(short.to_str().unwrap());
    assert_fails_with(&o, "too short");
    assert!(stderr(&o).contains("needs at least 94 characters"), "{}", stderr(&o));

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
        (vec!["generate", "--temperature", "-0.5"], "must be 0 (greedy) or a positive number"),
        (vec!["generate", "--temperature", "NaN"], "must be 0 (greedy) or a positive number"),
        (vec!["train", "--device", "tpu"], "invalid value 'tpu'"),
    ] {
        assert_fails_with(&charrnn(&args), needle);
    }
}

#[cfg(not(feature = "cuda"))]
/// TF32 is a GPU's; on the CPU it is refused before any work, for training and bench alike.
#[test]
fn tf32_on_the_cpu_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ckpt = dir.path().join("ckpt");
    let mut args =
        vec!["train", "--data", &data, "--checkpoint-dir", ckpt.to_str().unwrap(), "--precision", "tf32"];
    args.extend_from_slice(SMALL);
    assert_fails_with(&charrnn(&args), "--precision tf32 needs a GPU (--device cuda)");
    assert!(!ckpt.exists(), "nothing is written");
    let o =
        charrnn(&["bench", "--device", "cpu", "--precision", "tf32", "--rnn-units", "8", "--batches", "1"]);
    assert_fails_with(&o, "--precision tf32 needs a GPU");
}

#[test]
fn cuda_in_a_cpu_build_says_how_to_get_it() {
    assert_fails_with(&charrnn(&["train", "--device", "cuda"]), "rebuild with --features cuda");
}

#[test]
fn generate_refuses_bad_checkpoints_and_unknown_start_characters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_fails_with(&charrnn(&["generate", "--checkpoint", d]), "no checkpoint");

    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    assert_fails_with(&charrnn(&["generate", "--checkpoint", junk.to_str().unwrap()]), "junk.safetensors");

    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    let mut a = vec!["train", "--data", &data, "--epochs", "1", "--checkpoint-dir", ck.to_str().unwrap()];
    a.extend_from_slice(SMALL);
    assert!(charrnn(&a).status.success());
    let o = charrnn(&["generate", "--checkpoint", ck.to_str().unwrap(), "--start", "ROMEO: Zebra"]);
    assert_fails_with(&o, "6 character(s) are not in the model's vocabulary: ':', 'E', 'M', 'O', 'R', 'Z'");
    assert!(o.stdout.is_empty(), "nothing is printed before the start is checked");
}

#[test]
fn a_failed_checkpoint_write_stops_training_and_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    // A folder where the second checkpoint should go: the rename onto it fails.
    std::fs::create_dir_all(ck.join("ckpt_2.safetensors/blocker")).unwrap();
    let mut a = vec![
        "train",
        "--data",
        &data,
        "--epochs",
        "3",
        "--save-every",
        "1",
        "--checkpoint-dir",
        ck.to_str().unwrap(),
    ];
    a.extend_from_slice(SMALL);
    let o = charrnn(&a);
    assert_fails_with(&o, "cannot write");
    assert!(stderr(&o).contains("ckpt_2.safetensors"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Epoch 3"), "training stopped at the failure");
    charrnn_core::checkpoint::load(&ck.join("ckpt_1.safetensors"), &charrnn_core::Compute::cpu())
        .expect("epoch 1 intact");
    assert_eq!(stray_temporaries(&ck), Vec::<String>::new());
    // What is left still resumes from epoch 1.
    let o = charrnn(&["train", "--data", &data, "--resume", ck.to_str().unwrap(), "--epochs", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("already trained 1 epochs"), "{}", stderr(&o));
}

#[test]
fn eval_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    let mut a = vec!["train", "--data", &data, "--epochs", "1", "--checkpoint-dir", ck.to_str().unwrap()];
    a.extend_from_slice(SMALL);
    assert!(charrnn(&a).status.success());
    let other = dir.path().join("other.txt");
    std::fs::write(&other, "the quick brown fox! THE END").unwrap();
    let o =
        charrnn(&["eval", "--checkpoint", ck.to_str().unwrap(), "--data", other.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["skipped"], 7, "{v}"); // ! T H E E N D
    let nats = v["nats_per_char"].as_f64().unwrap();
    assert!(nats > 0.0 && (v["perplexity"].as_f64().unwrap() - nats.exp()).abs() < 1e-9);
}

#[test]
fn sigterm_also_saves_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ckpt = dir.path().join("ckpt");
    let (status, rest) = train_until(&data, &ckpt, "-TERM", &[]);
    assert_eq!(status, Some(130), "{rest:?}");
    assert!(ckpt.join("interrupted.safetensors").exists());
    assert!(ckpt.join("interrupted.optim.safetensors").exists());
}

/// Starts a long training run, sends `signal` once the first batch is logged, and returns the
/// exit code and what the run printed after that.
fn train_until(data: &str, ckpt: &Path, signal: &str, extra: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_charrnn"))
        .args(["train", "--data", data, "--epochs", "1000", "--checkpoint-dir", ckpt.to_str().unwrap()])
        .args(extra)
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
    assert!(Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap().success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    (child.wait().unwrap().code(), rest)
}

/// Trains `epochs` epochs of the small model into `dir` (a checkpoint after every epoch).
fn train_into(data: &str, dir: &Path, epochs: &str, extra: &[&str]) -> Output {
    let mut a = vec!["train", "--data", data, "--epochs", epochs, "--save-every", "1"];
    a.extend_from_slice(&["--checkpoint-dir", dir.to_str().unwrap()]);
    a.extend_from_slice(SMALL);
    a.extend_from_slice(extra);
    charrnn(&a)
}

/// Two one-epoch runs of the same settings and different seeds, in folders `a` and `b`.
fn two_runs(dir: &Path, data: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    assert!(train_into(data, &a, "1", &["--seed", "1"]).status.success());
    assert!(train_into(data, &b, "1", &["--seed", "2"]).status.success());
    (a, b)
}

/// Every file in `dir` with its contents, to show that nothing changed.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn a_fresh_run_refuses_a_folder_holding_another_run_and_overwrite_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    assert!(train_into(&data, &ck, "2", &["--seed", "1"]).status.success());
    let before = snapshot(&ck);
    let o = train_into(&data, &ck, "1", &["--seed", "2", "--keep", "1"]);
    assert_fails_with(&o, "already holds a training run");
    assert!(stderr(&o).contains("--resume") && stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(snapshot(&ck), before, "the first run's files were touched");

    let o = train_into(&data, &ck, "1", &["--seed", "2", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = snapshot(&ck).into_iter().map(|(n, _)| n).collect();
    assert!(!names.contains(&"ckpt_2.safetensors".to_string()), "{names:?}");
    let p = charrnn_core::checkpoint::read_provenance(&ck.join("ckpt_1.safetensors")).unwrap();
    assert_eq!(p.seed, 2);
    let metrics = std::fs::read_to_string(ck.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"epoch\":2")).count(), 0, "{metrics}");

    let o = charrnn(&["train", "--resume", ck.to_str().unwrap(), "--overwrite"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// `--overwrite` removes the earlier run's samples with its other files: the new run's
/// `samples.txt` holds its own samples only.
#[test]
fn overwrite_removes_the_earlier_runs_samples() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    let sampled = |seed: &'static str, extra: &[&'static str]| {
        let mut args = vec!["--seed", seed, "--sample-every", "1", "--sample-length", "20"];
        args.extend_from_slice(extra);
        let o = train_into(&data, &ck, "2", &args);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read_to_string(ck.join("samples.txt")).unwrap()
    };
    let first = sampled("1", &[]);
    assert_eq!(first.matches("--- epoch ").count(), 2, "{first}");
    let second = sampled("2", &["--overwrite"]);
    assert_eq!(second.matches("--- epoch ").count(), 2, "the first run's samples were kept: {second}");
    assert!(!second.contains(&first), "{second}");
}

#[test]
fn pruning_keeps_other_runs_checkpoints_and_the_one_just_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let (a, b) = two_runs(dir.path(), &data);
    // Another run's checkpoint in B's folder, under a name pruning would otherwise take.
    std::fs::copy(a.join("ckpt_1.safetensors"), b.join("ckpt_0.safetensors")).unwrap();
    let b_s = b.to_str().unwrap();
    let o = charrnn(&[
        "train",
        "--data",
        &data,
        "--resume",
        b_s,
        "--epochs",
        "3",
        "--save-every",
        "1",
        "--keep",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = snapshot(&b).into_iter().map(|(n, _)| n).collect();
    for kept in ["ckpt_0.safetensors", "ckpt_3.safetensors", "ckpt_3.optim.safetensors"] {
        assert!(names.contains(&kept.to_string()), "{kept} missing: {names:?}");
    }
    for gone in ["ckpt_1.safetensors", "ckpt_2.safetensors", "ckpt_2.optim.safetensors"] {
        assert!(!names.contains(&gone.to_string()), "{gone} kept: {names:?}");
    }
}

/// Rewrites the training position (with the run's settings) inside an optimizer file.
fn edit_position(optim: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let bytes = std::fs::read(optim).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&meta["state"]).unwrap();
    edit(&mut state);
    meta.insert("state".into(), state.to_string());
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    std::fs::write(optim, safetensors::serialize(st.tensors(), Some(meta)).unwrap()).unwrap();
}

#[test]
fn settings_read_back_on_resume_are_validated_like_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    assert!(train_into(&data, &ck, "1", &["--seed", "1"]).status.success());
    let optim = ck.join("ckpt_1.optim.safetensors");
    let good = std::fs::read(&optim).unwrap();
    let cases: [(&str, serde_json::Value, &str); 7] = [
        ("keep", 0.into(), "--keep must be at least 1, got 0"),
        ("batch_size", 0.into(), "--batch-size must be at least 1, got 0"),
        ("buffer_size", 0.into(), "--buffer-size must be at least 1, got 0"),
        ("save_every", 0.into(), "--save-every must be at least 1, got 0"),
        ("seq_len", 0.into(), "--seq-len must be at least 1, got 0"),
        ("seq_len", u64::MAX.into(), "too large"),
        ("dropout", 1.5.into(), "--dropout must be in [0, 1), got 1.5"),
    ];
    for (key, value, needle) in cases {
        std::fs::write(&optim, &good).unwrap();
        edit_position(&optim, |s| s["settings"][key] = value.clone());
        let before = snapshot(&ck);
        let o = charrnn(&["train", "--data", &data, "--resume", ck.to_str().unwrap(), "--epochs", "2"]);
        assert_fails_with(&o, needle);
        assert!(stderr(&o).contains("cannot be resumed"), "{key}: {}", stderr(&o));
        assert_eq!(o.status.code(), Some(1), "{key}");
        assert_eq!(snapshot(&ck), before, "{key}: files changed");
    }
}

#[test]
fn an_optimizer_state_from_another_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let (a, b) = two_runs(dir.path(), &data);
    // Same settings, same step count: only the run ids tell them apart.
    std::fs::copy(b.join("ckpt_1.optim.safetensors"), a.join("ckpt_1.optim.safetensors")).unwrap();
    let o = charrnn(&["train", "--data", &data, "--resume", a.to_str().unwrap(), "--epochs", "2"]);
    assert_fails_with(&o, "belongs to run");
}

#[test]
fn a_run_removes_temporaries_that_a_crashed_write_left() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    assert!(train_into(&data, &ck, "1", &["--seed", "1"]).status.success());
    std::fs::write(ck.join(".charrnn-AbC123.tmp"), vec![0u8; 4096]).unwrap();
    std::fs::write(ck.join("notes.tmp"), b"mine").unwrap();
    let o = charrnn(&["train", "--data", &data, "--resume", ck.to_str().unwrap(), "--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(".charrnn-AbC123.tmp"), "{}", stderr(&o));
    assert!(!ck.join(".charrnn-AbC123.tmp").exists());
    assert_eq!(std::fs::read(ck.join("notes.tmp")).unwrap(), b"mine", "a file not of our naming was touched");
}

/// `info --json | head -1` on a model whose report is larger than a pipe's buffer: the closed
/// pipe ends the command quietly, as it does `generate`.
#[test]
fn a_closed_stdout_is_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..6000u32).filter_map(|i| char::from_u32(0x4e00 + i)).collect::<String>().repeat(2);
    let data = dir.path().join("wide.txt");
    std::fs::write(&data, text).unwrap();
    let ck = dir.path().join("ck");
    let o = train_into(data.to_str().unwrap(), &ck, "1", &["--seed", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut child = Command::new(env!("CARGO_BIN_EXE_charrnn"))
        .args(["info", "--json", ck.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    assert_eq!(first.trim(), "{");
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// Runs the binary for at most `limit`: its output, or `None` (after killing it) when it is
/// still running then.
fn run_for(args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_charrnn"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(child.wait_with_output().unwrap())
}

/// Runs the binary, failing the test (instead of hanging it) if it takes over `secs` seconds.
fn charrnn_within(args: &[&str], secs: u64) -> Output {
    run_for(args, Duration::from_secs(secs))
        .unwrap_or_else(|| panic!("charrnn {args:?} still running after {secs} s"))
}

#[test]
fn devices_and_fifos_are_refused_without_reading_or_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    assert!(train_into(&data, &ck, "1", &["--seed", "1"]).status.success());
    let ck_s = ck.to_str().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let link = dir.path().join("zero-link");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let fresh = dir.path().join("new");
    for special in ["/dev/zero", fifo.to_str().unwrap(), link.to_str().unwrap()] {
        let runs: [Vec<&str>; 5] = [
            vec!["train", "--data", special, "--checkpoint-dir", fresh.to_str().unwrap()],
            vec!["generate", "--checkpoint", special],
            vec!["generate", "--checkpoint", ck_s, "--start-file", special],
            vec!["eval", "--checkpoint", ck_s, "--data", special],
            vec!["info", special],
        ];
        for args in runs {
            let o = charrnn_within(&args, 20);
            assert_fails_with(&o, "not a regular file");
            assert_eq!(o.status.code(), Some(1), "{args:?}");
        }
    }
}

#[test]
fn a_damaged_metrics_line_is_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    assert!(train_into(&data, &ck, "1", &["--seed", "1"]).status.success());
    let metrics = ck.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"kind\": \"epo\n");
    std::fs::write(&metrics, text).unwrap();
    let o = charrnn(&["train", "--data", &data, "--resume", ck.to_str().unwrap(), "--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a metrics record, skipped"), "{}", stderr(&o));
    let after = std::fs::read_to_string(&metrics).unwrap();
    assert!(after.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{after}");
}

#[test]
fn absurd_sizes_are_refused_with_an_estimate_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    let ck_s = ck.to_str().unwrap();
    let fresh = dir.path().join("fresh");
    let fresh_s = fresh.to_str().unwrap();
    let tiny = ["--batch-size", "4", "--seq-len", "20", "--checkpoint-dir", fresh_s];
    let o = charrnn_within(&[&["train", "--data", &data, "--rnn-units", "1000000"][..], &tiny].concat(), 20);
    assert_fails_with(&o, "needs about");
    assert!(stderr(&o).contains("--rnn-units 1000000"), "{}", stderr(&o));
    let big = u64::MAX.to_string();
    let o = charrnn_within(&["train", "--data", &data, "--seq-len", &big, "--checkpoint-dir", fresh_s], 20);
    assert_fails_with(&o, "too large");
    let o = charrnn_within(
        &["train", "--data", &data, "--batch-size", "9223372036854775808", "--seq-len", "1"],
        20,
    );
    assert_fails_with(&o, "too large");
    assert!(!fresh.exists(), "nothing is written for a refused run");

    assert!(train_into(&data, &ck, "1", &["--seed", "1"]).status.success());
    let o = charrnn_within(&["generate", "--checkpoint", ck_s, "--num-samples", "4611686018427387904"], 20);
    assert_fails_with(&o, "--num-samples 4611686018427387904");
    let o = charrnn_within(&["eval", "--checkpoint", ck_s, "--data", &data, "--batch-size", &big], 20);
    assert_fails_with(&o, "--batch-size");
    for flag in ["--seq-len", "--batch-size", "--vocab-size", "--rnn-units"] {
        let o = charrnn_within(&["bench", flag, &big, "--device", "cpu"], 20);
        assert_fails_with(&o, flag);
        assert_eq!(o.status.code(), Some(1), "{flag}");
    }
    let o = charrnn_within(&["download", "--timeout", &big, "--output", fresh_s], 20);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn an_endless_warm_up_trains_at_a_tiny_rate_instead_of_an_infinite_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let o = train_into(&data, &dir.path().join("ck"), "1", &["--warmup-steps", &u64::MAX.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn resume_from_a_folder_passes_over_a_damaged_pair() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    assert!(train_into(&data, &ck, "2", &["--seed", "1"]).status.success());
    // The newest pair's optimizer state is cut short; its header is still readable.
    let optim = ck.join("ckpt_2.optim.safetensors");
    let bytes = std::fs::read(&optim).unwrap();
    std::fs::write(&optim, &bytes[..bytes.len() - 100]).unwrap();
    // Given directly, the damaged pair is an error, not a silent substitute.
    let o = charrnn(&["train", "--data", &data, "--resume", ck.join("ckpt_2.safetensors").to_str().unwrap()]);
    assert_fails_with(&o, "ckpt_2.optim.safetensors");
    let o = charrnn(&["train", "--data", &data, "--resume", ck.to_str().unwrap(), "--epochs", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("skipped") && err.contains("ckpt_2.safetensors"), "{err}");
    assert!(err.contains("resuming") && err.contains("ckpt_1.safetensors"), "{err}");
}

/// Every numeric flag of every command with 0, -1, 2^64−1, 1e30, nan and inf: each run ends
/// with exit 1 or 2 and an `error:` line, or (where the value is legitimate, such as a huge
/// --epochs) is still working after a moment; never a panic (101) or an abort (134).
#[test]
fn every_numeric_flag_survives_hostile_values() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    let ck = dir.path().join("ck");
    assert!(train_into(&data, &ck, "1", &["--seed", "1"]).status.success());
    let (ck_s, out) = (ck.to_str().unwrap().to_string(), dir.path().join("o").to_string_lossy().into_owned());
    let small: Vec<String> = SMALL.iter().map(|s| s.to_string()).collect();
    let commands: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            [
                vec!["train".into(), "--data".into(), data.clone(), "--checkpoint-dir".into(), out.clone()],
                small.clone(),
            ]
            .concat(),
            vec![
                "--epochs",
                "--batch-size",
                "--seq-len",
                "--buffer-size",
                "--embedding-dim",
                "--rnn-units",
                "--layers",
                "--learning-rate",
                "--val-fraction",
                "--save-every",
                "--seed",
                "--keep",
                "--clip-grad-norm",
                "--warmup-steps",
                "--min-lr",
                "--weight-decay",
                "--dropout",
                "--fit-minutes",
            ],
        ),
        (
            vec!["generate".into(), "--checkpoint".into(), ck_s.clone(), "--length".into(), "20".into()],
            vec!["--length", "--temperature", "--top-k", "--top-p", "--seed", "--num-samples"],
        ),
        (
            vec!["eval".into(), "--checkpoint".into(), ck_s.clone(), "--data".into(), data.clone()],
            vec!["--seq-len", "--batch-size"],
        ),
        (
            vec!["bench".into(), "--device".into(), "cpu".into(), "--rnn-units".into(), "16".into()],
            vec![
                "--batches",
                "--gen-chars",
                "--batch-size",
                "--seq-len",
                "--embedding-dim",
                "--rnn-units",
                "--layers",
                "--vocab-size",
                "--dropout",
                "--weight-drop",
                "--locked-dropout",
                "--embedding-dropout",
            ],
        ),
        (
            vec![
                "download".into(),
                "--url".into(),
                "http://127.0.0.1:9/x".into(),
                "--output".into(),
                out.clone(),
            ],
            vec!["--timeout", "--max-bytes"],
        ),
    ];
    let values = ["0", "-1", "18446744073709551615", "1e30", "nan", "inf"];
    let mut runs = Vec::new();
    for (base, flags) in &commands {
        for flag in flags {
            for value in values {
                let mut args = base.clone();
                args.push(flag.to_string());
                args.push(value.to_string());
                runs.push(args);
            }
        }
    }
    let check = |args: &Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Still running after a moment means legitimate work (a huge --epochs): fine.
        let Some(o) = run_for(&args, Duration::from_millis(2500)) else { return };
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        match o.status.code() {
            Some(0) => {}
            Some(1 | 2) => assert!(err.contains("error:"), "{args:?}: {err}"),
            other => panic!("{args:?} ended with {other:?} ({:?}): {err}", o.status),
        }
    };
    std::thread::scope(|s| {
        for part in runs.chunks(runs.len().div_ceil(4)) {
            s.spawn(move || part.iter().for_each(check));
        }
    });
}

/// Ctrl-C in the middle of a download removes its temporary file and exits 130.
#[test]
fn an_interrupted_download_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::trickling_server(&[b'z'; 256], Duration::from_millis(20), Duration::from_secs(20));
    let out = dir.path().join("corpus.txt");
    let child = Command::new(env!("CARGO_BIN_EXE_charrnn"))
        .args(["download", "--url", &url, "--output", out.to_str().unwrap(), "--timeout", "60"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the temporary file, then interrupt.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::fs::read_dir(dir.path()).unwrap().next().is_none() {
        assert!(std::time::Instant::now() < until, "the download never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `bench --json` reports its figures, with the bf16 kernel's where the CPU has AVX512-BF16.
#[test]
fn bench_reports_the_f32_and_bf16_rates() {
    let o = charrnn(&[
        "bench",
        "--device",
        "cpu",
        "--rnn-units",
        "16",
        "--embedding-dim",
        "8",
        "--batch-size",
        "4",
        "--seq-len",
        "10",
        "--batches",
        "1",
        "--gen-chars",
        "200",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["train_ms_per_batch", "gemm_gflops", "step_product_gflops", "gen_chars_per_s"] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {r}");
    }
    let has_bf16 = cpu_has("avx512_bf16");
    assert_eq!(r.get("bf16").is_some(), has_bf16, "{r}");
    if has_bf16 {
        for key in ["gemm_gflops", "step_product_gflops", "gen_chars_per_s"] {
            assert!(r["bf16"][key].as_f64().is_some_and(|v| v > 0.0), "bf16 {key}: {r}");
        }
        let has_amx = cpu_has("amx_bf16");
        assert_eq!(r["bf16"]["tiles"], if has_amx { "amx" } else { "dot" }, "{r}");
    }
}

/// `bench --preset` times that run's model with its regularisers on in the timed steps; sizes
/// and dropout flags typed beside it override the preset's.
#[test]
fn bench_times_a_presets_model_and_regularisers() {
    let small = ["--rnn-units", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-len", "10"];
    let bench = |extra: &[&str]| -> serde_json::Value {
        let quick = ["bench", "--device", "cpu", "--batches", "1", "--gen-chars", "100", "--json"];
        let o = charrnn(&[&quick[..], &small, extra].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let plain = bench(&[]);
    assert_eq!(plain["layers"], 1, "{plain}");
    for kind in ["output", "weight", "locked", "embedding"] {
        assert_eq!(plain["dropout"][kind], 0.0, "the tutorial drops nothing: {plain}");
    }
    let hour = bench(&["--preset", "hour", "--weight-drop", "0.5"]);
    assert_eq!((hour["layers"].as_u64(), hour["rnn_units"].as_u64()), (Some(2), Some(16)), "{hour}");
    assert_eq!(hour["dropout"]["weight"], 0.5, "the typed flag wins: {hour}");
    for kind in ["output", "embedding"] {
        assert!(hour["dropout"][kind].as_f64().is_some_and(|p| p > 0.0), "{kind}: {hour}");
    }
    let o = charrnn(
        &[
            &["bench", "--device", "cpu", "--batches", "1", "--gen-chars", "100"][..],
            &small,
            &["--locked-dropout", "0.3"],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("training with locked dropout 0.3"), "{table}");
    assert_fails_with(&charrnn(&["bench", "--device", "cpu", "--weight-drop", "1.5"]), "--weight-drop");
}

/// Trains into `dir` with the small settings and `extra`; returns the losses printed per epoch.
fn train_losses(data: &str, dir: &Path, extra: &[&str]) -> Vec<f64> {
    let mut a = vec!["train", "--data", data, "--seed", "3", "--save-every", "1"];
    a.extend(["--checkpoint-dir", dir.to_str().unwrap()]);
    a.extend_from_slice(SMALL);
    a.extend_from_slice(extra);
    let o = charrnn(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    epoch_losses(&o)
}

/// `--precision bf16` through the binary (the layers' gradients against f32: tests/bf16.rs).
#[test]
fn bf16_training_learns_resumes_bit_for_bit_and_samples_in_either_precision() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_corpus(dir.path());
    if !cpu_has("avx512_bf16") {
        println!("this CPU lacks avx512_bf16: checking the refusal");
        let o = charrnn(&["train", "--data", &data, "--precision", "bf16", "--device", "cpu"]);
        assert_fails_with(&o, "avx512_bf16");
        return;
    }
    let bf16 = ["--precision", "bf16"];
    let straight = dir.path().join("straight");
    let losses = train_losses(&data, &straight, &[&bf16[..], &["--epochs", "2"]].concat());
    assert!(losses.len() == 2 && losses[1] < losses[0], "{losses:?}");
    let split = dir.path().join("split");
    train_losses(&data, &split, &[&bf16[..], &["--epochs", "1"]].concat());
    let o = charrnn(&["train", "--checkpoint-dir", split.to_str().unwrap(), "--resume", "--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for file in ["ckpt_2.safetensors", "ckpt_2.optim.safetensors"] {
        assert_eq!(tensor_bytes(&straight.join(file)), tensor_bytes(&split.join(file)), "{file}");
    }
    // The same seed in f32 takes another path (so the products above were bf16), to a
    // similar loss.
    let f32_run = dir.path().join("f32");
    let f32_losses = train_losses(&data, &f32_run, &["--epochs", "2"]);
    assert_ne!(
        tensor_bytes(&f32_run.join("ckpt_2.safetensors")),
        tensor_bytes(&straight.join("ckpt_2.safetensors"))
    );
    assert!((f32_losses[1] - losses[1]).abs() < 0.05, "f32 {f32_losses:?} against bf16 {losses:?}");

    let ckpt = straight.join("ckpt_2.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    for precision in ["f32", "bf16"] {
        let args = [
            "generate",
            "--checkpoint",
            ckpt,
            "--start",
            "the ",
            "--length",
            "100",
            "--seed",
            "1",
            "--precision",
            precision,
        ];
        let o = charrnn(&args);
        assert!(o.status.success(), "{precision}: {}", stderr(&o));
        assert!(o.stdout.starts_with(b"the ") && o.stdout.len() > 100, "{precision}");
        assert_eq!(charrnn(&args).stdout, o.stdout, "{precision}: the same seed gives the same text");
    }
    let score = |precision: &str| -> f64 {
        let o = charrnn(&["eval", "--checkpoint", ckpt, "--data", &data, "--json", "--precision", precision]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["nats_per_char"].as_f64().unwrap()
    };
    let (exact, rounded) = (score("f32"), score("bf16"));
    assert!(exact != rounded && (exact - rounded).abs() < 0.01, "f32 {exact} against bf16 {rounded}");
}
