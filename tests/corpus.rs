//! Your own text through the binary: folders and globs, the token cache and its checks, early
//! ends of a run, and samples while training.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

mod common;
use common::{stderr, tensor_bytes};

/// Runs the binary with its token caches in `cache`.
fn charrnn(args: &[&str], cache: &Path) -> Output {
    common::charrnn_command(args).env("CHARRNN_CACHE_DIR", cache).output().expect("the binary runs")
}

fn ok(o: Output) -> String {
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    err
}

fn fails_with(o: Output, needle: &str) -> String {
    let err = stderr(&o);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    err
}

const SMALL: &[&str] =
    &["--batch-size", "4", "--seq-len", "20", "--embedding-dim", "8", "--rnn-units", "16", "--device", "cpu"];

fn train(data: &[&str], dir: &Path, cache: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--checkpoint-dir", dir.to_str().unwrap(), "--data"];
    args.extend_from_slice(data);
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    charrnn(&args, cache)
}

/// The text a token cache holds, decoded from its documented layout.
fn cached_text(cache_dir: &Path) -> String {
    let files: Vec<PathBuf> = std::fs::read_dir(cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tokens"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    assert_eq!(&bytes[..8], b"CRNNTOK1");
    let n = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + n]).unwrap();
    let vocab: Vec<char> = header["vocab"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().chars().next().unwrap())
        .collect();
    let width = header["width"].as_u64().unwrap() as usize;
    assert_eq!(width, [1, 2, 4][(vocab.len() > 256) as usize + (vocab.len() > 65_536) as usize]);
    let id = |b: &[u8]| b.iter().rev().fold(0usize, |v, &x| v << 8 | x as usize);
    bytes[(16 + n).div_ceil(8) * 8..].chunks_exact(width).map(|b| vocab[id(b)]).collect()
}

/// A temporary folder with a token-cache folder and `text` in text.txt.
fn workspace(text: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    std::fs::write(&data, text).unwrap();
    let cache = dir.path().join("cache");
    (dir, cache, data)
}

fn text(n: usize, seed: u64) -> String {
    let words = ["the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ", "dog", ".\n", ", "];
    (0..n).map(|i| words[(i * 3 + seed as usize + (i / 7) % 3) % words.len()]).collect()
}

#[test]
fn folders_and_globs_are_joined_in_order_with_the_separator() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b, c) = (text(300, 1), text(300, 2), text(300, 3));
    std::fs::create_dir_all(d.join("docs/sub")).unwrap();
    std::fs::write(d.join("docs/sub/2.txt"), &b).unwrap();
    std::fs::write(d.join("docs/1.txt"), &a).unwrap();
    std::fs::write(d.join("docs/.hidden.txt"), "never read").unwrap();
    std::fs::write(d.join("extra.md"), &c).unwrap();
    let cache = d.join("cache");
    let glob = d.join("*.md");
    let err = ok(train(
        &[d.join("docs").to_str().unwrap(), glob.to_str().unwrap()],
        &d.join("ck"),
        &cache,
        &["--epochs", "1", "--doc-separator", "\n~\n"],
    ));
    assert!(err.contains("3 file(s)"), "{err}");
    let per_source =
        format!("docs: 2 file(s), {} bytes, {} characters", a.len() + b.len(), a.len() + b.len());
    assert!(err.contains(&per_source), "{err}");
    let joined = format!("{a}\n~\n{b}\n~\n{c}");
    assert_eq!(cached_text(&cache), joined);
    // The run records the joined text's checksum.
    let info = charrnn(&["info", d.join("ck/ckpt_1.safetensors").to_str().unwrap(), "--json"], &cache);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["provenance"]["corpus_sha256"].as_str().unwrap(),
        format!("{:x}", Sha256::digest(joined.as_bytes()))
    );
    // eval reads the same way.
    let o = charrnn(
        &[
            "eval",
            "--checkpoint",
            d.join("ck").to_str().unwrap(),
            "--data",
            d.join("docs").to_str().unwrap(),
            "--json",
        ],
        &cache,
    );
    let score: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stderr(&o)));
    assert!(score["characters"].as_u64().unwrap() > 500, "{score}");
}

