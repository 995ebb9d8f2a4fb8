//! The training loop: the tutorial's pipeline, model, loss and optimizer, with validation,
//! progress, atomic checkpoints and a clean stop on Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::{self, Checkpoint, Provenance};
use crate::data::{epoch_batches, read_corpus, split_validation, Batch, Lanes, Sequences};
use crate::metrics::{Metrics, Record};
use crate::model::{ids_tensor, Config, Model, Pass};
use crate::optim::Adam;
use crate::vocab::Vocab;

use crate::settings::SettingsArgs;
pub use crate::settings::{LrSchedule, Settings};

pub struct TrainOptions {
    /// A fresh run's settings before the typed flags (a preset's).
    pub base: Settings,
    /// The settings flags the user typed; on resume they may change only the run control.
    pub typed: SettingsArgs,
    pub checkpoint_dir: PathBuf,
    pub device: Device,
    /// Continue from this checkpoint (or the newest resumable one in this folder).
    pub resume: Option<PathBuf>,
    /// A fresh run may delete another run's files in its folder first (otherwise it refuses
    /// such a folder).
    pub overwrite: bool,
}

/// Where a run stands: saved beside each resumable checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Position {
    settings: Settings,
    /// Epochs completed.
    epoch: usize,
    /// Batches completed in the next epoch.
    batch: usize,
    /// Sum of the batch losses so far in that epoch.
    epoch_loss_sum: f64,
    best_val_loss: Option<f64>,
    /// The run's id, the same as in its checkpoints' provenance (absent in older files).
    #[serde(default)]
    run_id: Option<String>,
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

/// What one optimisation step needs beyond the weights, optimizer and batch.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    pub learning_rate: f64,
    /// Rescale the gradients when their global L2 norm exceeds this (PyTorch's
    /// `clip_grad_norm_`).
    pub clip_grad_norm: Option<f64>,
    pub dropout: f32,
    /// Seeds this step's dropout mask.
    pub seed: u64,
}

impl StepOptions {
    /// The tutorial's step: constant rate, no clipping, no dropout.
    pub fn plain(learning_rate: f64) -> Self {
        StepOptions { learning_rate, clip_grad_norm: None, dropout: 0.0, seed: 0 }
    }
}

/// One optimisation step: forward, loss, backward, Adam. Returns the batch loss and, when
/// clipping, the global gradient norm before clipping. A non-finite loss is an error and
/// leaves the weights untouched.
pub fn train_step(
    model: &Model,
    adam: &mut Adam,
    batch: &Batch,
    o: &StepOptions,
) -> Result<(f32, Option<f64>)> {
    let (loss, norm, _) = train_step_from(model, adam, batch, o, None)?;
    Ok((loss, norm))
}

/// [`train_step`] from the given initial states (stateful training); also returns the final
/// states to carry into the next batch.
pub fn train_step_from(
    model: &Model,
    adam: &mut Adam,
    batch: &Batch,
    o: &StepOptions,
    state: Option<&[Tensor]>,
) -> Result<(f32, Option<f64>, Vec<Tensor>)> {
    on_compute_thread(model.device(), || {
        let dev = model.device();
        let inputs = ids_tensor(&batch.inputs, batch.batch_size, batch.seq_len, dev)?;
        let pass = Pass::Train { dropout: o.dropout, seed: o.seed };
        let (loss, finals) = model.loss_from(&inputs, &batch.targets, &pass, state)?;
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !value.is_finite() {
            bail!(
                "the loss became {value}; training stopped with the last checkpoint kept. Try a lower --learning-rate or --clip-grad-norm 1"
            );
        }
        let grads = loss.backward()?;
        let (norm, scale) = match o.clip_grad_norm {
            Some(max) => {
                let mut squares = 0.0;
                for v in model.vars() {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        squares += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                    }
                }
                let norm = squares.sqrt();
                (Some(norm), (max / (norm + 1e-6)).min(1.0))
            }
            None => (None, 1.0),
        };
        adam.update(model.vars(), &grads, o.learning_rate, scale)?;
        Ok((value, norm, finals))
    })
}

/// Runs `work` where the device wants it. CPU work goes to a worker of the thread pool, so that
/// its many short parallel regions are entered from inside the pool instead of each waking the
/// pool from outside (a futex round trip per region, which at small sizes costs more than the
/// region's work). GPU work stays on this thread: candle's CUDA stream is the calling thread's
/// own, and all of a model's work must go through one stream, in order.
fn on_compute_thread<R: Send>(device: &Device, work: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    match device {
        Device::Cpu => rayon::scope(|_| work()),
        _ => work(),
    }
}

