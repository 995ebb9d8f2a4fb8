//! Checkpoints: exact round trip, self-describing metadata, and a clear error for every kind
//! of bad file.

use std::collections::HashMap;

use candle_core::{DType, Device};
use charrnn_core::checkpoint::{self, Provenance};
use charrnn_core::data::vocab::Vocab;
use charrnn_core::model::{ids_tensor, Config, Model, Pass};
use rand::{rngs::StdRng, SeedableRng};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

mod common;

/// Counts this thread's live heap bytes and their peak, so a test can bound what a load
/// allocates (the loaders run on the calling thread).
struct Counting;

thread_local! {
    static LIVE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static PEAK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note(grow: usize, shrink: usize) {
    let _ = LIVE.try_with(|live| {
        let now = (live.get() + grow).saturating_sub(shrink);
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is passed to the system allocator unchanged; only counters are updated.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        note(layout.size(), 0);
        std::alloc::System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        note(0, layout.size());
        std::alloc::System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        note(new_size, layout.size());
        std::alloc::System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The most this thread had allocated at once while running `f`, above what it held before.
fn peak_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, PEAK.with(|p| p.get()) - base)
}

fn fixture() -> (Model, Vocab, Provenance) {
    let vocab = Vocab::from_text("To be, or not to be: that is the question.\n");
    let mut rng = StdRng::seed_from_u64(4);
    let model =
        Model::new_random(Config::gru(vocab.len(), 6, 10), DType::F32, &common::compute(), &mut rng).unwrap();
    let prov = Provenance { epoch: 3, step: 42, train_loss: Some(1.5), seed: 4, ..Default::default() };
    (model, vocab, prov)
}

fn logits(model: &Model) -> Vec<f32> {
    let ids = ids_tensor(&[0, 1, 2, 3, 4, 5], 2, 3, &Device::Cpu).unwrap();
    model.forward(&ids, &Pass::Eval).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn save_then_load_gives_identical_logits_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(checkpoint::file_name(3));
    let (model, vocab, prov) = fixture();
    checkpoint::save(&path, &model, &vocab, &prov).unwrap();
    let loaded = checkpoint::load(&path, &common::compute()).unwrap();
    assert_eq!(logits(&loaded.model), logits(&model));
    assert_eq!(loaded.vocab, vocab);
    assert_eq!(loaded.model.config, model.config);
    assert_eq!(loaded.provenance, prov);

    // The metadata is readable by any safetensors reader: vocabulary and configuration as JSON.
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    let v: Vec<String> = serde_json::from_str(&meta["vocab"]).unwrap();
    assert_eq!(v.concat().chars().collect::<Vec<_>>(), vocab.chars());
    let c: serde_json::Value = serde_json::from_str(&meta["config"]).unwrap();
    assert_eq!(c["rnn_units"], 10);
    assert_eq!(c["embedding_dim"], 6);
    // PyTorch names and shapes
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("gru.weight_hh_l0").unwrap().shape(), &[30, 10]);
    assert_eq!(st.tensor("embedding.weight").unwrap().shape(), &[vocab.len(), 6]);
}

#[test]
fn a_folder_resolves_to_its_newest_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (model, vocab, prov) = fixture();
    for epoch in [2, 10, 9] {
        checkpoint::save(&dir.path().join(checkpoint::file_name(epoch)), &model, &vocab, &prov).unwrap();
    }
    assert_eq!(checkpoint::resolve(dir.path()).unwrap(), dir.path().join("ckpt_10.safetensors"));
    let empty = tempfile::tempdir().unwrap();
    let err = checkpoint::resolve(empty.path()).unwrap_err().to_string();
    assert!(err.contains("no checkpoint") && err.contains("charrnn train"), "{err}");
}

fn load_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    std::fs::write(&path, bytes).unwrap();
    match checkpoint::load(&path, &common::compute()) {
        Ok(_) => panic!("a bad checkpoint loaded"),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(msg.contains("bad.safetensors"), "the error names the file: {msg}");
            msg
        }
    }
}

