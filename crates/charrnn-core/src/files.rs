//! Reading the files a user names. Only regular files are read: a device (`/dev/zero`), a
//! FIFO or a socket, given directly or through a link, would be read without end or block
//! forever, so it is refused. The check is made on the file opened (without waiting, so a FIFO
//! cannot block the open), not on the path, which could be swapped in between.

use std::fs::File;
use std::io::{Error, ErrorKind, Result};
use std::path::Path;

/// Opens `path` for reading if it is a regular file (links followed).
pub fn open(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() { "a folder" } else { "not a regular file (a device, FIFO or socket?)" };
        return Err(Error::new(ErrorKind::InvalidInput, format!("{} is {what}", path.display())));
    }
    #[cfg(unix)]
    blocking(&file)?;
    Ok(file)
}

/// Turns a descriptor opened without waiting back into an ordinary one.
#[cfg(unix)]
fn blocking(file: &File) -> Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function's caller owns, reading then setting its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// The whole contents of the regular file `path`.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut open(path)?, &mut bytes)?;
    Ok(bytes)
}

/// The whole contents of the regular file `path`, which must be UTF-8 text.
pub fn read_to_string(path: &Path) -> Result<String> {
    String::from_utf8(read(path)?).map_err(|e| Error::new(ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_folders_are_refused_before_opening() {
        let dir = tempfile::tempdir().unwrap();
        let regular = dir.path().join("a.txt");
        std::fs::write(&regular, b"text").unwrap();
        assert_eq!(read(&regular).unwrap(), b"text");
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
        #[cfg(unix)]
        {
            let err = read(Path::new("/dev/zero")).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
            let link = dir.path().join("zero");
            std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
            assert!(read(&link).unwrap_err().to_string().contains("not a regular file"));
            // A FIFO would block an open() forever; it is refused without one.
            let fifo = dir.path().join("fifo");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            if made.is_ok_and(|s| s.success()) {
                assert!(read(&fifo).unwrap_err().to_string().contains("not a regular file"));
            }
        }
    }
}
