//! Where a run stands, in one place: its step, epoch and batch counts, the losses so far and
//! what identifies it. The optimizer-state file saves it as a [`Position`] (the bytes on disk as
//! they have always been), and each checkpoint's provenance is made from it.

use serde::{Deserialize, Serialize};

use crate::checkpoint::Provenance;
use crate::train::settings::Settings;

/// What names a run and what it was made from: the same in every checkpoint it writes.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RunIdentity {
    /// Random, made when the run starts (absent in runs from before it existed).
    pub run_id: Option<String>,
    pub seed: u64,
    pub corpus_sha256: String,
    /// The checkpoint a fine-tuned run started from, by its SHA-256.
    pub parent_sha256: Option<String>,
}

/// Where a run stands.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RunState {
    /// Optimisation steps taken: the schedule's and the dropout masks' clock.
    pub step: u64,
    /// Epochs completed.
    pub epoch: usize,
    /// Batches done in the next epoch.
    pub batch: usize,
    /// Sum of those batches' losses.
    pub loss_sum: f64,
    /// The best validation loss so far.
    pub best_val_loss: Option<f64>,
    /// The training and validation loss of the last epoch this invocation completed.
    pub last_epoch: Option<(f64, Option<f64>)>,
    pub identity: RunIdentity,
}

/// The saved form of a [`RunState`], beside each resumable checkpoint, with the run's settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Position {
    pub settings: Settings,
    /// Epochs completed.
    pub epoch: usize,
    /// Batches completed in the next epoch.
    pub batch: usize,
    /// Sum of the batch losses so far in that epoch.
    pub epoch_loss_sum: f64,
    pub best_val_loss: Option<f64>,
    /// The run's id, the same as in its checkpoints' provenance (absent in older files).
    #[serde(default)]
    pub run_id: Option<String>,
}

impl RunState {
    /// A new run: nothing done yet.
    pub fn fresh(identity: RunIdentity) -> Self {
        RunState {
            step: 0,
            epoch: 0,
            batch: 0,
            loss_sum: 0.0,
            best_val_loss: None,
            last_epoch: None,
            identity,
        }
    }

    /// A saved run at `step` (its optimizer's update count).
    pub fn resumed(p: &Position, step: u64, identity: RunIdentity) -> Self {
        RunState {
            step,
            epoch: p.epoch,
            batch: p.batch,
            loss_sum: if p.batch > 0 { p.epoch_loss_sum } else { 0.0 },
            best_val_loss: p.best_val_loss,
            last_epoch: None,
            identity: RunIdentity { run_id: p.run_id.clone(), ..identity },
        }
    }

    /// Steps a batch; `loss` is its loss.
    pub fn count_batch(&mut self, loss: f64) {
        self.step += 1;
        self.batch += 1;
        self.loss_sum += loss;
    }

    /// Ends the epoch in progress with its losses.
    pub fn end_epoch(&mut self, train_loss: f64, val_loss: Option<f64>) {
        self.epoch += 1;
        self.batch = 0;
        self.loss_sum = 0.0;
        self.last_epoch = Some((train_loss, val_loss));
    }

    /// The saved form, with the run's settings.
    pub fn position(&self, settings: &Settings) -> Position {
        Position {
            settings: settings.clone(),
            epoch: self.epoch,
            batch: self.batch,
            epoch_loss_sum: if self.batch > 0 { self.loss_sum } else { 0.0 },
            best_val_loss: self.best_val_loss,
            run_id: self.identity.run_id.clone(),
        }
    }

    /// The provenance of a checkpoint written now.
    pub fn provenance(&self) -> Provenance {
        let id = &self.identity;
        Provenance {
            epoch: self.epoch,
            step: self.step,
            train_loss: self.last_epoch.map(|(t, _)| t),
            val_loss: self.last_epoch.and_then(|(_, v)| v),
            seed: id.seed,
            corpus_sha256: id.corpus_sha256.clone(),
            charrnn_version: env!("CARGO_PKG_VERSION").to_string(),
            run_id: id.run_id.clone(),
            parent_sha256: id.parent_sha256.clone(),
        }
    }
}
