//! Writes that are all-or-nothing: a temporary file in the target's folder, flushed and synced,
//! then renamed over the target. A crash or a failed write never leaves a half-written file
//! under the final name, and never touches the previous version.

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
    let mut tmp = temporary_file(dir).with_context(fail)?;
    fill(tmp.as_file_mut()).with_context(fail)?;
    tmp.as_file_mut().flush().with_context(fail)?;
    tmp.as_file().sync_all().with_context(fail)?;
    tmp.persist(path).map_err(|e| e.error).with_context(fail)?;
    // Make the rename itself durable; not every filesystem supports syncing a folder.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Whether a file name is one of [`temporary_file`]'s.
fn is_temporary(name: &str) -> bool {
    name.starts_with(".charrnn-") && name.ends_with(".tmp")
}

/// Removes the temporary files of our own naming in `dir` (left by an interrupted write);
/// returns those removed.
pub fn remove_temporaries(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| {
            is_temporary(&e.file_name().to_string_lossy()) && e.file_type().is_ok_and(|t| t.is_file())
        })
        .map(|e| e.path())
        .filter(|p| std::fs::remove_file(p).is_ok())
        .collect()
}

/// A temporary file in `dir`, named so that an interrupted run's leftovers are recognisable,
/// readable by others like any file the user makes (tempfile's default is owner-only).
pub fn temporary_file(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".charrnn-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
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
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o044, 0o044, "others can read what we write: {mode:o}");
        }
    }

    #[test]
    fn a_missing_folder_is_a_clear_error() {
        let err = write(Path::new("/nonexistent-dir-xyz/f.bin"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("cannot write /nonexistent-dir-xyz/f.bin"), "{err:#}");
    }
}
