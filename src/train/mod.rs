//! Training: the tutorial's pipeline, model, loss and optimizer, with validation, progress,
//! atomic checkpoints and a clean stop on Ctrl-C, in phases: resolve the settings (resuming
//! where asked), set up the corpus, model and optimizer, prepare the folder, then the epoch
//! loop (`session`).

mod finetune;
mod folder;
pub mod limits;
pub mod presets;
mod resume;
mod session;
pub mod settings;
mod setup;
mod step;

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;

use crate::train::settings::SettingsArgs;
pub use crate::train::settings::{LrSchedule, Settings};
pub use step::{learning_rate, train_step, train_step_from, StepOptions};

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
    /// Where the corpus's token cache is kept; None: a temporary one for this run.
    pub cache_dir: Option<PathBuf>,
    /// Early ends and samples for this invocation.
    pub limits: limits::RunLimits,
    /// Start a new run from this checkpoint's weights.
    pub init_from: Option<PathBuf>,
    /// With `init_from`: add the new text's other characters to the vocabulary.
    pub extend_vocab: bool,
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

pub fn run(o: &TrainOptions) -> Result<()> {
    let dir = &o.checkpoint_dir;
    let resumed = o.resume.as_deref().map(|p| resume::find(p, &o.device)).transpose()?;
    let parent = o.init_from.as_deref().map(finetune::Parent::load).transpose()?;
    let settings = match (&resumed, &parent) {
        (Some(r), _) => r.settings(&o.typed)?,
        (None, parent) => {
            let fresh = match parent {
                Some(p) => p.settings(o.base.clone(), &o.typed)?,
                None => Settings::fresh(o.base.clone(), &o.typed)?,
            };
            if !o.overwrite {
                folder::refuse_another_run(dir)?;
            }
            fresh
        }
    };
    let s = &settings;
    s.precision.apply(&o.device)?;
    // The fused layer refuses too, but only at the first batch, after the folder is made.
    if o.device.is_cuda() {
        s.model.cell.require_gpu_kernels().map_err(anyhow::Error::msg)?;
    }
    // A fine-tuned run, fresh or resumed, reads its text in its model's vocabulary.
    let base = match (&parent, &resumed) {
        (Some(p), _) => Some(p.base_vocab(o.extend_vocab)),
        (None, Some(r)) if r.checkpoint.provenance.parent_sha256.is_some() => {
            Some(crate::data::cache::BaseVocab { vocab: r.checkpoint.vocab.clone(), extend: false })
        }
        _ => None,
    };
    let corpus = setup::corpus(s, o.cache_dir.as_deref(), base)?;
    let batches = setup::Batches::new(&corpus, s)?;
    if o.limits.sample_every.is_some() {
        let start = crate::model::job::SampleOptions::new(&o.limits.sample.start, 1);
        crate::model::job::Job::new(&corpus.vocab, &start).context("--start")?;
    }
    let start = match (resumed, &parent) {
        (Some(r), _) => setup::resumed(r, s, &corpus)?,
        (None, Some(p)) => p.start(s, &corpus, &o.device)?,
        (None, None) => setup::fresh(s, &corpus, &o.device)?,
    };
    let total_steps = (batches.per_epoch as u64).checked_mul(s.control.epochs as u64).ok_or_else(|| {
        anyhow::anyhow!(
            "--epochs {} × {} batches per epoch is too many steps to count",
            s.control.epochs,
            batches.per_epoch
        )
    })?;
    setup::describe(s, &corpus, &batches, &start.model.config);
    if start.position.epoch >= s.control.epochs {
        eprintln!("already trained {} epochs; pass a larger --epochs to continue", start.position.epoch);
        return Ok(());
    }
    prepare_folder(o)?;
    let session = session::Session::open(s, dir, &corpus, start, &batches, total_steps, o.limits.clone())?;
    session.run(&batches)
}

/// Creates the checkpoint folder, removes temporaries an interrupted write left, and (for
/// --overwrite) the previous run's files.
fn prepare_folder(o: &TrainOptions) -> Result<()> {
    let dir = &o.checkpoint_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the checkpoint folder {}", dir.display()))?;
    for stale in crate::atomic::remove_temporaries(dir) {
        eprintln!("removed {}, left by an interrupted write", stale.display());
    }
    if o.resume.is_none() && o.overwrite {
        folder::remove_another_run(dir)?;
    }
    Ok(())
}
