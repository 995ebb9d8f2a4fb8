//! The files a training run keeps in its folder: finding another run's, refusing or removing
//! them, and pruning this run's old checkpoints.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::checkpoint;
use crate::metrics::Metrics;
use crate::notice::{Notice, Notify};

/// The samples of `sample_every`, appended after each sampled epoch.
pub const SAMPLES: &str = "samples.txt";

/// A fresh run's folder must not hold another run; the error says how to go on.
pub(super) fn refuse_another_run(dir: &Path) -> Result<()> {
    let found = run_files(dir);
    if found.is_empty() {
        return Ok(());
    }
    let shown = found.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
    let more = match found.len() {
        n if n > 4 => format!(" and {} more", n - 4),
        _ => String::new(),
    };
    bail!(
        "{} already holds a training run ({shown}{more}); continue it with `charrnn train --resume {}`, choose another --checkpoint-dir, or pass --overwrite to delete that run's files first",
        dir.display(),
        dir.display()
    )
}

/// `--overwrite`: deletes the previous run's files (only those) from `dir`.
pub(super) fn remove_another_run(dir: &Path, notify: Notify) -> Result<()> {
    let found = run_files(dir);
    for name in &found {
        let path = dir.join(name);
        std::fs::remove_file(&path)
            .with_context(|| format!("--overwrite: cannot remove {}", path.display()))?;
    }
    if !found.is_empty() {
        notify(Notice::RemovedPreviousRun { files: found.len(), dir: dir.to_path_buf() });
    }
    Ok(())
}

/// Deletes all but the newest `keep` periodic checkpoints of this run (and their optimizer
/// states). A checkpoint written by another run (another run id), or one whose header cannot
/// be read, is left alone, and so is the one just written.
pub(super) fn prune(dir: &Path, keep: usize, run_id: &Option<String>, just_written: usize) -> Result<()> {
    let mut epochs: Vec<usize> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| checkpoint::epoch_of(&n))
        .filter(|&epoch| {
            let path = dir.join(checkpoint::file_name(epoch));
            checkpoint::read_provenance(&path).is_ok_and(|p| p.run_id == *run_id)
        })
        .collect();
    epochs.sort_unstable_by(|a, b| b.cmp(a));
    for epoch in epochs.into_iter().skip(keep).filter(|&e| e != just_written) {
        let path = dir.join(checkpoint::file_name(epoch));
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        let _ = std::fs::remove_file(checkpoint::optim_path(&path));
    }
    Ok(())
}

/// The files of a training run in `dir` (checkpoints, optimizer states, metrics, the plot,
/// the samples), by name, sorted.
fn run_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            checkpoint::is_run_checkpoint(n) || [Metrics::FILE, Metrics::PLOT, SAMPLES].contains(&n.as_str())
        })
        .collect();
    names.sort();
    names
}
