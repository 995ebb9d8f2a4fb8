//! `charrnn download`: fetch a corpus, checksum-verified.

use std::time::Duration;

use anyhow::Result;

use crate::cli::DownloadArgs;
use crate::download::{self, DownloadOptions, Outcome};

pub(super) fn run(a: DownloadArgs) -> Result<()> {
    let options = DownloadOptions::from(a);
    match download::run(&options)? {
        Outcome::AlreadyPresent => {
            eprintln!("{} already present (checksum verified)", options.output.display())
        }
        Outcome::Downloaded { bytes, sha256 } => {
            eprintln!("wrote {} ({bytes} bytes, SHA-256 {sha256})", options.output.display())
        }
    }
    Ok(())
}

impl From<DownloadArgs> for DownloadOptions {
    fn from(a: DownloadArgs) -> Self {
        DownloadOptions {
            url: a.url,
            output: a.output,
            sha256: a.sha256,
            force: a.force,
            timeout: Duration::from_secs(a.timeout),
            max_bytes: a.max_bytes,
            follow_redirects: a.follow_redirects,
        }
    }
}
