//! Writes that are all-or-nothing: a temporary file in the target's folder, flushed and synced,
//! then renamed over the target. A crash or a failed write never leaves a half-written file
//! under the final name, and never touches the previous version.
//!
//! A temporary is private (0600) while it is written and carries its writer's process id in its
//! name, so that leftovers are recognised and only those whose writer is gone are removed. The
//! file that replaces another keeps the replaced one's permission bits; a new one is 0644.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `path` atomically with whatever `fill` writes.
pub fn write_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fail = || format!("cannot write {}", path.display());
    // The temporary file is removed on every early return (its destructor deletes it).
    let mut tmp = private_temporary(dir).with_context(fail)?;
    fill(tmp.as_file_mut()).with_context(fail)?;
    tmp.as_file_mut().flush().with_context(fail)?;
    tmp.as_file().sync_all().with_context(fail)?;
    persist(tmp, path).with_context(fail)?;
    // Make the rename itself durable; not every filesystem supports syncing a folder.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Renames a written temporary over `path`, with the replaced file's permission bits (0644
/// for a new file).
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Whether a file name is one of [`private_temporary`]'s (or an older build's, without a
/// writer), and the process that writes it.
fn temporary_writer(name: &str) -> Option<Option<u32>> {
    let middle = name.strip_prefix(".charrnn-")?.strip_suffix(".tmp")?;
    Some(middle.split_once('-').and_then(|(pid, _)| pid.parse().ok()))
}

/// Whether process `pid` is running (on a system that cannot say: yes).
fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // SAFETY: signal 0 sends nothing; kill only checks that the process exists.
        let found = unsafe { libc::kill(pid, 0) } == 0;
        found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Removes the temporary files of our own naming in `dir` whose writer is gone (left by an
/// interrupted write); returns those removed. A live process's temporary is its to finish.
pub fn remove_temporaries(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| match temporary_writer(&e.file_name().to_string_lossy()) {
            Some(writer) => e.file_type().is_ok_and(|t| t.is_file()) && !writer.is_some_and(alive),
            None => false,
        })
        .map(|e| e.path())
        .filter(|p| std::fs::remove_file(p).is_ok())
        .collect()
}

/// A new temporary file in `dir`, readable by its owner only, with an unpredictable name that
/// says which process writes it; created exclusively (never an existing file or a link).
pub fn private_temporary(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let prefix = format!(".charrnn-{}-", std::process::id());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    builder.tempfile_in(dir)
}

/// Writes `bytes` to `path` atomically (see [`write_with`]).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        write(&path, b"old").unwrap();
        let err = write_with(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("disk full"), "{err:#}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.bin")]);
        write(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o644, "a new file is readable like any the user makes");
            // A file the user made private stays private when it is replaced.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            write(&path, b"newer").unwrap();
            assert_eq!(mode(&path), 0o600);
            // While it is written, a temporary is its owner's only.
            let tmp = private_temporary(dir.path()).unwrap();
            assert_eq!(mode(tmp.path()), 0o600);
        }
    }

    #[test]
    fn a_missing_folder_is_a_clear_error() {
        let err = write(Path::new("/nonexistent-dir-xyz/f.bin"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("cannot write /nonexistent-dir-xyz/f.bin"), "{err:#}");
    }

    #[test]
    fn only_the_temporaries_of_writers_that_are_gone_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let live = private_temporary(dir.path()).unwrap(); // this process's: in flight
        let gone = dir.path().join(format!(".charrnn-{}-x1y2z3.tmp", u32::MAX - 7));
        let older = dir.path().join(".charrnn-AbC123.tmp"); // an older build's, without a writer
        let mine = dir.path().join("notes.tmp");
        for p in [&gone, &older, &mine] {
            std::fs::write(p, b"x").unwrap();
        }
        let mut removed = remove_temporaries(dir.path());
        removed.sort();
        let mut want = vec![older.clone(), gone.clone()];
        want.sort();
        assert_eq!(removed, want);
        assert!(live.path().exists() && mine.exists());
    }
}