/// The step size for 0-based `step` of `total`: linear warm-up over `warmup_steps`, then
/// constant, or cosine decay to `min_lr` at the last step (nanoGPT's schedule).
pub fn learning_rate(s: &Settings, step: u64, total: u64) -> f64 {
    if step < s.optimizer.warmup_steps {
        // In f64: warmup_steps + 1 can overflow u64 (--warmup-steps 18446744073709551615).
        return s.optimizer.learning_rate * (step as f64 + 1.0) / (s.optimizer.warmup_steps as f64 + 1.0);
    }
    match s.optimizer.lr_schedule {
        LrSchedule::Constant => s.optimizer.learning_rate,
        LrSchedule::Cosine => {
            let span = total.saturating_sub(s.optimizer.warmup_steps).max(1) as f64;
            let ratio = ((step - s.optimizer.warmup_steps) as f64 / span).min(1.0);
            s.optimizer.min_lr
                + 0.5
                    * (1.0 + (std::f64::consts::PI * ratio).cos())
                    * (s.optimizer.learning_rate - s.optimizer.min_lr)
        }
    }
}

/// Mean loss per character over all sequences (no shuffling, partial last batch included).
pub fn evaluate(model: &Model, seqs: &Sequences, batch_size: usize) -> Result<Option<f64>> {
    if seqs.is_empty() {
        return Ok(None);
    }
    let indices: Vec<usize> = (0..seqs.len()).collect();
    on_compute_thread(model.device(), || {
        let mut total = 0.0;
        for chunk in indices.chunks(batch_size) {
            let b = seqs.batch(chunk);
            let inputs = ids_tensor(&b.inputs, b.batch_size, b.seq_len, model.device())?;
            let l = model.loss(&inputs, &b.targets, &Pass::Eval)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            total += l * chunk.len() as f64;
        }
        Ok(Some(total / seqs.len() as f64))
    })
}

fn interrupt_flag(checkpoint_dir: PathBuf) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    // A first signal asks the loop to stop after the current batch; a second one exits now,
    // after removing any temporary file a checkpoint write may have left behind.
    let _ = ctrlc::set_handler(move || {
        if seen.swap(true, Ordering::SeqCst) {
            crate::atomic::remove_temporaries(&checkpoint_dir);
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

/// The data order of one epoch depends only on the seed and the epoch number, so a resumed
/// run shuffles exactly as an uninterrupted one.
fn epoch_rng(seed: u64, epoch: usize) -> StdRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(epoch as u64).to_le_bytes());
    bytes[16..24].copy_from_slice(b"shuffle\0");
    StdRng::from_seed(bytes)
}

/// Deletes all but the newest `keep` periodic checkpoints of this run (and their optimizer
/// states). A checkpoint written by another run (another run id), or one whose header cannot
/// be read, is left alone, and so is the one just written.
fn prune(dir: &Path, keep: usize, run_id: &Option<String>, just_written: usize) -> Result<()> {
    let mut epochs: Vec<usize> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| checkpoint::epoch_of(&n))
        .filter(|&epoch| {
            let path = dir.join(checkpoint::file_name(epoch));
            checkpoint::read_provenance(&path).is_ok_and(|p| p.run_id == *run_id)
        })
        .collect();
    epochs.sort_unstable_by(|a, b| b.cmp(a));
    for epoch in epochs.into_iter().skip(keep).filter(|&e| e != just_written) {
        let path = dir.join(checkpoint::file_name(epoch));
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        let _ = std::fs::remove_file(checkpoint::optim_path(&path));
    }
    Ok(())
}

/// The files of a training run in `dir` (checkpoints, optimizer states, metrics, the plot),
/// by name, sorted.
fn run_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| checkpoint::is_run_checkpoint(n) || n == Metrics::FILE || n == Metrics::PLOT)
        .collect();
    names.sort();
    names
}

/// A checkpoint, its optimizer state and the training position, checked to belong together.
fn load_resumable(
    path: &Path,
    device: &Device,
) -> Result<(PathBuf, Checkpoint, Adam, Position, Vec<Tensor>)> {
    let ckpt = checkpoint::load(path, device)?;
    let mut adam = Adam::new(ckpt.model.vars())?;
    let (state, carried) = checkpoint::load_optim(&checkpoint::optim_path(path), &ckpt.model, &mut adam)?;
    let pos: Position =
        serde_json::from_value(state).context("bad training position in the optimizer state")?;
    if adam.step != ckpt.provenance.step {
        bail!(
            "{} is at step {} but its optimizer state at step {}; resume from another checkpoint",
            path.display(),
            ckpt.provenance.step,
            adam.step
        );
    }
    if let (Some(model_run), Some(optim_run)) = (&ckpt.provenance.run_id, &pos.run_id) {
        if model_run != optim_run {
            bail!(
                "{} belongs to run {optim_run}, not to {}'s run {model_run}; resume from a checkpoint with its own optimizer state",
                checkpoint::optim_path(path).display(),
                path.display()
            );
        }
    }
    Ok((path.to_path_buf(), ckpt, adam, pos, carried))
}