/// More than 256 distinct characters take 2-byte ids.
#[test]
fn a_large_vocabulary_is_cached_in_wider_ids() {
    let cjk: String = (0..3000).map(|i| char::from_u32(0x4E00 + (i * 7 % 300) as u32).unwrap()).collect();
    let (dir, cache, data) = workspace(&cjk);
    ok(train(&[data.to_str().unwrap()], &dir.path().join("ck"), &cache, &["--epochs", "1"]));
    assert_eq!(cached_text(&cache), cjk);
}

#[test]
fn sources_that_name_nothing_or_are_not_text_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = d.join("cache");
    std::fs::create_dir(d.join("empty")).unwrap();
    fails_with(train(&[d.join("empty").to_str().unwrap()], &d.join("ck"), &cache, &[]), "holds no files");
    fails_with(
        train(&[d.join("*.nothing").to_str().unwrap()], &d.join("ck"), &cache, &[]),
        "matches no file",
    );
    std::fs::create_dir(d.join("mixed")).unwrap();
    std::fs::write(d.join("mixed/a.txt"), text(400, 1)).unwrap();
    std::fs::write(d.join("mixed/b.txt"), b"caf\xe9 au lait").unwrap();
    let mixed = d.join("mixed");
    let err = fails_with(
        train(&[mixed.to_str().unwrap()], &d.join("ck"), &cache, &[]),
        "b.txt is not valid UTF-8 (bad byte at offset 3)",
    );
    assert!(err.contains("--skip-invalid"), "{err}");
    let err =
        ok(train(&[mixed.to_str().unwrap()], &d.join("ck"), &cache, &["--epochs", "1", "--skip-invalid"]));
    assert!(err.contains("skipped 1 file(s) that are not UTF-8") && err.contains("b.txt"), "{err}");
    assert_eq!(cached_text(&cache), text(400, 1));
}

#[test]
fn the_cache_is_reused_rebuilt_when_sources_change_and_never_trusted_when_damaged() {
    let (dir, cache, data) = workspace(&text(500, 1));
    let d = dir.path();
    let run = |extra: &[&str]| {
        let mut args = vec!["--epochs", "1", "--overwrite"];
        args.extend_from_slice(extra);
        ok(train(&[data.to_str().unwrap()], &d.join("ck"), &cache, &args))
    };
    assert!(run(&[]).contains("prepared"));
    assert!(!run(&[]).contains("prepared"), "the second run reuses the cache");
    // A changed source: a rebuild, and a resume of the old run is refused.
    std::fs::write(&data, text(520, 1)).unwrap();
    let err = run(&[]);
    assert!(err.contains("sources that have changed") && err.contains("prepared"), "{err}");
    assert_eq!(cached_text(&cache), text(520, 1));
    std::fs::write(&data, text(500, 2)).unwrap();
    fails_with(
        charrnn(
            &["train", "--resume", d.join("ck").to_str().unwrap(), "--epochs", "2", "--device", "cpu"],
            &cache,
        ),
        "differs from the text",
    );
    // A truncated cache and one with a damaged header are rebuilt, not read.
    let file = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "tokens"))
        .unwrap();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 7]).unwrap();
    let err = run(&[]);
    assert!(err.contains("truncated") && err.contains("prepared"), "{err}");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[20] = b'#';
    std::fs::write(&file, &bytes).unwrap();
    let err = run(&[]);
    assert!(err.contains("damaged header") && err.contains("prepared"), "{err}");
    // An id past the vocabulary.
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] = 250;
    std::fs::write(&file, &bytes).unwrap();
    let err = run(&[]);
    assert!(err.contains("outside its vocabulary") && err.contains("prepared"), "{err}");
    // --no-cache leaves nothing behind.
    std::fs::remove_dir_all(&cache).unwrap();
    run(&["--no-cache"]);
    assert!(!cache.exists() || std::fs::read_dir(&cache).unwrap().next().is_none());
}

