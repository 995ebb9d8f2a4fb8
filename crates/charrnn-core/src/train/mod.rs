//! Training as a library call: the tutorial's pipeline, model, loss and optimizer, with
//! validation, metrics, atomic checkpoints and a clean stop when asked, in phases — decide how
//! the run starts (fresh, resumed, fine-tuned) and resolve its settings, set up the corpus,
//! model and optimizer, prepare the folder, then the epoch loop (`session`). Progress is
//! reported to an [`Observer`] as [`Event`]s; the caller's [`StopFlag`] ends the run at a step
//! boundary with a resumable checkpoint.
//!
//! The run's folder holds its checkpoints, their optimizer states, `metrics.jsonl` (one JSON
//! record per 100th step and per epoch, written by the library so that every front end keeps
//! the same log), `loss.svg` and `samples.txt`.

pub mod events;
mod finetune;
mod folder;
pub mod limits;
mod plan;
pub mod presets;
mod resume;
mod session;
pub mod settings;
mod setup;
mod state;
mod step;

use std::path::PathBuf;

use anyhow::{Context, Result};

pub use events::{Event, Observer, StopFlag};
pub use folder::SAMPLES;
pub use settings::{LrSchedule, Settings, SettingsArgs};
pub use step::{learning_rate, train_step, train_step_from, train_step_shared, Share, StepOptions};

use crate::collective::{self, Alone, Collective};
use crate::compute::Compute;
use crate::data::cache::{BaseVocab, Corpus};
use crate::notice::Notice;

/// How a run starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A new model.
    Fresh,
    /// Continue a run exactly where it stopped: from this checkpoint, or the newest resumable
    /// one in this folder.
    Resume(PathBuf),
    /// A new run from this checkpoint's weights (a file, or a folder's newest), on new text,
    /// with a fresh optimizer.
    InitFrom {
        /// The checkpoint.
        path: PathBuf,
        /// Add the new text's characters that the checkpoint lacks at the end of its
        /// vocabulary (without it they are an error that lists them).
        extend_vocab: bool,
    },
}

/// What to train, where, and how it starts.
pub struct TrainOptions {
    /// A fresh run's settings before the typed overrides (a preset's).
    pub base: Settings,
    /// The settings the user typed; on resume they may change only the run control and the
    /// precision.
    pub typed: SettingsArgs,
    /// Where the run's files go.
    pub checkpoint_dir: PathBuf,
    /// The device and CPU kernel; the precision is the run's setting.
    pub compute: Compute,
    /// How the run starts.
    pub origin: Origin,
    /// A new run (fresh or fine-tuned) deletes another run's files from its folder first;
    /// without it such a folder is refused.
    pub overwrite: bool,
    /// Where the corpus's token cache is kept; None: a temporary one for this run.
    pub cache_dir: Option<PathBuf>,
    /// Train on this text instead of reading the settings' `data` (which is then only
    /// recorded). A resumed run must be given the same text.
    pub text: Option<String>,
    /// Early ends and samples for this invocation.
    pub limits: limits::RunLimits,
    /// Raised by the caller to stop at the next step boundary, saving a resumable checkpoint.
    pub stop: StopFlag,
}

/// Training stopped by its [`StopFlag`] after saving; the binary exits with status 130.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// How the run started, decided once: the loaded pieces each kind needs.
enum Start {
    Fresh,
    Resumed(Box<resume::Resumed>),
    FineTuned(Box<finetune::Parent>),
}

impl Start {
    fn load(o: &TrainOptions, observer: &mut dyn Observer) -> Result<Start> {
        match &o.origin {
            Origin::Fresh => Ok(Start::Fresh),
            Origin::Resume(path) => {
                let mut notify = |n| observer.event(&Event::Notice(n));
                Ok(Start::Resumed(Box::new(resume::find(path, &o.compute, &mut notify)?)))
            }
            Origin::InitFrom { path, .. } => {
                let parent = finetune::Parent::load(path)?;
                let epoch = parent.checkpoint.provenance.epoch;
                observer.event(&Event::FineTuning { path: parent.path.clone(), epoch });
                Ok(Start::FineTuned(Box::new(parent)))
            }
        }
    }

    /// The run's settings: a resumed run's own, else the base under the typed overrides (a
    /// fine-tuned run keeping its parent's shape).
    fn settings(&self, o: &TrainOptions) -> Result<Settings> {
        match self {
            Start::Resumed(r) => r.settings(&o.typed),
            Start::FineTuned(p) => p.settings(o.base.clone(), &o.typed),
            Start::Fresh => Settings::fresh(o.base.clone(), &o.typed),
        }
    }