/// Refuses a run whose sizes need more memory than the machine has.
fn check_memory(config: &Config, s: &Settings) -> Result<()> {
    let sizes = format!(
        "--embedding-dim {} --rnn-units {} --layers {} --batch-size {} --seq-len {} ({} characters in the vocabulary)",
        config.embedding_dim, config.rnn_units, config.layers, s.data.batch_size, s.data.seq_len, config.vocab_size
    );
    crate::budget::check(
        "training",
        crate::budget::training_bytes(config, s.data.batch_size, s.data.seq_len),
        &sizes,
    )
}

/// A fresh run's folder must not hold another run; the error says how to go on.
fn refuse_another_run(dir: &Path) -> Result<()> {
    let found = run_files(dir);
    if found.is_empty() {
        return Ok(());
    }
    let shown = found.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
    let more = match found.len() {
        n if n > 4 => format!(" and {} more", n - 4),
        _ => String::new(),
    };
    bail!(
        "{} already holds a training run ({shown}{more}); continue it with `charrnn train --resume {}`, choose another --checkpoint-dir, or pass --overwrite to delete that run's files first",
        dir.display(),
        dir.display()
    )
}

/// `--overwrite`: deletes the previous run's files (only those) from `dir`.
fn remove_another_run(dir: &Path) -> Result<()> {
    let found = run_files(dir);
    for name in &found {
        let path = dir.join(name);
        std::fs::remove_file(&path)
            .with_context(|| format!("--overwrite: cannot remove {}", path.display()))?;
    }
    if !found.is_empty() {
        eprintln!("--overwrite: removed the previous run's {} files from {}", found.len(), dir.display());
    }
    Ok(())
}

