//! The epoch loop: batches, progress and metrics, evaluation and checkpoints at the end of
//! each epoch, and a clean stop on Ctrl-C.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{rngs::StdRng, SeedableRng};

use super::folder::prune;
use super::resume::Position;
use super::setup::{Batches, Start};
use super::step::{learning_rate, train_step_from, StepOptions};
use super::Interrupted;
use crate::checkpoint::{self, Provenance};
use crate::data::cache::Corpus;
use crate::data::vocab::Vocab;
use crate::data::EpochBatches;
use crate::eval::mean_loss;
use crate::metrics::{Metrics, Record};
use crate::model::job::{Job, SampleOptions};
use crate::model::sample::{generate, Engine};
use crate::model::Model;
use crate::optim::Adam;
use crate::train::limits::RunLimits;
use crate::train::settings::Settings;

const NATS_PER_BIT: f64 = std::f64::consts::LN_2;

/// Where the run is: optimisation steps taken (the schedule's and the dropout masks' clock),
/// epochs completed, and batches done in the next epoch.
#[derive(Clone, Copy, Debug)]
struct Clock {
    step: u64,
    epoch: usize,
    batch: usize,
}

pub(super) struct Session<'a> {
    settings: &'a Settings,
    dir: &'a Path,
    vocab: &'a Vocab,
    model: Model,
    adam: Adam,
    clock: Clock,
    /// Sum of the batch losses so far in the current epoch.
    loss_sum: f64,
    /// The recurrent state carried from batch to batch (stateful runs).
    carried: Option<Vec<Tensor>>,
    best_val_loss: Option<f64>,
    run_id: Option<String>,
    provenance: Provenance,
    metrics: Metrics,
    progress: ProgressBar,
    interrupted: Arc<AtomicBool>,
    total_steps: u64,
    limits: RunLimits,
    /// When this invocation started, and its clock's step then.
    started: (Instant, u64),
    /// Epochs since the best validation loss (of this invocation's epochs).
    since_best: usize,
}

