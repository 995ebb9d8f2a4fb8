//! Fetching a corpus over HTTP: streamed to a temporary file beside the target, checked (a 2xx
//! answer with a body, the announced length, UTF-8 text and not an HTML page, within the
//! deadline and the size limit, and the SHA-256 when one is known), and only then renamed into
//! place. Any failure, Ctrl-C included, removes the temporary file and leaves an existing
//! target untouched.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::blocking::Response;
use sha2::{Digest, Sha256};

use charrnn_core::data::utf8::Utf8Stream;
use charrnn_core::data::{hex, tutorial};
use charrnn_core::{atomic, files};

pub struct DownloadOptions {
    pub url: String,
    pub output: PathBuf,
    /// Expected SHA-256; `None` with the tutorial's URL means its known SHA-256.
    pub sha256: Option<String>,
    pub force: bool,
    /// The whole download's deadline (connecting, waiting and reading the body).
    pub timeout: Duration,
    /// The largest body accepted.
    pub max_bytes: u64,
    /// Follow redirects (at most 10, never from https to http); without it one is an error.
    pub follow_redirects: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    AlreadyPresent,
    Downloaded { bytes: u64, sha256: String },
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut f = files::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex(&h.finalize()))
}

pub fn run(o: &DownloadOptions) -> Result<Outcome> {
    let expected = expected_sha256(o)?;
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
    let started = Instant::now();
    let response = request(o)?;
    let mut tmp = atomic::private_temporary(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    crate::signals::remove_on_interrupt(tmp.path())?;
    let (received, sha256) = receive(o, response, started, tmp.as_file_mut(), &dir)?;
    if let Some(e) = &expected {
        if *e != sha256 {
            bail!("download of {} has SHA-256 {sha256}, expected {e}; nothing was written", o.url);
        }
    }
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;
    atomic::persist(tmp, &o.output)
        .with_context(|| format!("cannot move the download into {}", o.output.display()))?;
    Ok(Outcome::Downloaded { bytes: received, sha256 })
}

/// The SHA-256 the download must have: the one given, or the default URL's.
fn expected_sha256(o: &DownloadOptions) -> Result<Option<String>> {
    let expected = match &o.sha256 {
        Some(s) => Some(s.trim().to_ascii_lowercase()),
        None if o.url == tutorial::URL => Some(tutorial::SHA256.to_string()),
        None => None,
    };
    if let Some(e) = &expected {
        if e.len() != 64 || !e.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--sha256 must be 64 hexadecimal digits, got {e:?}");
        }
    }
    Ok(expected)
}

/// Sends the request; refuses an error status, a redirect (unless asked to follow them), an
/// HTML page, and a body announced larger than --max-bytes, before anything is written.
fn request(o: &DownloadOptions) -> Result<Response> {
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(o.timeout)
        .timeout(o.timeout)
        .redirect(redirects(o.follow_redirects))
        .build()?;
    let fail = |e: reqwest::Error| anyhow::Error::new(e).context(format!("download of {} failed", o.url));
    let response = client.get(&o.url).send().map_err(fail)?;
    let status = response.status();
    if !status.is_success() || status == reqwest::StatusCode::NO_CONTENT {
        let location = response.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok());
        bail!(
            "download of {} failed: the server answered {status}{}; nothing was written",
            o.url,
            location
                .map(|l| format!(" (a redirect to {l}, not followed: pass --follow-redirects to follow it)"))
                .unwrap_or_default()
        );
    }
    let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|c| c.to_str().ok());
    if content_type.is_some_and(|c| c.to_ascii_lowercase().starts_with("text/html")) {
        bail!(
            "download of {} is an HTML page (Content-Type text/html), not a text corpus; nothing was written",
            o.url
        );
    }
    if let Some(len) = response.content_length().filter(|&l| l > o.max_bytes) {
        bail!(
            "download of {} announces {len} bytes, more than --max-bytes {}; nothing was written",
            o.url,
            o.max_bytes
        );
    }
    Ok(response)
}

/// Streams the body into `out`, checking as it goes that it is UTF-8 text, not HTML, within
/// --max-bytes and --timeout, and at the end that it is complete. Returns its length and
/// SHA-256.
fn receive(
    o: &DownloadOptions,
    mut response: Response,
    started: Instant,
    out: &mut File,
    dir: &Path,
) -> Result<(u64, String)> {
    let expected_len = response.content_length();
    let pb = ProgressBar::with_draw_target(expected_len, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .expect("valid template"),
    );
    let mut hasher = Sha256::new();
    let mut text = Utf8Stream::default();
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
        let chunk = &buf[..n];
        if let Err(offset) = text.feed(chunk) {
            bail!("download of {} is not UTF-8 text (byte {offset} is invalid); nothing was written", o.url);
        }
        if received == 0 && looks_like_html(chunk) {
            bail!("download of {} is an HTML page, not a text corpus; nothing was written", o.url);
        }
        received += n as u64;
        if received > o.max_bytes {
            bail!("download of {} is larger than --max-bytes {}; nothing was written", o.url, o.max_bytes);
        }
        if started.elapsed() > o.timeout {
            bail!(
                "download of {} took longer than --timeout {} s ({received} bytes so far); nothing was written",
                o.url,
                o.timeout.as_secs()
            );
        }
        hasher.update(chunk);
        out.write_all(chunk).with_context(|| format!("cannot write into {}", dir.display()))?;
        pb.set_position(received);
    }
    pb.finish_and_clear();
    if let Some(len) = expected_len.filter(|&len| len != received) {
        bail!("download of {} is truncated: got {received} of {len} bytes", o.url);
    }
    if received == 0 {
        bail!("download of {} is empty; nothing was written", o.url);
    }
    if !text.complete() {
        bail!("download of {} ends inside a UTF-8 character (cut short?); nothing was written", o.url);
    }
    Ok((received, hex(&hasher.finalize())))
}

/// None, or (`follow`) up to 10, never from https to http: a downgrade would let anyone on the
/// path change the file, checksum aside.
fn redirects(follow: bool) -> reqwest::redirect::Policy {
    if !follow {
        return reqwest::redirect::Policy::none();
    }
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade =
            attempt.previous().iter().any(|u| u.scheme() == "https") && attempt.url().scheme() == "http";
        if downgrade {
            let to = attempt.url().to_string();
            attempt.error(format!("a redirect from https to plain http ({to}) is refused"))
        } else if attempt.previous().len() > 10 {
            attempt.error("more than 10 redirects")
        } else {
            attempt.follow()
        }
    })
}

/// A body that starts like an HTML document (an error page or a login page served instead of
/// the file), whatever its Content-Type says.
fn looks_like_html(start: &[u8]) -> bool {
    let head: Vec<u8> = start.iter().skip_while(|b| b.is_ascii_whitespace()).take(15).copied().collect();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    head.starts_with("<!doctype html") || head.starts_with("<html")
}