#[test]
fn max_steps_ends_with_a_checkpoint_that_resumes_to_the_same_run() {
    let (dir, cache, data) = workspace(&text(800, 1));
    let d = dir.path();
    let whole = d.join("whole");
    ok(train(&[data.to_str().unwrap()], &whole, &cache, &["--epochs", "2", "--seed", "3"]));
    // A run stopped by a limit, then resumed to its end: the same weights as the whole run;
    // returns what the stopped run printed.
    let stop_then_resume = |name: &str, limit: &[&str]| {
        let run = d.join(name);
        let flags = [&["--epochs", "2", "--seed", "3"][..], limit].concat();
        let err = ok(train(&[data.to_str().unwrap()], &run, &cache, &flags));
        assert!(!run.join("ckpt_2.safetensors").exists(), "{name}: stopped before the end");
        ok(charrnn(&["train", "--resume", run.to_str().unwrap(), "--device", "cpu"], &cache));
        assert_eq!(
            tensor_bytes(&run.join("ckpt_2.safetensors")),
            tensor_bytes(&whole.join("ckpt_2.safetensors")),
            "{name}"
        );
        err
    };
    let err = stop_then_resume("parts", &["--max-steps", "7"]);
    assert!(err.contains("reached --max-steps 7") && err.contains("charrnn train --resume"), "{err}");
    // A time limit ends the run at the next step boundary the same way.
    let err = stop_then_resume("timed", &["--max-minutes", "0.00001"]);
    assert!(err.contains("reached --max-minutes") && err.contains("after batch 1;"), "{err}");
}

#[test]
fn samples_while_training_leave_the_weights_unchanged() {
    let (dir, cache, data) = workspace(&text(800, 1));
    let d = dir.path();
    let (plain, watched) = (d.join("plain"), d.join("watched"));
    ok(train(
        &[data.to_str().unwrap()],
        &plain,
        &cache,
        &["--epochs", "2", "--seed", "5", "--dropout", "0.1"],
    ));
    let args = [
        "--epochs",
        "2",
        "--seed",
        "5",
        "--dropout",
        "0.1",
        "--sample-every",
        "1",
        "--sample-length",
        "40",
        "--start",
        "the ",
    ];
    let err = ok(train(&[data.to_str().unwrap()], &watched, &cache, &args));
    assert!(err.contains("--- sample after epoch 2 ---\nthe "), "{err}");
    let samples = std::fs::read_to_string(watched.join("samples.txt")).unwrap();
    assert_eq!(samples.matches("--- epoch ").count(), 2, "{samples}");
    assert_eq!(
        tensor_bytes(&plain.join("ckpt_2.safetensors")),
        tensor_bytes(&watched.join("ckpt_2.safetensors"))
    );
    // A start the text cannot give is refused before training starts.
    let err = fails_with(
        train(
            &[data.to_str().unwrap()],
            &d.join("other"),
            &cache,
            &["--sample-every", "1", "--start", "THE"],
        ),
        "--start: 3 character(s) are not in the model's vocabulary",
    );
    assert!(!err.contains("Epoch 1"), "{err}");
}

#[test]
fn patience_stops_a_run_whose_validation_gets_worse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Training text cycles one way; the held-out tail the other way: the better the model
    // learns the first, the worse it predicts the second.
    let data = d.join("text.txt");
    std::fs::write(&data, format!("{}{}", "abcd".repeat(900), "dcba".repeat(100))).unwrap();
    let ck = d.join("ck");
    let err = ok(train(
        &[data.to_str().unwrap()],
        &ck,
        &d.join("cache"),
        &["--epochs", "20", "--patience", "2", "--learning-rate", "0.01", "--save-every", "100"],
    ));
    assert!(err.contains("stopping early: no better validation loss for 2 epoch(s)"), "{err}");
    let epochs = err.matches(" nats/char (").count();
    assert!(epochs < 20, "{err}");
    assert!(
        ck.join("best.safetensors").exists() && ck.join(format!("ckpt_{epochs}.safetensors")).exists(),
        "{err}"
    );
}

fn info(ckpt: &Path, cache: &Path) -> serde_json::Value {
    let o = charrnn(&["info", ckpt.to_str().unwrap(), "--json"], cache);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stderr(&o)))
}

fn eval_nats(ckpt: &Path, data: &Path, cache: &Path) -> f64 {
    let o = charrnn(
        &[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
            "--device",
            "cpu",
        ],
        cache,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stderr(&o)));
    v["nats_per_char"].as_f64().unwrap()
}