/// Rewrites a valid checkpoint with edited metadata and tensors.
fn rewrite(
    bytes: &[u8],
    edit_meta: impl FnOnce(&mut HashMap<String, String>),
    edit_tensors: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>),
) -> Vec<u8> {
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    edit_meta(&mut meta);
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit_tensors(&mut tensors);
    let views: Vec<_> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

#[test]
fn every_bad_checkpoint_is_a_clear_error() {
    let (model, vocab, prov) = fixture();
    let good = checkpoint::to_bytes(&model, &vocab, &prov).unwrap();
    assert!(checkpoint::from_bytes(&good, &common::compute()).is_ok());

    let missing = checkpoint::load(std::path::Path::new("/no/such/ckpt.safetensors"), &common::compute());
    let msg = format!("{:#}", missing.err().unwrap());
    assert!(msg.contains("/no/such/ckpt.safetensors") && msg.contains("cannot read"), "{msg}");

    let msg = load_err(&good[..good.len() / 2]);
    assert!(msg.contains("truncated or corrupted"), "{msg}");

    let msg = load_err(&good[..5]);
    assert!(msg.contains("truncated or corrupted"), "{msg}");

    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    let msg = load_err(&flipped);
    assert!(msg.contains("checksum"), "{msg}");

    let msg = load_err(b"this is not a checkpoint at all, just some text");
    assert!(msg.contains("truncated or corrupted"), "{msg}");

    let msg = load_err(&rewrite(&good, |m| m.remove("vocab").map(drop).unwrap_or(()), |_| {}));
    assert!(msg.contains("`vocab` is missing"), "{msg}");

    let smaller: Vec<String> = vocab.chars()[1..].iter().map(|c| c.to_string()).collect();
    let msg = load_err(&rewrite(
        &good,
        |m| drop(m.insert("vocab".into(), serde_json::to_string(&smaller).unwrap())),
        |_| {},
    ));
    assert!(msg.contains("characters but the vocabulary has"), "{msg}");

    let wider = serde_json::to_string(&Config::gru(vocab.len(), 7, 10)).unwrap();
    let msg = load_err(&rewrite(&good, |m| drop(m.insert("config".into(), wider)), |_| {}));
    assert!(msg.contains("embedding.weight has shape [") && msg.contains("implies"), "{msg}");

    let msg = load_err(&rewrite(&good, |_| {}, |t| t.retain(|(n, ..)| n != "dense.bias")));
    assert!(msg.contains("dense.bias is missing"), "{msg}");

    let msg = load_err(&rewrite(
        &good,
        |_| {},
        |t| t.push(("extra.weight".into(), Dtype::F32, vec![1], vec![0; 4])),
    ));
    assert!(msg.contains("unexpected tensors: extra.weight"), "{msg}");

    let msg = load_err(&rewrite(
        &good,
        |_| {},
        |t| {
            let bias = t.iter_mut().find(|(n, ..)| n == "dense.bias").unwrap();
            bias.1 = Dtype::F64;
            bias.3 = [bias.3.clone(), bias.3.clone()].concat();
        },
    ));
    assert!(msg.contains("dense.bias is F64, expected F32"), "{msg}");
}

#[test]
fn stacked_layers_use_pytorch_numbering() {
    let vocab = Vocab::from_text("abcdef");
    let config = Config::gru(vocab.len(), 4, 8).with_layers(2);
    let model =
        Model::new_random(config, DType::F32, &common::compute(), &mut StdRng::seed_from_u64(1)).unwrap();
    let bytes = checkpoint::to_bytes(&model, &vocab, &Provenance::default()).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("gru.weight_ih_l0").unwrap().shape(), &[24, 4]);
    assert_eq!(st.tensor("gru.weight_ih_l1").unwrap().shape(), &[24, 8]);
    assert_eq!(st.tensor("gru.bias_hh_l1").unwrap().shape(), &[24]);
    let loaded = checkpoint::from_bytes(&bytes, &common::compute()).unwrap();
    assert_eq!(loaded.model.config.layers, 2);
    assert_eq!(logits(&loaded.model), logits(&model));
}

#[test]
fn sizes_and_values_from_a_file_are_not_trusted() {
    let (model, vocab, prov) = fixture();
    let good = checkpoint::to_bytes(&model, &vocab, &prov).unwrap();
    // A layer count the file cannot back is refused before any name list is built from it.
    let huge =
        serde_json::to_string(&Config::gru(vocab.len(), 6, 10).with_layers(1_000_000_000_000)).unwrap();
    let msg = load_err(&rewrite(&good, |m| drop(m.insert("config".into(), huge)), |_| {}));
    assert!(msg.contains("1000000000000 layers") && msg.contains("holds only"), "{msg}");

    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let msg = load_err(&rewrite(
            &good,
            |_| {},
            |t| {
                let w = t.iter_mut().find(|(n, ..)| n == "gru.weight_hh_l0").unwrap();
                w.3[8..12].copy_from_slice(&bad.to_le_bytes());
            },
        ));
        assert!(msg.contains("gru.weight_hh_l0 holds a non-finite value"), "{msg}");
    }
}

