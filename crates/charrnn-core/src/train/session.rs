//! The epoch loop: batches, metrics, evaluation and checkpoints at the end of each epoch, the
//! limits of this invocation, and a clean stop when asked — everything reported as events.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use rand::{rngs::StdRng, SeedableRng};

use super::events::{EpochReport, Event, Observer, StepReport, StopFlag};
use super::folder::{prune, SAMPLES};
use super::limits::{Limit, RunLimits};
use super::setup::{Batches, Start};
use super::state::RunState;
use super::step::{learning_rate, train_step_shared, Share, StepOptions};
use super::Interrupted;
use crate::checkpoint;
use crate::collective::{self, Collective};
use crate::compute::Precision;
use crate::data::cache::Corpus;
use crate::data::EpochBatches;
use crate::metrics::{Metrics, Record};
use crate::model::Model;
use crate::optim::Adam;
use crate::sample::{generate, Engine, Job, SampleOptions};
use crate::score::{bits, mean_loss_shared};
use crate::train::settings::{RunControl, Settings};

/// What a run is, for the whole of this invocation.
pub(super) struct Run<'a> {
    pub settings: &'a Settings,
    pub dir: &'a Path,
    pub corpus: &'a Corpus,
    pub batches: &'a Batches<'a>,
    pub limits: &'a RunLimits,
    pub stop: &'a StopFlag,
    /// The ranks training together; rank 0 alone writes the run's files.
    pub world: &'a dyn Collective,
}

pub(super) struct Session<'a> {
    run: &'a Run<'a>,
    model: Model,
    adam: Adam,
    state: RunState,
    /// The recurrent state carried from batch to batch (stateful runs).
    carried: Option<Vec<Tensor>>,
    metrics: Metrics,
    observer: &'a mut dyn Observer,
    /// When this invocation started, and the step it started at.
    started: (Instant, u64),
    /// Epochs since the best validation loss (of this invocation's epochs).
    since_best: usize,
    /// Seconds this invocation has spent in epochs (training and validation), so that a
    /// `fit_minutes` plan knows the time it spent on anything else.
    seconds_in_epochs: f64,
    /// The run's control settings as they stand: a `fit_minutes` plan changes its epochs (and
    /// so the learning-rate schedule's length, [`Session::total_steps`]).
    control: RunControl,
}