pub fn run(o: &TrainOptions) -> Result<()> {
    let dir = &o.checkpoint_dir;
    // Resume: weights, optimizer, position and settings from the checkpoint (in a folder, the
    // most trained pair that loads; a damaged one is reported and passed over).
    let resumed = match &o.resume {
        None => None,
        Some(p) => {
            let mut failures = Vec::new();
            let mut found = None;
            for path in checkpoint::resumable_candidates(p)? {
                match load_resumable(&path, &o.device) {
                    Ok(r) => {
                        found = Some(r);
                        break;
                    }
                    Err(e) if p.is_dir() => {
                        eprintln!("skipped {}: {e:#}", path.display());
                        failures.push(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            match found {
                Some(r) => Some(r),
                None => {
                    let last = failures.pop().map(|e| format!("{e:#}")).unwrap_or_default();
                    bail!(
                        "nothing to resume in {}: no checkpoint pair there loads (last: {last})",
                        p.display()
                    )
                }
            }
        }
    };
    let settings = match &resumed {
        Some((path, _, _, pos, _)) => {
            let merged = Settings::resumed(&pos.settings, &o.typed, pos.epoch)?;
            merged.validate().with_context(|| {
                format!("the run saved in {} cannot be resumed", checkpoint::optim_path(path).display())
            })?;
            merged
        }
        None => {
            let fresh = Settings::fresh(o.base.clone(), &o.typed)?;
            if !o.overwrite {
                refuse_another_run(dir)?;
            }
            fresh
        }
    };
    let s = &settings;

    let text = read_corpus(&s.data.data)?;
    let vocab = Vocab::from_text(&text);
    let ids = vocab.encode(&text)?;
    let corpus_sha256 = checkpoint::hex(&Sha256::digest(text.as_bytes()));
    let (train_ids, val_ids) = split_validation(&ids, s.data.val_fraction);
    let train = Sequences::new(train_ids, s.data.seq_len);
    let lanes = Lanes::new(train_ids, s.data.batch_size, s.data.seq_len);
    let val = Sequences::new(val_ids, s.data.seq_len);
    if train.len() < s.data.batch_size || (s.data.stateful && lanes.is_empty()) {
        let need = ((s.data.batch_size * (s.data.seq_len + 1)) as f64 / (1.0 - s.data.val_fraction)).ceil();
        bail!(
            "the corpus {} is too short: one batch of {} sequences of {} characters needs at least {} characters{}, it has {}. Use a longer text or lower --batch-size / --seq-len",
            s.data.data.display(),
            s.data.batch_size,
            s.data.seq_len + 1,
            need,
            if s.data.val_fraction > 0.0 { format!(" (with --val-fraction {})", s.data.val_fraction) } else { String::new() },
            ids.len()
        );
    }

    let (model, mut adam, pos, mut carried) = match resumed {
        Some((path, ckpt, mut adam, pos, carried)) => {
            if ckpt.provenance.corpus_sha256 != corpus_sha256 {
                bail!(
                    "{} differs from the text {} was trained on (SHA-256 {}); resume with the same corpus",
                    s.data.data.display(),
                    path.display(),
                    ckpt.provenance.corpus_sha256
                );
            }
            adam.weight_decay = s.optimizer.weight_decay;
            check_memory(&ckpt.model.config, s)?;
            eprintln!("resuming {} at epoch {} batch {}", path.display(), pos.epoch + 1, pos.batch);
            let carried = (!carried.is_empty()).then_some(carried);
            (ckpt.model, adam, pos, carried)
        }
        None => {
            let config = Config::gru(vocab.len(), s.model.embedding_dim, s.model.rnn_units)
                .with_layers(s.model.layers)
                .with_cell(s.model.cell);
            check_memory(&config, s)?;
            let model = Model::new_random(config, DType::F32, &o.device, &mut StdRng::seed_from_u64(s.seed))?;
            let mut adam = Adam::new(model.vars())?;
            adam.weight_decay = s.optimizer.weight_decay;
            let pos = Position {
                settings: settings.clone(),
                epoch: 0,
                batch: 0,
                epoch_loss_sum: 0.0,
                best_val_loss: None,
                run_id: Some(format!("{:016x}", rand::random::<u64>())),
            };
            (model, adam, pos, None)
        }
    };
    let config = &model.config;
    let batches_per_epoch = if s.data.stateful { lanes.len() } else { train.len() / s.data.batch_size };
    let total_steps = (batches_per_epoch as u64).checked_mul(s.control.epochs as u64).ok_or_else(|| {
        anyhow::anyhow!(
            "--epochs {} × {batches_per_epoch} batches per epoch is too many steps to count",
            s.control.epochs
        )
    })?;

    eprintln!("corpus {}: {} characters, {} unique", s.data.data.display(), ids.len(), vocab.len());
    let order = match s.data.stateful {
        false => format!("{} shuffled sequences of {}", train.len(), s.data.seq_len + 1),
        true => format!(
            "{} contiguous lanes of {} read in order (--stateful)",
            s.data.batch_size,
            train_ids.len() / s.data.batch_size
        ),
    };
    eprintln!(
        "split: {} training / {} validation characters; {order}; {batches_per_epoch} batches of {} per epoch",
        train_ids.len(),
        val_ids.len(),
        s.data.batch_size
    );
    let layers: Vec<String> = config.layer_sizes().iter().map(|(n, c)| format!("{n} {c}")).collect();
    eprintln!("model: {} | total {} parameters", layers.join(" | "), config.parameter_count());
    eprintln!("seed {} (pass --seed {} to repeat this run)", s.seed, s.seed);
    if pos.epoch >= s.control.epochs {
        eprintln!("already trained {} epochs; pass a larger --epochs to continue", pos.epoch);
        return Ok(());
    }

    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the checkpoint folder {}", dir.display()))?;
    for stale in crate::atomic::remove_temporaries(dir) {
        eprintln!("removed {}, left by an interrupted write", stale.display());
    }
    if o.resume.is_none() && o.overwrite {
        remove_another_run(dir)?;
    }
    let run_id = pos.run_id.clone();
    let resume_hint = format!("charrnn train --resume {}", dir.display());
    let interrupted = interrupt_flag(dir.clone());
    let mut metrics = Metrics::open(dir, (adam.step > 0).then_some(adam.step))?;
    let pb = progress_bar((batches_per_epoch * (s.control.epochs - pos.epoch) - pos.batch) as u64);
    let chars_per_batch = (s.data.batch_size * s.data.seq_len) as f64;
    let mut provenance = Provenance {
        seed: s.seed,
        corpus_sha256,
        charrnn_version: env!("CARGO_PKG_VERSION").to_string(),
        run_id: run_id.clone(),
        ..Default::default()
    };
    let mut best_val_loss = pos.best_val_loss;
    // Weights and optimizer state together (optimizer first: a crash in between leaves a pair
    // whose steps differ, which resume detects).
    // The carried state (stateful runs) is saved too, so a run resumed mid-epoch continues it.
    let save_point =
        |path: &Path, adam: &Adam, provenance: &Provenance, position: &Position, carried: &[Tensor]| {
            checkpoint::save_optim(
                &checkpoint::optim_path(path),
                &model,
                adam,
                &serde_json::to_value(position)?,
                carried,
            )?;
            checkpoint::save(path, &model, &vocab, provenance)
        };

    for epoch in pos.epoch + 1..=s.control.epochs {
        let started = Instant::now();
        // Shuffled sequences, or (stateful) the lanes in order, the state reset each epoch.
        let order = (!s.data.stateful).then(|| {
            epoch_batches(train.len(), s.data.batch_size, s.data.buffer_size, &mut epoch_rng(s.seed, epoch))
        });
        let first = if epoch == pos.epoch + 1 { pos.batch } else { 0 };
        let mut loss_sum = if first > 0 { pos.epoch_loss_sum } else { 0.0 };
        if first == 0 {
            carried = None;
        }
        for n in first..batches_per_epoch {
            let batch = match &order {
                Some(order) => train.batch(&order[n]),
                None => lanes.batch(n),
            };
            let t0 = Instant::now();
            let step_options = StepOptions {
                learning_rate: learning_rate(s, adam.step, total_steps),
                clip_grad_norm: s.optimizer.clip_grad_norm,
                dropout: s.optimizer.dropout as f32,
                seed: s.seed ^ adam.step.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            };
            let (l, _, finals) =
                train_step_from(&model, &mut adam, &batch, &step_options, carried.as_deref())
                    .with_context(|| format!("epoch {epoch} batch {n}"))?;
            if s.data.stateful {
                carried = Some(finals);
            }
            loss_sum += l as f64;
            let chars_per_s = chars_per_batch / t0.elapsed().as_secs_f64();
            if n % 100 == 0 {
                pb.suspend(|| eprintln!("Epoch {epoch} Batch {n} Loss {l:.4}"));
                metrics.push(Record::Step {
                    epoch,
                    step: adam.step,
                    loss: l as f64,
                    learning_rate: step_options.learning_rate,
                    chars_per_s,
                })?;
            }
            pb.set_message(format!("loss {l:.4}  {chars_per_s:.0} chars/s"));
            pb.inc(1);
            if interrupted.load(Ordering::SeqCst) {
                provenance.epoch = epoch - 1;
                provenance.step = adam.step;
                let position = Position {
                    settings: settings.clone(),
                    epoch: epoch - 1,
                    batch: n + 1,
                    epoch_loss_sum: loss_sum,
                    best_val_loss,
                    run_id: run_id.clone(),
                };
                let path = dir.join("interrupted.safetensors");
                save_point(&path, &adam, &provenance, &position, carried.as_deref().unwrap_or(&[]))?;
                pb.abandon();
                eprintln!("stopped in epoch {epoch} after batch {}; saved {}", n + 1, path.display());
                eprintln!("continue with: {resume_hint}");
                return Err(Interrupted.into());
            }
        }
        let train_loss = loss_sum / batches_per_epoch as f64;
        let val_loss = evaluate(&model, &val, s.data.batch_size)?;
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
            match first {
                0 => eprintln!("Time taken for 1 epoch {seconds:.2} sec"),
                _ => eprintln!(
                    "Time taken for the rest of epoch {epoch} (from batch {first}) {seconds:.2} sec"
                ),
            }
        });
        metrics.push(Record::Epoch {
            epoch,
            step: adam.step,
            train_loss,
            val_loss,
            val_bits_per_char: val_loss.map(|v| v / NATS_PER_BIT),
            seconds,
        })?;
        metrics.plot()?;
        provenance.epoch = epoch;
        provenance.step = adam.step;
        provenance.train_loss = Some(train_loss);
        provenance.val_loss = val_loss;
        if let Some(v) = val_loss {
            if best_val_loss.is_none_or(|b| v < b) {
                best_val_loss = Some(v);
                checkpoint::save(&dir.join("best.safetensors"), &model, &vocab, &provenance)?;
            }
        }
        if epoch % s.control.save_every == 0 || epoch == s.control.epochs {
            let path = dir.join(checkpoint::file_name(epoch));
            let position = Position {
                settings: settings.clone(),
                epoch,
                batch: 0,
                epoch_loss_sum: 0.0,
                best_val_loss,
                run_id: run_id.clone(),
            };
            save_point(&path, &adam, &provenance, &position, &[])?;
            if let Some(keep) = s.control.keep {
                prune(dir, keep, &run_id, epoch)?;
            }
            pb.suspend(|| eprintln!("saved {}", path.display()));
        }
    }
    pb.finish_and_clear();
    Ok(())
}