/// Whether the epoch loop goes on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl<'a> Session<'a> {
    /// Opens the run's metrics and progress bar and starts listening for Ctrl-C.
    pub fn open(
        settings: &'a Settings,
        dir: &'a Path,
        corpus: &'a Corpus,
        start: Start,
        batches: &Batches,
        total_steps: u64,
        limits: RunLimits,
    ) -> Result<Self> {
        let Start { model, adam, position, carried, parent_sha256 } = start;
        let step = adam.updates();
        let metrics = Metrics::open(dir, (step > 0).then_some(step))?;
        let left = batches.per_epoch * (settings.control.epochs - position.epoch) - position.batch;
        let provenance = Provenance {
            seed: settings.seed,
            corpus_sha256: corpus.sha256.clone(),
            charrnn_version: env!("CARGO_PKG_VERSION").to_string(),
            run_id: position.run_id.clone(),
            parent_sha256,
            ..Default::default()
        };
        Ok(Session {
            settings,
            dir,
            vocab: &corpus.vocab,
            model,
            adam,
            clock: Clock { step, epoch: position.epoch, batch: position.batch },
            loss_sum: if position.batch > 0 { position.epoch_loss_sum } else { 0.0 },
            carried,
            best_val_loss: position.best_val_loss,
            run_id: position.run_id,
            provenance,
            metrics,
            progress: progress_bar(left as u64),
            interrupted: interrupt_flag(dir),
            total_steps,
            limits,
            started: (Instant::now(), step),
            since_best: 0,
        })
    }

    /// Trains the remaining epochs; an interruption saves and ends as [`Interrupted`]; a limit
    /// of this invocation saves a resumable checkpoint and ends the run normally.
    pub fn run(mut self, batches: &Batches) -> Result<()> {
        while self.clock.epoch < self.settings.control.epochs {
            let started = Instant::now();
            let first = self.clock.batch;
            if self.train_epoch(batches)? == Flow::Stop {
                break;
            }
            if self.end_epoch(batches, first, started.elapsed().as_secs_f64())? == Flow::Stop {
                break;
            }
            if self.clock.epoch < self.settings.control.epochs {
                if let Some(why) = self.limit_reached() {
                    self.save_epoch_end()?;
                    self.progress
                        .suspend(|| eprintln!("reached {why} at the end of epoch {}", self.clock.epoch));
                    self.say_how_to_continue();
                    break;
                }
            }
        }
        self.progress.finish_and_clear();
        Ok(())
    }

    fn limit_reached(&self) -> Option<String> {
        let (at, step) = self.started;
        self.limits.reached(self.clock.step - step, at)
    }

    fn say_how_to_continue(&self) {
        self.progress.suspend(|| eprintln!("continue with: charrnn train --resume {}", self.dir.display()));
    }

    /// The batches of the current epoch from where the clock stands.
    fn train_epoch(&mut self, batches: &Batches) -> Result<Flow> {
        let s = self.settings;
        let epoch = self.clock.epoch + 1;
        // Shuffled sequences, or (stateful) the lanes in order, the state reset each epoch.
        let mut order = (!s.data.stateful).then(|| {
            let rng = epoch_rng(s.seed, epoch);
            EpochBatches::new(batches.train.len(), s.data.batch_size, s.data.buffer_size, rng)
                .skip(self.clock.batch)
        });
        if self.clock.batch == 0 {
            self.carried = None;
            self.loss_sum = 0.0;
        }
        let chars_per_batch = (s.data.batch_size * s.data.seq_len) as f64;
        for n in self.clock.batch..batches.per_epoch {
            let batch = match &mut order {
                Some(order) => batches.train.batch(&order.next().expect("one order per batch of the epoch")),
                None => batches.lanes.batch(n),
            };
            let t0 = Instant::now();
            let step_options = StepOptions {
                learning_rate: learning_rate(s, self.clock.step, self.total_steps),
                clip_grad_norm: s.optimizer.clip_grad_norm,
                dropout: s.optimizer.dropout as f32,
                seed: s.seed ^ self.clock.step.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            };
            let (l, _, finals) =
                train_step_from(&self.model, &mut self.adam, &batch, &step_options, self.carried.as_deref())
                    .with_context(|| format!("epoch {epoch} batch {n}"))?;
            self.clock.step += 1;
            self.clock.batch = n + 1;
            if s.data.stateful {
                self.carried = Some(finals);
            }
            self.loss_sum += l as f64;
            let chars_per_s = chars_per_batch / t0.elapsed().as_secs_f64();
            if n % 100 == 0 {
                self.progress.suspend(|| eprintln!("Epoch {epoch} Batch {n} Loss {l:.4}"));
                self.metrics.push(Record::Step {
                    epoch,
                    step: self.clock.step,
                    loss: l as f64,
                    learning_rate: step_options.learning_rate,
                    chars_per_s,
                })?;
            }
            self.progress.set_message(format!("loss {l:.4}  {chars_per_s:.0} chars/s"));
            self.progress.inc(1);
            if self.interrupted.load(Ordering::SeqCst) {
                self.save_mid_epoch()?;
                self.progress.abandon();
                return Err(Interrupted.into());
            }
            // At the epoch's last batch the epoch ends first (validation, its checkpoint).
            if n + 1 < batches.per_epoch {
                if let Some(why) = self.limit_reached() {
                    self.progress.suspend(|| eprintln!("reached {why}"));
                    self.save_mid_epoch()?;
                    return Ok(Flow::Stop);
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Saves where the run stands mid-epoch, resumable.
    fn save_mid_epoch(&mut self) -> Result<()> {
        self.provenance.epoch = self.clock.epoch;
        self.provenance.step = self.clock.step;
        let path = self.dir.join("interrupted.safetensors");
        let carried = self.carried.clone().unwrap_or_default();
        self.save_point(&path, &carried)?;
        let (epoch, batch) = (self.clock.epoch + 1, self.clock.batch);
        self.progress
            .suspend(|| eprintln!("stopped in epoch {epoch} after batch {batch}; saved {}", path.display()));
        self.say_how_to_continue();
        Ok(())
    }

    /// The checkpoint of the epoch just ended, where the periodic saving has not written it.
    fn save_epoch_end(&mut self) -> Result<()> {
        let path = self.dir.join(checkpoint::file_name(self.clock.epoch));
        if !path.exists() {
            self.save_point(&path, &[])?;
            self.progress.suspend(|| eprintln!("saved {}", path.display()));
        }
        Ok(())
    }

    /// Validation, the epoch's report and metrics, the best and periodic checkpoints, the
    /// sample; stops the run when validation has not improved for `--patience` epochs.
    fn end_epoch(&mut self, batches: &Batches, first: usize, seconds: f64) -> Result<Flow> {
        let s = self.settings;
        let epoch = self.clock.epoch + 1;
        let train_loss = self.loss_sum / batches.per_epoch as f64;
        let val_loss = mean_loss(&self.model, &batches.val, s.data.batch_size)?;
        self.progress.suspend(|| report(epoch, train_loss, val_loss, first, seconds));
        self.metrics.push(Record::Epoch {
            epoch,
            step: self.clock.step,
            train_loss,
            val_loss,
            val_bits_per_char: val_loss.map(|v| v / NATS_PER_BIT),
            seconds,
        })?;
        self.metrics.plot()?;
        self.clock = Clock { epoch, batch: 0, ..self.clock };
        self.loss_sum = 0.0;
        self.provenance.epoch = epoch;
        self.provenance.step = self.clock.step;
        self.provenance.train_loss = Some(train_loss);
        self.provenance.val_loss = val_loss;
        if let Some(v) = val_loss.filter(|&v| self.best_val_loss.is_none_or(|b| v < b)) {
            self.best_val_loss = Some(v);
            self.since_best = 0;
            checkpoint::save(&self.dir.join("best.safetensors"), &self.model, self.vocab, &self.provenance)?;
        } else if val_loss.is_some() {
            self.since_best += 1;
        }
        if epoch.is_multiple_of(s.control.save_every) || epoch == s.control.epochs {
            let path = self.dir.join(checkpoint::file_name(epoch));
            self.save_point(&path, &[])?;
            if let Some(keep) = s.control.keep {
                prune(self.dir, keep, &self.run_id, epoch)?;
            }
            self.progress.suspend(|| eprintln!("saved {}", path.display()));
        }
        if self.limits.sample_every.is_some_and(|n| epoch.is_multiple_of(n)) {
            // A sample is a view of the run, never a reason to stop it.
            if let Err(e) = self.sample(epoch) {
                self.progress.suspend(|| eprintln!("no sample after epoch {epoch}: {e:#}"));
            }
        }
        if let Some(p) = self.limits.patience.filter(|&p| self.since_best >= p) {
            if epoch < s.control.epochs {
                self.save_epoch_end()?;
                let best = self.best_val_loss.map_or("none".into(), |b| format!("{b:.4}"));
                self.progress.suspend(|| {
                    eprintln!(
                        "stopping early: no better validation loss for {p} epoch(s) (--patience {p}); the best, {best}, is in {}",
                        self.dir.join("best.safetensors").display()
                    )
                });
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// A sample from the model as it stands, to stderr and appended to `samples.txt`. It draws
    /// from its own random stream: training's (shuffling, dropout) is untouched.
    fn sample(&mut self, epoch: usize) -> Result<()> {
        let spec = &self.limits.sample;
        let options = SampleOptions {
            temperature: spec.temperature,
            seed: self.settings.seed ^ (epoch as u64).wrapping_mul(0xA076_1D64_78BD_642F),
            ..SampleOptions::new(&spec.start, spec.length)
        };
        let mut job = Job::new(self.vocab, &options).context("--start")?;
        let mut text = Vec::new();
        let mut engine = Engine::new(&self.model, 1)?;
        generate(&mut engine, self.vocab, &mut job, &mut text)?;
        let text = String::from_utf8_lossy(&text);
        self.progress.suspend(|| eprintln!("--- sample after epoch {epoch} ---\n{}", text.trim_end()));
        let path = self.dir.join("samples.txt");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        use std::io::Write;
        write!(file, "--- epoch {epoch}, step {} ---\n{text}", self.clock.step)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// Weights and optimizer state together (optimizer first: a crash in between leaves a
    /// pair whose steps differ, which resume detects). The carried state (stateful runs) is
    /// saved too, so a run resumed mid-epoch continues it.
    fn save_point(&self, path: &Path, carried: &[Tensor]) -> Result<()> {
        let position = Position {
            settings: self.settings.clone(),
            epoch: self.clock.epoch,
            batch: self.clock.batch,
            epoch_loss_sum: if self.clock.batch > 0 { self.loss_sum } else { 0.0 },
            best_val_loss: self.best_val_loss,
            run_id: self.run_id.clone(),
        };
        let state = serde_json::to_value(&position)?;
        checkpoint::save_optim(&checkpoint::optim_path(path), &self.adam, &state, carried)?;
        checkpoint::save(path, &self.model, self.vocab, &self.provenance)
    }
}

/// The end-of-epoch lines, as the tutorial prints them plus validation.
fn report(epoch: usize, train_loss: f64, val_loss: Option<f64>, first: usize, seconds: f64) {
    eprintln!("Epoch {epoch} Loss: {train_loss:.4}");
    match val_loss {
        Some(v) => {
            eprintln!("Epoch {epoch} validation loss {v:.4} nats/char ({:.4} bits/char)", v / NATS_PER_BIT)
        }
        None => eprintln!("Epoch {epoch} no validation split (--val-fraction 0)"),
    }
    match first {
        0 => eprintln!("Time taken for 1 epoch {seconds:.2} sec"),
        _ => eprintln!("Time taken for the rest of epoch {epoch} (from batch {first}) {seconds:.2} sec"),
    }
}

/// The data order of one epoch depends only on the seed and the epoch number, so a resumed
/// run shuffles exactly as an uninterrupted one.
fn epoch_rng(seed: u64, epoch: usize) -> StdRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(epoch as u64).to_le_bytes());
    bytes[16..24].copy_from_slice(b"shuffle\0");
    StdRng::from_seed(bytes)
}

/// A first signal asks the loop to stop after the current batch; a second one exits now,
/// after removing any temporary file a checkpoint write may have left behind.
fn interrupt_flag(checkpoint_dir: &Path) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let (seen, dir) = (flag.clone(), checkpoint_dir.to_path_buf());
    let _ = ctrlc::set_handler(move || {
        if seen.swap(true, Ordering::SeqCst) {
            crate::atomic::remove_temporaries(&dir);
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