/// Whether the epoch loop goes on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl<'a> Session<'a> {
    /// Opens the run's metrics (cut back to where a resumed run stands).
    pub fn open(run: &'a Run<'a>, start: Start, observer: &'a mut dyn Observer) -> Result<Self> {
        let Start { model, adam, state, carried } = start;
        let step = state.step;
        let mut notify = |n| observer.event(&Event::Notice(n));
        let metrics = Metrics::open(run.dir, (step > 0).then_some(step), &mut notify)?;
        Ok(Session {
            run,
            model,
            adam,
            state,
            carried,
            metrics,
            observer,
            started: (Instant::now(), step),
            since_best: 0,
            seconds_in_epochs: 0.0,
            control: run.settings.control.clone(),
        })
    }

    fn emit(&mut self, event: Event) {
        self.observer.event(&event);
    }

    /// Whether this process writes the run's files (the only one, or rank 0 of several).
    fn writes(&self) -> bool {
        self.run.world.rank() == 0
    }

    /// Trains the remaining epochs; a stop request saves and ends as [`Interrupted`]; a limit
    /// of this invocation saves a resumable checkpoint and ends the run normally.
    pub fn run(mut self) -> Result<()> {
        while self.state.epoch < self.control.epochs {
            let started = Instant::now();
            let first = self.state.batch;
            if self.train_epoch()? == Flow::Stop {
                break;
            }
            if self.end_epoch(first, started.elapsed().as_secs_f64())? == Flow::Stop {
                break;
            }
            if self.state.epoch < self.control.epochs {
                if let Some(limit) = self.limit_reached()? {
                    self.save_epoch_end()?;
                    self.emit(Event::LimitReached { limit, at_epoch_end: Some(self.state.epoch) });
                    break;
                }
            }
        }
        Ok(())
    }

    /// The limit reached: rank 0's clock decides for every rank.
    fn limit_reached(&self) -> Result<Option<Limit>> {
        Ok(self.agree_to_stop(false)?.1)
    }

    /// Whether any rank was asked to stop (`stop_here`: this one was), and the limit reached by
    /// rank 0's clock: one collective call for both.
    fn agree_to_stop(&self, stop_here: bool) -> Result<(bool, Option<Limit>)> {
        let (at, step) = self.started;
        let reached = self.run.limits.reached(self.state.step - step, at);
        let world = self.run.world;
        if world.size() == 1 {
            return Ok((stop_here, reached));
        }
        // A maximum over the ranks: any rank's stop, and rank 0's limit (the others send 0).
        let mut v = [stop_here as u64, if world.rank() == 0 { encode_limit(reached) } else { 0 }];
        world.max_u64(&mut v)?;
        Ok((v[0] != 0, decode_limit(v[1])))
    }

    /// The batches of the current epoch from where the run stands.
    fn train_epoch(&mut self) -> Result<Flow> {
        let (s, batches) = (self.run.settings, self.run.batches);
        let epoch = self.state.epoch + 1;
        // Shuffled sequences, or (stateful) the lanes in order, the state reset each epoch.
        let mut order = (!s.data.stateful).then(|| {
            let rng = epoch_rng(s.seed, epoch);
            EpochBatches::new(batches.train.len(), s.data.batch_size, s.data.buffer_size, rng)
                .skip(self.state.batch)
        });
        if self.state.batch == 0 {
            self.carried = None;
            self.state.loss_sum = 0.0;
        }
        let chars_per_batch = (s.data.batch_size * s.data.seq_len) as f64;
        let world = self.run.world;
        // This rank's rows of every global batch (all of them when alone).
        let rows = collective::share(s.data.batch_size, world.rank(), world.size());
        let share = Share { world, first_row: rows.start, global_rows: s.data.batch_size };
        for n in self.state.batch..batches.per_epoch {
            let batch = match &mut order {
                Some(order) => {
                    let global = order.next().expect("one order per batch of the epoch");
                    batches.train.batch(&global[rows.clone()])
                }
                None => batches.lanes.batch(n),
            };
            let t0 = Instant::now();
            let step_options = StepOptions {
                learning_rate: learning_rate(s, self.state.step, self.total_steps()),
                clip_grad_norm: s.optimizer.clip_grad_norm,
                dropout: s.optimizer.dropouts(),
                seed: s.seed ^ self.state.step.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            };
            let carried = self.carried.as_deref();
            let (l, _, finals) =
                train_step_shared(&self.model, &mut self.adam, &batch, &step_options, carried, &share)
                    .with_context(|| format!("epoch {epoch} batch {n}"))?;
            self.state.count_batch(l as f64);
            if s.data.stateful {
                self.carried = Some(finals);
            }
            let chars_per_s = chars_per_batch / t0.elapsed().as_secs_f64();
            let logged = n % 100 == 0;
            if logged && self.writes() {
                self.metrics.push(Record::Step {
                    epoch,
                    step: self.state.step,
                    loss: l as f64,
                    learning_rate: step_options.learning_rate,
                    chars_per_s,
                })?;
            }
            self.emit(Event::Step(StepReport {
                epoch,
                batch: n,
                step: self.state.step,
                loss: l as f64,
                learning_rate: step_options.learning_rate,
                chars_per_s,
                logged,
            }));
            // Every rank stops at the step where any of them was asked to.
            let (stop, limit) = self.agree_to_stop(self.run.stop.is_raised())?;
            if stop {
                self.save_mid_epoch()?;
                return Err(Interrupted.into());
            }
            // At the epoch's last batch the epoch ends first (validation, its checkpoint).
            if n + 1 < batches.per_epoch {
                if let Some(limit) = limit {
                    self.emit(Event::LimitReached { limit, at_epoch_end: None });
                    self.save_mid_epoch()?;
                    return Ok(Flow::Stop);
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Saves where the run stands mid-epoch, resumable.
    fn save_mid_epoch(&mut self) -> Result<()> {
        let path = self.run.dir.join(checkpoint::INTERRUPTED);
        let carried = self.carried.clone().unwrap_or_default();
        self.save_point(&path, &carried)?;
        let (epoch, batch) = (self.state.epoch + 1, self.state.batch);
        self.emit(Event::Paused { epoch, batch, path });
        Ok(())
    }

    /// The checkpoint of the epoch just ended, where the periodic saving has not written it.
    fn save_epoch_end(&mut self) -> Result<()> {
        let path = self.run.dir.join(checkpoint::file_name(self.state.epoch));
        // Rank 0 decides: only its folder is sure to be the run's.
        let missing = !path.exists() as u64;
        if collective::agree(self.run.world, missing)? == 1 {
            self.save_point(&path, &[])?;
            self.emit(Event::Saved { path });
        }
        Ok(())
    }

    /// Validation, the epoch's report and metrics, the best and periodic checkpoints, the
    /// sample; stops the run when validation has not improved for `patience` epochs.
    fn end_epoch(&mut self, first_batch: usize, seconds: f64) -> Result<Flow> {
        let (s, batches) = (self.run.settings, self.run.batches);
        let epoch = self.state.epoch + 1;
        let train_loss = self.state.loss_sum / batches.per_epoch as f64;
        let world = self.run.world;
        if world.size() > 1 {
            let what = format!("weights after epoch {epoch}");
            collective::require_same(world, &what, collective::weights_fingerprint(&self.model)?)?;
        }
        let validation = Instant::now();
        let val_loss = mean_loss_shared(&self.model, &batches.val, s.data.batch_size, world)?;
        let with_validation = seconds + validation.elapsed().as_secs_f64();
        self.seconds_in_epochs += with_validation;
        self.emit(Event::EpochEnd(EpochReport { epoch, train_loss, val_loss, first_batch, seconds }));
        if first_batch == 0 {
            self.plan(with_validation)?;
        }
        if self.writes() {
            self.metrics.push(Record::Epoch {
                epoch,
                step: self.state.step,
                train_loss,
                val_loss,
                val_bits_per_char: val_loss.map(bits),
                seconds,
            })?;
            self.metrics.plot()?;
        }
        self.state.end_epoch(train_loss, val_loss);
        self.track_best(val_loss)?;
        if epoch.is_multiple_of(self.control.save_every) || epoch == self.control.epochs {
            let path = self.run.dir.join(checkpoint::file_name(epoch));
            self.save_point(&path, &[])?;
            if let (Some(keep), true) = (self.control.keep, self.writes()) {
                prune(self.run.dir, keep, &self.state.identity.run_id, epoch)?;
            }
            self.emit(Event::Saved { path });
        }
        if self.writes() && self.run.limits.sample_every.is_some_and(|n| epoch.is_multiple_of(n)) {
            // A sample is a view of the run, never a reason to stop it.
            match self.sample(epoch) {
                Ok(text) => self.emit(Event::Sample { epoch, text }),
                Err(e) => self.emit(Event::SampleFailed { epoch, error: format!("{e:#}") }),
            }
        }
        if let Some(patience) = self.run.limits.patience.filter(|&p| self.since_best >= p) {
            if epoch < self.control.epochs {
                self.save_epoch_end()?;
                let best_path = self.run.dir.join(checkpoint::BEST);
                self.emit(Event::EarlyStop { patience, best: self.state.best_val_loss, best_path });
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// With `fit_minutes` not yet planned, sets the run's epochs to those of the just-ended
    /// whole epoch's `seconds` that fit (rank 0's clock decides for every rank). The plan
    /// replaces the budget in the saved settings, so a resumed run keeps it.
    fn plan(&mut self, seconds: f64) -> Result<()> {
        let Some(minutes) = self.control.fit_minutes else { return Ok(()) };
        let (done, asked) = (self.state.epoch + 1, self.control.epochs);
        // This invocation's time outside its epochs: opening the run, saving.
        let other = self.started.0.elapsed().as_secs_f64() - self.seconds_in_epochs;
        let fit = super::plan::epochs_that_fit(minutes, seconds, other, done, asked) as u64;
        let epochs = collective::agree(self.run.world, fit)? as usize;
        self.control = RunControl { epochs, fit_minutes: None, ..self.control.clone() };
        let batches_left = (epochs - done) as u64 * self.run.batches.per_epoch as u64;
        self.emit(Event::Planned { epochs, asked, minutes, epoch_seconds: seconds, batches_left });
        Ok(())
    }

    /// Steps of the whole run, the learning-rate schedule's length: no more than those of the
    /// epochs asked for, whose count was checked when the run began.
    fn total_steps(&self) -> u64 {
        self.control.epochs as u64 * self.run.batches.per_epoch as u64
    }

    /// Keeps `best.safetensors` at the best validation loss, and counts the epochs since.
    fn track_best(&mut self, val_loss: Option<f64>) -> Result<()> {
        let best = self.state.best_val_loss;
        match val_loss {
            Some(v) if best.is_none_or(|b| v < b) => {
                self.state.best_val_loss = Some(v);
                self.since_best = 0;
                let path = self.run.dir.join(checkpoint::BEST);
                if self.writes() {
                    checkpoint::save(&path, &self.model, &self.run.corpus.vocab, &self.state.provenance())?;
                }
                self.emit(Event::NewBest { val_loss: v, path });
            }
            Some(_) => self.since_best += 1,
            None => {}
        }
        Ok(())
    }

    /// A sample from the model as it stands, appended to `samples.txt`. It draws from its own
    /// random stream (training's shuffling and dropout are untouched) and in f32, whatever the
    /// training precision: it shows the weights, not the arithmetic.
    fn sample(&mut self, epoch: usize) -> Result<String> {
        let spec = &self.run.limits.sample;
        let vocab = &self.run.corpus.vocab;
        let options = SampleOptions {
            temperature: spec.temperature,
            seed: self.run.settings.seed ^ (epoch as u64).wrapping_mul(0xA076_1D64_78BD_642F),
            ..SampleOptions::new(&spec.start, spec.length)
        };
        let job = Job::new(vocab, &options).context("--start")?;
        let in_f32 = self.model.with_compute(self.model.compute().with_precision(Precision::F32)?)?;
        let mut text = Vec::new();
        generate(&mut Engine::new(&in_f32, vocab, 1)?, job, &mut text)?;
        let text = String::from_utf8_lossy(&text).into_owned();
        let path = self.run.dir.join(SAMPLES);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        use std::io::Write;
        write!(file, "--- epoch {epoch}, step {} ---\n{text}", self.state.step)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(text)
    }

    /// Weights and optimizer state together (optimizer first: a crash in between leaves a
    /// pair whose steps differ, which resume detects). The carried state (stateful runs) is
    /// saved too, so a run resumed mid-epoch continues it.
    fn save_point(&self, path: &Path, carried: &[Tensor]) -> Result<()> {
        if !self.writes() {
            return Ok(());
        }
        let settings = Settings { control: self.control.clone(), ..self.run.settings.clone() };
        let position = self.state.position(&settings);
        checkpoint::save_optim(&checkpoint::optim_path(path), &self.adam, &position, carried)?;
        checkpoint::save(path, &self.model, &self.run.corpus.vocab, &self.state.provenance())
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

/// A limit as one number, for rank 0 to tell the others: 0 none, else the kind in the top two
/// bits and its value (steps, or milliseconds) below.
fn encode_limit(limit: Option<Limit>) -> u64 {
    const VALUE: u64 = (1 << 62) - 1;
    match limit {
        None => 0,
        Some(Limit::Steps(n)) => 1 << 62 | n.min(VALUE),
        Some(Limit::Time(t)) => 2 << 62 | (t.as_millis() as u64).min(VALUE),
    }
}

fn decode_limit(code: u64) -> Option<Limit> {
    let value = code & ((1 << 62) - 1);
    match code >> 62 {
        1 => Some(Limit::Steps(value)),
        2 => Some(Limit::Time(std::time::Duration::from_millis(value))),
        _ => None,
    }
}
