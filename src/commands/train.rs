//! `charrnn train`: the preset, the typed flags and where the run's files go; the run's events
//! as log lines and a progress bar; Ctrl-C as the run's stop flag.

use std::path::PathBuf;

use anyhow::Result;
use charrnn_core::compute::Precision;
use charrnn_core::train::{self, Origin, StopFlag, TrainOptions};
use charrnn_core::Kernel;

use super::described_compute;
use crate::cli::TrainArgs;
use crate::report::TrainReport;

/// Where checkpoints go when no --checkpoint-dir is given.
fn default_dir() -> PathBuf {
    PathBuf::from("checkpoints")
}

pub(super) fn run(a: TrainArgs, kernel: Kernel) -> Result<()> {
    let (options, device) = options(a, kernel)?;
    eprintln!("{device}");
    // Ctrl-C stops the run cleanly once its epochs begin; before, it ends the process.
    let mut report = TrainReport::new(options.checkpoint_dir.clone(), options.stop.clone());
    let result = train::run(&options, &mut report);
    match &result {
        Ok(()) => report.finish(),
        Err(_) => report.abandon(),
    }
    result
}

/// The run `train`'s arguments ask for, with a fresh stop flag: where its files go, where it
/// starts from, its settings over the preset's, on the device they name; and the line that says
/// which device that is.
pub fn options(a: TrainArgs, kernel: Kernel) -> Result<(TrainOptions, String)> {
    let resume = a.resume.map(|p| p.unwrap_or_else(|| a.checkpoint_dir.clone().unwrap_or_else(default_dir)));
    let checkpoint_dir = match (&a.checkpoint_dir, &resume) {
        (Some(dir), _) => dir.clone(),
        // A resumed run writes where it was found unless told otherwise.
        (None, Some(r)) if r.is_dir() => r.clone(),
        (None, Some(r)) => r.parent().map_or_else(|| PathBuf::from("."), PathBuf::from),
        (None, None) => default_dir(),
    };
    let origin = match (resume, a.init_from) {
        (Some(path), _) => Origin::Resume(path),
        (None, Some(path)) => Origin::InitFrom { path, extend_vocab: a.extend_vocab },
        (None, None) => Origin::Fresh,
    };
    // The run's precision is a setting (a resumed run's saved one); this is the device's.
    let (compute, device) = described_compute(a.device.choice, kernel, Precision::F32)?;
    let options = TrainOptions {
        base: a.preset.settings(rand::random()),
        typed: a.settings.into(),
        stop: StopFlag::new(),
        checkpoint_dir,
        compute,
        origin,
        overwrite: a.overwrite,
        cache_dir: a.cache.dir(),
        text: None,
        limits: a.limits.limits(),
    };
    Ok((options, device))
}
