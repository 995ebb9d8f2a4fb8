//! What a training run reports as it goes, to an [`Observer`] the caller gives: typed events in
//! the order they happen. The library prints nothing; the binary turns these into its log lines
//! and progress bar, other front ends into whatever they show.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::limits::Limit;
use crate::notice::Notice;

/// Receives a run's events.
pub trait Observer {
    /// Called with each event as it happens, on the thread that runs the training.
    fn event(&mut self, event: &Event);
}

impl<F: FnMut(&Event)> Observer for F {
    fn event(&mut self, event: &Event) {
        self(event)
    }
}

/// Asks a run to stop at the next step boundary, saving a resumable checkpoint: set it from a
/// signal handler, another thread, or an observer.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag not yet raised.
    pub fn new() -> Self {
        StopFlag::default()
    }

    /// Asks the run to stop; returns whether it had been asked before.
    pub fn raise(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }

    /// Whether the run has been asked to stop.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Something that happened in a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Something worth saying along the way (a cache rebuilt, a file passed over, …).
    Notice(Notice),
    /// The run starts from another run's weights (`init_from`).
    FineTuning {
        /// The checkpoint it starts from.
        path: PathBuf,
        /// That checkpoint's epoch.
        epoch: usize,
    },
    /// The run continues a saved one.
    Resuming {
        /// The checkpoint it continues from.
        path: PathBuf,
        /// The epoch it continues in (from 1).
        epoch: usize,
        /// Batches of that epoch already done.
        batch: usize,
    },
    /// The corpus, the split and the model are set up.
    Started(RunSummary),
    /// The run has already trained the epochs asked for: nothing to do.
    AlreadyTrained {
        /// Epochs trained.
        epochs: usize,
    },
    /// One optimisation step was taken.
    Step(StepReport),
    /// An epoch ended: its losses.
    EpochEnd(EpochReport),
    /// A checkpoint was written.
    Saved {
        /// The file.
        path: PathBuf,
    },
    /// A new best validation loss; its checkpoint was written.
    NewBest {
        /// The loss, in nats per character.
        val_loss: f64,
        /// The checkpoint.
        path: PathBuf,
    },
    /// A sample from the model as it stands after an epoch (`sample_every`).
    Sample {
        /// The epoch it follows.
        epoch: usize,
        /// The text, its start first.
        text: String,
    },
    /// No sample could be drawn after an epoch (the run goes on).
    SampleFailed {
        /// The epoch.
        epoch: usize,
        /// Why.
        error: String,
    },
    /// A limit of this invocation was reached.
    LimitReached {
        /// Which.
        limit: Limit,
        /// The epoch that just ended, when the limit came at an epoch's end; None mid-epoch.
        at_epoch_end: Option<usize>,
    },
    /// `fit_minutes` set the run's epochs from the pace of the first whole epoch it timed; the
    /// learning-rate schedule ends with them.
    Planned {
        /// The epochs the run now trains.
        epochs: usize,
        /// The epochs asked for.
        asked: usize,
        /// The budget, in minutes.
        minutes: f64,
        /// The timed epoch's seconds (its validation included).
        epoch_seconds: f64,
        /// Batches this invocation has still to run.
        batches_left: u64,
    },
    /// The validation loss has not improved for `patience` epochs: the run ends early.
    EarlyStop {
        /// The patience.
        patience: usize,
        /// The best validation loss.
        best: Option<f64>,
        /// The checkpoint that holds it.
        best_path: PathBuf,
    },
    /// The run stopped mid-epoch and saved where it stands (asked to stop, or a limit).
    Paused {
        /// The epoch it stopped in (from 1).
        epoch: usize,
        /// Batches of it done.
        batch: usize,
        /// The resumable checkpoint.
        path: PathBuf,
    },
}

/// What a run trains on and with.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// The corpus described (its sources, size, characters and cache).
    pub corpus: String,
    /// Characters in the training split.
    pub train_chars: usize,
    /// Characters in the validation split.
    pub val_chars: usize,
    /// Training sequences (shuffled), or None for a stateful run's lanes.
    pub sequences: Option<usize>,
    /// Characters per sequence, its target included (seq_len + 1).
    pub sequence_chars: usize,
    /// Sequences per batch (a stateful run's lanes).
    pub batch_size: usize,
    /// Batches per epoch.
    pub batches_per_epoch: usize,
    /// Batches this invocation will run unless it stops early.
    pub batches_left: u64,
    /// Parameters per layer.
    pub layers: Vec<(String, usize)>,
    /// All parameters.
    pub parameters: usize,
    /// The run's seed.
    pub seed: u64,
}

/// One optimisation step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// The epoch (from 1).
    pub epoch: usize,
    /// The batch within it (from 0).
    pub batch: usize,
    /// Steps taken so far in the run.
    pub step: u64,
    /// The batch's loss, in nats per character.
    pub loss: f64,
    /// The step's learning rate.
    pub learning_rate: f64,
    /// Training characters per second over this step.
    pub chars_per_s: f64,
    /// Whether the step was written to the metrics (every 100th batch).
    pub logged: bool,
}

/// One epoch's end.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    /// The epoch (from 1).
    pub epoch: usize,
    /// Mean training loss over its batches.
    pub train_loss: f64,
    /// Validation loss (None without a validation split).
    pub val_loss: Option<f64>,
    /// The batch this invocation started the epoch at (0 unless resumed mid-epoch).
    pub first_batch: usize,
    /// Seconds this invocation spent on it.
    pub seconds: f64,
}