    /// The vocabulary the text is read in: a fine-tuned model's, fresh or resumed.
    fn base_vocab(&self, o: &TrainOptions) -> Option<BaseVocab> {
        match (self, &o.origin) {
            (Start::FineTuned(p), Origin::InitFrom { extend_vocab, .. }) => Some(p.base_vocab(*extend_vocab)),
            (Start::Resumed(r), _) if r.checkpoint.provenance.parent_sha256.is_some() => {
                Some(BaseVocab { vocab: r.checkpoint.vocab.clone(), extend: false })
            }
            _ => None,
        }
    }

    /// The model, optimizer and state the epoch loop starts from.
    fn begin(
        self,
        s: &Settings,
        corpus: &Corpus,
        batches: &setup::Batches,
        compute: &Compute,
        observer: &mut dyn Observer,
    ) -> Result<setup::Start> {
        match self {
            Start::Resumed(r) => {
                let (path, epoch, batch) = (r.path.clone(), r.position.epoch + 1, r.position.batch);
                let start = setup::resumed(*r, s, corpus, batches.per_epoch, compute)?;
                observer.event(&Event::Resuming { path, epoch, batch });
                Ok(start)
            }
            Start::FineTuned(p) => p.start(s, corpus, compute),
            Start::Fresh => setup::fresh(s, corpus, compute),
        }
    }
}

/// Trains as `o` says, reporting to `observer`. Ends normally when the epochs are done or a
/// limit or the patience ends the run (each with its checkpoint); with [`Interrupted`] when the
/// stop flag was raised (after saving a resumable checkpoint).
///
/// A tiny model trained on a text in memory for a few dozen steps, its loss watched through
/// the observer:
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use charrnn_core::train::{self, presets::Preset, Event, Origin, StopFlag, TrainOptions};
/// use charrnn_core::Compute;
///
/// let mut base = Preset::Tutorial.settings(1);
/// (base.model.embedding_dim, base.model.rnn_units) = (8, 32);
/// (base.data.batch_size, base.data.seq_len) = (8, 20);
/// base.optimizer.learning_rate = 1e-2;
/// base.control.epochs = 4;
/// let dir = tempfile::tempdir()?;
/// let options = TrainOptions {
///     base,
///     typed: Default::default(),
///     checkpoint_dir: dir.path().to_path_buf(),
///     compute: Compute::cpu(),
///     origin: Origin::Fresh,
///     overwrite: false,
///     cache_dir: None,
///     text: Some("hello, world. ".repeat(200)),
///     limits: Default::default(),
///     stop: StopFlag::new(),
/// };
/// let mut losses = Vec::new();
/// train::run(&options, &mut |event: &Event| {
///     if let Event::Step(step) = event {
///         losses.push(step.loss);
///     }
/// })?;
/// assert!(losses.len() >= 36, "{} steps", losses.len());
/// let (first, last) = (losses[0], losses[losses.len() - 1]);
/// assert!(last < first / 2.0, "the loss went from {first} to {last}");
/// assert!(dir.path().join("ckpt_4.safetensors").exists());
/// # Ok(())
/// # }
/// ```
pub fn run(o: &TrainOptions, observer: &mut dyn Observer) -> Result<()> {
    run_among(o, observer, &Alone)
}

