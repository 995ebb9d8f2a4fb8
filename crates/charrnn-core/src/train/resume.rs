//! Continuing a run: where it stood, found in a checkpoint and the optimizer state beside it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::state::Position;
use crate::checkpoint::{self, Checkpoint};
use crate::compute::Compute;
use crate::notice::{Notice, Notify};
use crate::optim::Adam;
use crate::train::settings::{Settings, SettingsArgs};

/// A run found to continue: its checkpoint, optimizer, position and carried state.
pub(super) struct Resumed {
    pub path: PathBuf,
    pub checkpoint: Checkpoint,
    pub adam: Adam,
    pub position: Position,
    /// The recurrent state a stateful run carries between batches (empty when none).
    pub carried: Vec<Tensor>,
}

impl Resumed {
    /// The saved settings with the typed flags a resumed run allows, checked by the same rules
    /// as flags (the file may be damaged or crafted).
    pub fn settings(&self, typed: &SettingsArgs) -> Result<Settings> {
        let merged = Settings::resumed(&self.position.settings, typed, self.position.epoch)?;
        merged.validate().with_context(|| {
            format!("the run saved in {} cannot be resumed", checkpoint::optim_path(&self.path).display())
        })?;
        Ok(merged)
    }
}

/// The run to continue from `path`: that checkpoint, or in a folder the most trained pair that
/// loads (a damaged one is noticed and passed over).
pub(super) fn find(path: &Path, compute: &Compute, notify: Notify) -> Result<Resumed> {
    let mut failures = Vec::new();
    for candidate in checkpoint::resumable_candidates(path, notify)? {
        match load(&candidate, compute) {
            Ok(r) => return Ok(r),
            Err(e) if path.is_dir() => {
                notify(Notice::CheckpointSkipped { path: candidate.clone(), why: format!("{e:#}") });
                failures.push(e);
            }
            Err(e) => return Err(e),
        }
    }
    let last = failures.pop().map(|e| format!("{e:#}")).unwrap_or_default();
    bail!("nothing to resume in {}: no checkpoint pair there loads (last: {last})", path.display())
}

/// A checkpoint, its optimizer state and the training position, checked to belong together.
fn load(path: &Path, compute: &Compute) -> Result<Resumed> {
    let mut ckpt = checkpoint::load(path, compute)?;
    let model = &mut ckpt.model;
    let (position, adam, carried) =
        checkpoint::load_optim(&checkpoint::optim_path(path), |position: &Position| {
            if position.settings.model.tie_weights {
                model.tie_loaded().with_context(|| format!("{} cannot be resumed", path.display()))?;
            }
            Adam::new(model.parameters())
        })?;
    if adam.updates() != ckpt.provenance.step {
        bail!(
            "{} is at step {} but its optimizer state at step {}; resume from another checkpoint",
            path.display(),
            ckpt.provenance.step,
            adam.updates()
        );
    }
    if let (Some(model_run), Some(optim_run)) = (&ckpt.provenance.run_id, &position.run_id) {
        if model_run != optim_run {
            bail!(
                "{} belongs to run {optim_run}, not to {}'s run {model_run}; resume from a checkpoint with its own optimizer state",
                checkpoint::optim_path(path).display(),
                path.display()
            );
        }
    }
    Ok(Resumed { path: path.to_path_buf(), checkpoint: ckpt, adam, position, carried })
}
