//! The training loop: the tutorial's pipeline, model, loss and optimizer, with validation,
//! progress, atomic checkpoints and a clean stop on Ctrl-C.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{rngs::StdRng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::checkpoint::{self, Provenance};
use crate::data::{epoch_batches, read_corpus, split_validation, Batch, Sequences};
use crate::model::{ids_tensor, loss, Config, Model};
use crate::optim::Adam;
use crate::vocab::Vocab;

pub struct TrainOptions {
    pub data: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub buffer_size: usize,
    pub embedding_dim: usize,
    pub rnn_units: usize,
    pub learning_rate: f64,
    pub val_fraction: f64,
    pub checkpoint_dir: PathBuf,
    pub save_every: usize,
    pub seed: Option<u64>,
    pub device: Device,
}

/// Training stopped by Ctrl-C / SIGTERM after saving; the binary exits with status 130.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// One optimisation step: forward, loss, backward, Adam. Returns the batch loss. A non-finite
/// loss is an error and leaves the weights untouched.
pub fn train_step(model: &Model, adam: &mut Adam, batch: &Batch) -> Result<f32> {
    let dev = model.device();
    let inputs = ids_tensor(&batch.inputs, batch.batch_size, batch.seq_len, dev)?;
    let targets = ids_tensor(&batch.targets, batch.batch_size, batch.seq_len, dev)?;
    let loss = loss(&model.forward(&inputs, true)?, &targets)?;
    let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    if !value.is_finite() {
        bail!("the loss became {value}; training stopped with the last checkpoint kept. Try a lower --learning-rate");
    }
    let grads = loss.backward()?;
    adam.update(model.vars(), &grads)?;
    Ok(value)
}

/// Mean loss per character over all sequences (no shuffling, partial last batch included).
pub fn evaluate(model: &Model, seqs: &Sequences, batch_size: usize) -> Result<Option<f64>> {
    if seqs.is_empty() {
        return Ok(None);
    }
    let indices: Vec<usize> = (0..seqs.len()).collect();
    let mut total = 0.0;
    for chunk in indices.chunks(batch_size) {
        let b = seqs.batch(chunk);
        let inputs = ids_tensor(&b.inputs, b.batch_size, b.seq_len, model.device())?;
        let targets = ids_tensor(&b.targets, b.batch_size, b.seq_len, model.device())?;
        let l = loss(&model.forward(&inputs, false)?, &targets)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        total += l * chunk.len() as f64;
    }
    Ok(Some(total / seqs.len() as f64))
}

fn interrupt_flag(checkpoint_dir: PathBuf) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    // A first signal asks the loop to stop after the current batch; a second one exits now,
    // after removing any temporary file a checkpoint write may have left behind.
    let _ = ctrlc::set_handler(move || {
        if seen.swap(true, Ordering::SeqCst) {
            if let Ok(entries) = std::fs::read_dir(&checkpoint_dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(".charrnn-") && name.ends_with(".tmp") {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            eprintln!("\naborted");
            std::process::exit(130);
        }
        eprintln!("\nstopping after this batch (press Ctrl-C again to abort now)");
    });
    flag
}

fn progress_bar(total: u64) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} batches  {msg}  ETA {eta}")
            .expect("valid template"),
    );
    pb
}

const NATS_PER_BIT: f64 = std::f64::consts::LN_2;

