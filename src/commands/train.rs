//! `charrnn train`: the preset, the typed flags and where the run's files go.

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::TrainArgs;
use crate::device;
use crate::train::{self, TrainOptions};

/// Where checkpoints go when no --checkpoint-dir is given.
fn default_dir() -> PathBuf {
    PathBuf::from("checkpoints")
}

pub(super) fn run(a: TrainArgs) -> Result<()> {
    let resume = a.resume.map(|p| p.unwrap_or_else(|| a.checkpoint_dir.clone().unwrap_or_else(default_dir)));
    let checkpoint_dir = match (&a.checkpoint_dir, &resume) {
        (Some(dir), _) => dir.clone(),
        // A resumed run writes where it was found unless told otherwise.
        (None, Some(r)) if r.is_dir() => r.clone(),
        (None, Some(r)) => r.parent().map_or_else(|| PathBuf::from("."), PathBuf::from),
        (None, None) => default_dir(),
    };
    train::run(&TrainOptions {
        device: device::select(a.device.choice)?,
        base: a.preset.settings(rand::random()),
        typed: a.settings,
        checkpoint_dir,
        resume,
        overwrite: a.overwrite,
        cache_dir: a.cache.dir(),
        limits: a.limits.limits(),
        init_from: a.init_from,
        extend_vocab: a.extend_vocab,
    })
}