#[test]
fn fine_tuning_starts_from_the_parent_and_extends_its_vocabulary_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = d.join("cache");
    let old = d.join("old.txt");
    std::fs::write(&old, text(1500, 1)).unwrap();
    let new = d.join("new.txt");
    std::fs::write(&new, text(1500, 2).replace("fox", "FOX").replace("dog", "DOG!")).unwrap();
    let parent = d.join("parent");
    ok(train(
        &[old.to_str().unwrap()],
        &parent,
        &cache,
        &["--epochs", "3", "--seed", "1", "--learning-rate", "0.01"],
    ));
    let parent_ckpt = parent.join("ckpt_3.safetensors");
    let from = ["--init-from", parent_ckpt.to_str().unwrap()];

    let err = fails_with(train(&[new.to_str().unwrap()], &d.join("a"), &cache, &from), "--extend-vocab");
    assert!(
        err.contains("6 character(s) the model was not trained on: '!', 'D', 'F', 'G', 'O', 'X'"),
        "{err}"
    );
    let shape =
        ["train", "--data", old.to_str().unwrap(), from[0], from[1], "--rnn-units", "32", "--device", "cpu"];
    fails_with(charrnn(&shape, &cache), "--rnn-units 32 disagrees");

    // A step too small to move any weight shows what the run starts from.
    let still = d.join("still");
    let args =
        [from[0], from[1], "--extend-vocab", "--max-steps", "1", "--learning-rate", "1e-30", "--seed", "2"];
    ok(train(&[new.to_str().unwrap()], &still, &cache, &args));
    let (p, f) = (info(&parent_ckpt, &cache), info(&still.join("interrupted.safetensors"), &cache));
    let (pv, fv) = (p["vocab"].as_array().unwrap(), f["vocab"].as_array().unwrap());
    assert_eq!(&fv[..pv.len()], &pv[..], "every old id keeps its character");
    assert_eq!(fv[pv.len()..].iter().map(|c| c.as_str().unwrap()).collect::<String>(), "!DFGOX");
    let sha = format!("{:x}", Sha256::digest(std::fs::read(&parent_ckpt).unwrap()));
    assert_eq!(f["provenance"]["parent_sha256"].as_str(), Some(sha.as_str()));
    let (pt, ft) = (tensor_bytes(&parent_ckpt), tensor_bytes(&still.join("interrupted.safetensors")));
    let v = pv.len();
    for ((name, a), (_, b)) in pt.iter().zip(&ft) {
        match name.as_str() {
            // [V, …]: the parent's rows first, fresh ones after.
            "embedding.weight" | "dense.weight" | "dense.bias" => {
                assert_eq!(&b[..a.len()], &a[..], "{name}: the parent's rows");
                let rows = (b.len() - a.len()) / (a.len() / v);
                assert_eq!(rows, 6, "{name}");
            }
            _ => assert_eq!(a, b, "{name}"),
        }
    }

    // Fine-tuned on the new text, the model still predicts the old one better than a fresh
    // model trained as long on the new text.
    let tuned = d.join("tuned");
    let steps = ["--max-steps", "60", "--epochs", "50", "--seed", "3", "--learning-rate", "0.01"];
    ok(train(
        &[new.to_str().unwrap()],
        &tuned,
        &cache,
        &[&from[..], &["--extend-vocab"], &steps[..]].concat(),
    ));
    let fresh = d.join("fresh");
    ok(train(&[new.to_str().unwrap()], &fresh, &cache, &steps));
    let (t, f) = (
        eval_nats(&tuned.join("interrupted.safetensors"), &old, &cache),
        eval_nats(&fresh.join("interrupted.safetensors"), &old, &cache),
    );
    assert!(t <= f, "old text: fine-tuned {t} nats/char, fresh {f}");
}

/// A default cache folder that cannot be made (here, under a home that is a file) falls back
/// to a temporary cache, and says so; training goes on.
#[test]
fn an_unusable_default_cache_folder_falls_back_to_a_temporary_cache() {
    let (dir, _, data) = workspace(&text(500, 1));
    let home = dir.path().join("not-a-folder");
    std::fs::write(&home, "").unwrap();
    let mut args = vec!["train", "--data", data.to_str().unwrap(), "--epochs", "1", "--checkpoint-dir"];
    let ck = dir.path().join("ck");
    args.push(ck.to_str().unwrap());
    args.extend_from_slice(SMALL);
    let o = Command::new(env!("CARGO_BIN_EXE_charrnn"))
        .args(&args)
        .env("HOME", &home)
        .env_remove("CHARRNN_CACHE_DIR")
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap();
    let err = ok(o);
    assert!(err.contains("using a temporary token cache"), "{err}");
    assert!(ck.join("ckpt_1.safetensors").exists());
}