/// [`run`] by several processes together (data parallelism), each calling this with the same
/// options: `batch_size` is the global batch, of which each rank trains its share (see
/// [`collective::share`]); the gradients are summed over the ranks, so every rank takes the
/// step one process would take on the whole batch. Rank 0 alone writes the run's files; every
/// rank must see the same corpus, and a resumed run's checkpoint at the same path. Every rank
/// gets the same events. The settings, starting weights and, after each epoch, the weights are
/// compared across ranks: a difference is an error on every rank.
pub fn run_among(o: &TrainOptions, observer: &mut dyn Observer, world: &dyn Collective) -> Result<()> {
    let dir = &o.checkpoint_dir;
    let start = Start::load(o, observer)?;
    let settings = start.settings(o)?;
    let resumed = matches!(start, Start::Resumed(_));
    if !resumed && !o.overwrite {
        folder::refuse_another_run(dir)?;
    }
    let s = &settings;
    if s.precision == crate::compute::Precision::Int8 {
        anyhow::bail!(
            "--precision int8 is for sampling (generate, serve, eval, bench), whose weights stay fixed; train in f32 or bf16 and sample the checkpoint in int8"
        );
    }
    check_world(s, world)?;
    let compute = o.compute.with_precision(s.precision)?;
    // The fused layer refuses too, but only at the first batch, after the folder is made.
    if compute.device().is_cuda() {
        s.model.cell.require_gpu_kernels()?;
    }
    let corpus = {
        let mut notify = |n| observer.event(&Event::Notice(n));
        let base = start.base_vocab(o);
        match &o.text {
            Some(text) => Corpus::from_text(text, base.as_ref(), &mut notify)?,
            None => setup::corpus(s, o.cache_dir.as_deref(), base, &mut notify)?,
        }
    };
    let corpus = &corpus;
    let batches = setup::Batches::new(corpus, s)?;
    if o.limits.sample_every.is_some() {
        let start = crate::sample::SampleOptions::new(&o.limits.sample.start, 1);
        crate::sample::Job::new(&corpus.vocab, &start).context("--start")?;
    }
    let begun = start.begin(s, corpus, &batches, &compute, observer)?;
    // The learning-rate schedule counts the run's steps; a plan only ever shortens it.
    (batches.per_epoch as u64).checked_mul(s.control.epochs as u64).ok_or_else(|| {
        anyhow::anyhow!(
            "--epochs {} × {} batches per epoch is too many steps to count",
            s.control.epochs,
            batches.per_epoch
        )
    })?;
    if world.size() > 1 {
        collective::require_same(
            world,
            "runs' settings, corpus and weights",
            start_fingerprint(s, corpus, &begun)?,
        )?;
    }
    let (epoch, batch) = (begun.state.epoch, begun.state.batch);
    let epochs_left = s.control.epochs.saturating_sub(epoch) as u64;
    let batches_left = (epochs_left * batches.per_epoch as u64).saturating_sub(batch as u64);
    let summary = setup::summary(s, corpus, &batches, &begun.model.config, batches_left);
    observer.event(&Event::Started(summary));
    if epoch >= s.control.epochs {
        observer.event(&Event::AlreadyTrained { epochs: epoch });
        return Ok(());
    }
    // Rank 0 alone keeps the folder (the others may not even share its file system).
    let _lock =
        if world.rank() == 0 { Some(prepare_folder(o, !resumed && o.overwrite, observer)?) } else { None };
    let run =
        session::Run { settings: s, dir, corpus, batches: &batches, limits: &o.limits, stop: &o.stop, world };
    session::Session::open(&run, begun, observer)?.run()
}

/// Refuses what several ranks cannot train: fewer rows than ranks, and stateful runs (whose
/// carried state would be split over the ranks' files).
fn check_world(s: &Settings, world: &dyn Collective) -> Result<()> {
    let ranks = world.size();
    if ranks == 1 {
        return Ok(());
    }
    if s.data.batch_size < ranks {
        anyhow::bail!(
            "--batch-size {} is the global batch, shared by the {ranks} ranks: it must be at least {ranks}",
            s.data.batch_size
        );
    }
    if s.data.stateful {
        anyhow::bail!("--stateful trains on one process only; run it without mpirun, or drop --stateful");
    }
    Ok(())
}

/// What every rank must agree on before the first step: the settings, the corpus, where the
/// run stands, the weights.
fn start_fingerprint(s: &Settings, corpus: &Corpus, begun: &setup::Start) -> Result<u64> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(serde_json::to_vec(s)?);
    hash.update(corpus.sha256.as_bytes());
    let state = &begun.state;
    for n in
        [state.step, state.epoch as u64, state.batch as u64, collective::weights_fingerprint(&begun.model)?]
    {
        hash.update(n.to_le_bytes());
    }
    Ok(collective::fingerprint(&hash.finalize()))
}

/// Creates the checkpoint folder and locks it for this run (refused while another run holds
/// it), removes temporaries an interrupted write left, and (with `overwrite`) the previous
/// run's files.
fn prepare_folder(
    o: &TrainOptions,
    overwrite: bool,
    observer: &mut dyn Observer,
) -> Result<folder::FolderLock> {
    let dir = &o.checkpoint_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the checkpoint folder {}", dir.display()))?;
    let lock = folder::lock(dir)?;
    for stale in crate::atomic::remove_temporaries(dir) {
        observer.event(&Event::Notice(Notice::RemovedTemporary { path: stale }));
    }
    if overwrite {
        let mut notify = |n| observer.event(&Event::Notice(n));
        folder::remove_another_run(dir, &mut notify)?;
    }
    Ok(lock)
}
