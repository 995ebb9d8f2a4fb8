//! The files a training run keeps in its folder: finding another run's, refusing or removing
//! them, and pruning this run's old checkpoints.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::checkpoint;
use crate::metrics::Metrics;
use crate::notice::{Notice, Notify};

/// The samples of `sample_every`, appended after each sampled epoch.
pub const SAMPLES: &str = "samples.txt";

/// The lock file a run holds in its folder while it runs (removed at its end; one a run killed
/// outright leaves behind is locked by nobody, since the lock goes with the process).
const LOCK: &str = ".charrnn.lock";

/// A run's hold on its folder, for its lifetime: no second run trains, resumes or overwrites
/// there meanwhile.
pub(super) struct FolderLock {
    path: std::path::PathBuf,
    _file: std::fs::File,
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Removed while still locked: a process that opened it meanwhile sees, once it has the
        // lock, that the name now points elsewhere, and starts again (`lock`).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Locks `dir` (which exists) for this run; refused, naming the holder, when another process
/// holds it.
pub(super) fn lock(dir: &Path) -> Result<FolderLock> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK);
    loop {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the run's lock file {}", path.display()))?;
        if !try_lock(&file) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!("{}", in_use(dir, holder.trim()));
        }
        if !same_file(&file, &path) {
            continue; // its holder removed it as we took it: take the one there now
        }
        let stamp =
            file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id()));
        stamp.with_context(|| format!("cannot write the run's lock file {}", path.display()))?;
        return Ok(FolderLock { path, _file: file });
    }
}

/// The refusal of a folder another run holds.
fn in_use(dir: &Path, holder: &str) -> String {
    let who = if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
    format!(
        "{} is in use by another training run ({who}); wait for it to end, or train in another --checkpoint-dir",
        dir.display()
    )
}

/// Whether the open `file` is the one `path` names now.
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

/// The holder of `dir`'s lock, if a live process holds it (looked at without taking it).
pub(super) fn holder(dir: &Path) -> Option<String> {
    let path = dir.join(LOCK);
    let mut file = std::fs::File::open(path).ok()?;
    if try_lock(&file) {
        return None; // nobody holds it; dropping the file lets go
    }
    let mut pid = String::new();
    std::io::Read::read_to_string(&mut file, &mut pid).ok()?;
    Some(pid.trim().to_string())
}

/// Takes an exclusive advisory lock on `file` without waiting; false when another holds it.
fn try_lock(file: &std::fs::File) -> bool {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor `file` owns; it touches no memory.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        true
    }
}

/// A fresh run's folder must not hold another run; the error says how to go on.
pub(super) fn refuse_another_run(dir: &Path) -> Result<()> {
    if let Some(pid) = holder(dir) {
        bail!("{}", in_use(dir, &pid));
    }
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
