//! `charrnn train`: the preset, the typed flags and where the run's files go; the run's events
//! as log lines and a progress bar; Ctrl-C as the run's stop flag.

use std::path::PathBuf;

use anyhow::Result;
use charrnn_core::collective::{Alone, Collective};
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
    #[cfg(feature = "mpi")]
    if let Some(world) = crate::cluster::join()? {
        return run_among(a, kernel, &world);
    }
    #[cfg(not(feature = "mpi"))]
    crate::cluster::refuse_several()?;
    let (options, device) = options(a, kernel)?;
    eprintln!("{device}");
    let report = TrainReport::new(options.checkpoint_dir.clone(), options.stop.clone(), false);
    train_reported(&options, &Alone, report)
}

/// The run reported by `report` (which connects Ctrl-C once the epochs begin: before, it ends
/// the process).
fn train_reported(options: &TrainOptions, world: &dyn Collective, mut report: TrainReport) -> Result<()> {
    let result = train::run_among(options, &mut report, world);
    match &result {
        Ok(()) => report.finish(),
        Err(_) => report.abandon(),
    }
    result
}

/// One rank of a run under MPI: rank 0 speaks and writes; every rank trains its share. A rank
/// that fails says why and ends the whole job, so that none waits for it.
#[cfg(feature = "mpi")]
fn run_among(a: TrainArgs, kernel: Kernel, world: &crate::cluster::World) -> Result<()> {
    let (rank, size) = (world.rank(), world.size());
    let result = (|| {
        let (mut options, device) = options(a, kernel)?;
        // The seed a run draws when none is given must be one for all.
        options.base.seed = charrnn_core::collective::agree(world, options.base.seed)?;
        if rank == 0 {
            eprintln!("{device}; rank 0 of {size}");
        }
        let report = TrainReport::new(options.checkpoint_dir.clone(), options.stop.clone(), rank != 0)
            .with_epoch_note(|seconds| world.traffic_note(seconds));
        // On GPUs the gradients are summed in GPU memory by NCCL; elsewhere (and in a build
        // without NCCL) through host memory by MPI.
        #[cfg(feature = "nccl")]
        if size > 1 && options.compute.device().is_cuda() {
            let gpus = charrnn_core::collective::Nccl::new(world, options.compute.device())?;
            return train_reported(&options, &gpus, report);
        }
        train_reported(&options, world, report)
    })();
    match result {
        Err(e) if !e.is::<train::Interrupted>() && size > 1 => {
            eprintln!("error (rank {rank} of {size}): {e:#}");
            world.abort(1)
        }
        other => other,
    }
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
