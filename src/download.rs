//! Fetching a corpus over HTTP: streamed to a temporary file beside the target, checked for
//! length and SHA-256, and only then renamed into place. Any failure removes the temporary
//! file and leaves an existing target untouched.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::checkpoint::hex;

/// The tutorial's corpus and its SHA-256.
pub const DEFAULT_URL: &str = "https://storage.googleapis.com/download.tensorflow.org/data/shakespeare.txt";
pub const DEFAULT_SHA256: &str = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed";

pub struct DownloadOptions {
    pub url: String,
    pub output: PathBuf,
    /// Expected SHA-256; `None` with the default URL means [`DEFAULT_SHA256`].
    pub sha256: Option<String>,
    pub force: bool,
    pub timeout: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    AlreadyPresent,
    Downloaded { bytes: u64, sha256: String },
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex(&h.finalize()))
}

pub fn run(o: &DownloadOptions) -> Result<Outcome> {
    let expected = match &o.sha256 {
        Some(s) => Some(s.trim().to_ascii_lowercase()),
        None if o.url == DEFAULT_URL => Some(DEFAULT_SHA256.to_string()),
        None => None,
    };
    if let Some(e) = &expected {
        if e.len() != 64 || !e.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--sha256 must be 64 hexadecimal digits, got {e:?}");
        }
    }
    if o.output.exists() && !o.force {
        let have = file_sha256(&o.output)?;
        if expected.as_deref() == Some(have.as_str()) {
            return Ok(Outcome::AlreadyPresent);
        }
        bail!(
            "{} already exists{}; pass --force to replace it",
            o.output.display(),
            if expected.is_some() { " with a different SHA-256" } else { "" }
        );
    }
    let dir = match o.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let client =
        reqwest::blocking::Client::builder().connect_timeout(o.timeout).timeout(o.timeout).build()?;
    let fail = |e: reqwest::Error| anyhow::Error::new(e).context(format!("download of {} failed", o.url));
    let mut response = client.get(&o.url).send().map_err(fail)?;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        bail!("download of {} failed: the server answered {status}", o.url);
    }
    let expected_len = response.content_length();

    let mut tmp = crate::atomic::temporary_file(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let pb = ProgressBar::with_draw_target(expected_len, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .expect("valid template"),
    );
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match response.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => bail!(
                "download of {} broke off after {received} bytes{}: {e}",
                o.url,
                expected_len.map(|l| format!(" of {l}")).unwrap_or_default()
            ),
        };
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n]).with_context(|| format!("cannot write into {}", dir.display()))?;
        received += n as u64;
        pb.set_position(received);
    }
    pb.finish_and_clear();
    if let Some(len) = expected_len {
        if received != len {
            bail!("download of {} is truncated: got {received} of {len} bytes", o.url);
        }
    }
    let sha256 = hex(&hasher.finalize());
    if let Some(e) = &expected {
        if *e != sha256 {
            bail!("download of {} has SHA-256 {sha256}, expected {e}; nothing was written", o.url);
        }
    }
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(&o.output)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot move the download into {}", o.output.display()))?;
    Ok(Outcome::Downloaded { bytes: received, sha256 })
}