pub fn run(o: &TrainOptions) -> Result<()> {
    let text = read_corpus(&o.data)?;
    let vocab = Vocab::from_text(&text);
    let ids = vocab.encode(&text)?;
    let corpus_sha256 = checkpoint::hex(&Sha256::digest(text.as_bytes()));
    let (train_ids, val_ids) = split_validation(&ids, o.val_fraction);
    let train = Sequences::new(train_ids, o.seq_len);
    let val = Sequences::new(val_ids, o.seq_len);
    if train.len() < o.batch_size {
        let need = ((o.batch_size * (o.seq_len + 1)) as f64 / (1.0 - o.val_fraction)).ceil();
        bail!(
            "the corpus {} is too short: one batch of {} sequences of {} characters needs at least {} characters{}, it has {}. Use a longer text or lower --batch-size / --seq-len",
            o.data.display(),
            o.batch_size,
            o.seq_len + 1,
            need,
            if o.val_fraction > 0.0 { format!(" (with --val-fraction {})", o.val_fraction) } else { String::new() },
            ids.len()
        );
    }
    let seed = o.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let config = Config::gru(vocab.len(), o.embedding_dim, o.rnn_units);
    let model = Model::new_random(config.clone(), DType::F32, &o.device, &mut rng)?;
    let batches_per_epoch = train.len() / o.batch_size;

    eprintln!(
        "corpus {}: {} characters, {} unique",
        o.data.display(),
        ids.len(),
        vocab.len()
    );
    eprintln!(
        "split: {} training / {} validation characters; {} training sequences of {}, {} batches of {} per epoch",
        train_ids.len(),
        val_ids.len(),
        train.len(),
        o.seq_len + 1,
        batches_per_epoch,
        o.batch_size
    );
    let layers: Vec<String> = config
        .layer_sizes()
        .iter()
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    eprintln!(
        "model: {} | total {} parameters",
        layers.join(" | "),
        config.parameter_count()
    );
    eprintln!("seed {seed} (pass --seed {seed} to repeat this run)");

    std::fs::create_dir_all(&o.checkpoint_dir).with_context(|| {
        format!(
            "cannot create the checkpoint folder {}",
            o.checkpoint_dir.display()
        )
    })?;
    let interrupted = interrupt_flag(o.checkpoint_dir.clone());
    let mut adam = Adam::new(model.vars(), o.learning_rate)?;
    let pb = progress_bar((batches_per_epoch * o.epochs) as u64);
    let chars_per_batch = (o.batch_size * o.seq_len) as f64;
    let mut provenance = Provenance {
        seed,
        corpus_sha256,
        charrnn_version: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    };

    for epoch in 1..=o.epochs {
        let started = Instant::now();
        let mut loss_sum = 0.0f64;
        let batches = epoch_batches(train.len(), o.batch_size, o.buffer_size, &mut rng);
        for (n, indices) in batches.iter().enumerate() {
            let t0 = Instant::now();
            let l = train_step(&model, &mut adam, &train.batch(indices))?;
            loss_sum += l as f64;
            if n % 100 == 0 {
                pb.suspend(|| eprintln!("Epoch {epoch} Batch {n} Loss {l:.4}"));
            }
            pb.set_message(format!(
                "loss {l:.4}  {:.0} chars/s",
                chars_per_batch / t0.elapsed().as_secs_f64()
            ));
            pb.inc(1);
            if interrupted.load(Ordering::SeqCst) {
                provenance.step = adam.step;
                provenance.epoch = epoch - 1;
                let path = o.checkpoint_dir.join("interrupted.safetensors");
                checkpoint::save(&path, &model, &vocab, &provenance)?;
                pb.abandon();
                eprintln!(
                    "stopped in epoch {epoch} after batch {}; weights saved to {}",
                    n + 1,
                    path.display()
                );
                return Err(Interrupted.into());
            }
        }
        let train_loss = loss_sum / batches.len() as f64;
        let val_loss = evaluate(&model, &val, o.batch_size)?;
        let seconds = started.elapsed().as_secs_f64();
        pb.suspend(|| {
            eprintln!("Epoch {epoch} Loss: {train_loss:.4}");
            match val_loss {
                Some(v) => eprintln!(
                    "Epoch {epoch} validation loss {v:.4} nats/char ({:.4} bits/char)",
                    v / NATS_PER_BIT
                ),
                None => eprintln!("Epoch {epoch} no validation split (--val-fraction 0)"),
            }
            eprintln!("Time taken for 1 epoch {seconds:.2} sec");
        });
        provenance.epoch = epoch;
        provenance.step = adam.step;
        provenance.train_loss = Some(train_loss);
        provenance.val_loss = val_loss;
        if epoch % o.save_every == 0 || epoch == o.epochs {
            let path = o.checkpoint_dir.join(checkpoint::file_name(epoch));
            checkpoint::save(&path, &model, &vocab, &provenance)?;
            pb.suspend(|| eprintln!("saved {}", path.display()));
        }
    }
    pb.finish_and_clear();
    Ok(())
}