/// Thousands of seeded random mutations of a valid checkpoint — flipped bytes, truncations,
/// edits of the header's JSON (shapes, dtypes, offsets, metadata values) — each load either
/// fails with an error or gives a model that runs; none panics.
#[test]
fn mutated_checkpoints_never_panic() {
    let (model, vocab, prov) = fixture();
    let good = checkpoint::to_bytes(&model, &vocab, &prov).unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let (mut loaded, mut refused) = (0, 0);
    for case in 0..3000 {
        let bytes = mutate(&good, case, &mut rng);
        let (result, peak) = peak_allocation(|| {
            std::panic::catch_unwind(|| checkpoint::from_bytes(&bytes, &common::compute()).map(|c| c.model))
        });
        // The file's bytes a few times over (tensors decoded, names, the vocabulary), never
        // sizes its header merely claims.
        assert!(
            peak <= 8 * good.len() + (256 << 10),
            "case {case}: {peak} bytes for a {}-byte file",
            bytes.len()
        );
        let result = result.map(|r| r.map(|model| logits(&model)));
        match result {
            Err(_) => panic!("case {case}: loading panicked"),
            Ok(Ok(_)) => loaded += 1,
            Ok(Err(_)) => refused += 1,
        }
    }
    eprintln!("{loaded} loaded, {refused} refused");
    assert!(refused > 2500, "most mutations must be refused ({loaded} loaded, {refused} refused)");
}

/// The `case`-th mutation of a valid safetensors file, in turn: 1–3 flipped bits, a
/// truncation, one number of the header JSON replaced, one dtype replaced (the header's length
/// fixed up after an edit).
fn mutate(good: &[u8], case: usize, rng: &mut StdRng) -> Vec<u8> {
    use rand::Rng;
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + header_len]).unwrap();
    let numbers = ["0", "1", "7", "-1", "4294967296", "18446744073709551615", "1e30", "null", "[]"];
    match case % 4 {
        0 => {
            let mut b = good.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
            b
        }
        1 => good[..rng.random_range(0..good.len())].to_vec(),
        _ => {
            let spots = regex_like_numbers(header);
            let (a, b) = spots[rng.random_range(0..spots.len())];
            let with = if case % 4 == 3 {
                ["\"F64\"", "\"I32\"", "\"BOOL\""][rng.random_range(0..3)]
            } else {
                numbers[rng.random_range(0..numbers.len())]
            };
            let edited = format!("{}{}{}", &header[..a], with, &header[b..]);
            let mut out = (edited.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(edited.as_bytes());
            out.extend_from_slice(&good[8 + header_len..]);
            out
        }
    }
}

/// Byte ranges of the numbers and quoted dtype names in a safetensors JSON header (the
/// metadata values are strings holding JSON, so their numbers are found too).
fn regex_like_numbers(header: &str) -> Vec<(usize, usize)> {
    let b = header.as_bytes();
    let mut spots = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'_') {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            spots.push((start, i));
        } else if header[i..].starts_with("\"F32\"") {
            spots.push((i, i + 5));
            i += 5;
        } else {
            i += 1;
        }
    }
    spots
}

/// The same for optimizer states: every mutation loads into a model's Adam or is refused,
/// never a panic.
#[test]
fn mutated_optimizer_states_never_panic() {
    let (model, _, _) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt_1.optim.safetensors");
    let mut adam = charrnn_core::optim::Adam::new(model.parameters()).unwrap();
    let mut saved = adam.export();
    saved.updates = 7;
    adam.import(saved).unwrap();
    let state = serde_json::json!({"epoch": 1, "batch": 0});
    checkpoint::save_optim(&path, &adam, &state, &[]).unwrap();
    let good = std::fs::read(&path).unwrap();
    let mut rng = StdRng::seed_from_u64(12);
    let mut refused = 0;
    for case in 0..1500 {
        let bytes = mutate(&good, case, &mut rng);
        std::fs::write(&path, &bytes).unwrap();
        let into = |_: &serde_json::Value| charrnn_core::optim::Adam::new(model.parameters());
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            checkpoint::load_optim::<serde_json::Value>(&path, into)
        })) {
            Err(_) => panic!("case {case}: loading panicked"),
            Ok(Err(_)) => refused += 1,
            Ok(Ok(_)) => {}
        }
    }
    assert!(refused > 1000, "{refused} of 1500 refused");
}
