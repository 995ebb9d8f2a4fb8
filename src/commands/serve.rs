//! `charrnn serve`: a checkpoint behind HTTP until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use charrnn_core::{files, Compute, Device, Kernel};

use crate::cli::{DeviceChoice, NetworkArgs, ServeArgs};
use crate::serve::{self, Access, Limits, ServeOptions, Timeouts};

pub(super) fn run(a: ServeArgs, kernel: Kernel) -> Result<()> {
    if a.device != DeviceChoice::Cpu {
        bail!(
            "the server samples on the CPU only (the GPU sampler runs one request at a time, which the server does not schedule yet); pass --device cpu"
        );
    }
    let n = &a.network;
    serve::run(ServeOptions {
        checkpoint: a.checkpoint.clone(),
        addr: SocketAddr::new(a.host, a.port),
        limits: Limits {
            max_body_bytes: a.max_body_bytes,
            max_length: a.max_length,
            max_samples: a.max_samples,
            max_streams: a.max_streams,
            max_streams_per_client: a.max_streams_per_client,
            max_start_chars: a.max_start_chars,
            time_limit: Duration::from_secs(a.time_limit),
            body_timeout: Duration::from_secs_f64(n.body_timeout),
        },
        timeouts: Timeouts {
            header: Duration::from_secs_f64(n.header_timeout),
            body: Duration::from_secs_f64(n.body_timeout),
            idle: Duration::from_secs_f64(n.idle_timeout),
        },
        max_connections: n.max_connections,
        shutdown_timeout: Duration::from_secs_f64(n.shutdown_timeout),
        access: Access::new(&api_keys(n)?, &n.allow_origins, &n.allowed_hosts),
        no_auth: n.no_auth,
        reload: a.reload,
        compute: Compute::new(Device::Cpu, kernel, a.precision)?,
    })
}

/// The API keys from `--api-key`, `CHARRNN_API_KEY` and `--api-key-file` (one per line; blank
/// lines and `#` comments skipped); `--no-auth` with a key is a contradiction.
fn api_keys(n: &NetworkArgs) -> Result<Vec<String>> {
    let mut keys: Vec<String> = n.api_keys.iter().map(|k| k.trim().to_string()).collect();
    if let Some(file) = &n.api_key_file {
        let text = files::read_to_string(file)
            .with_context(|| format!("cannot read --api-key-file {}", file.display()))?;
        keys.extend(
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
        );
        if keys.is_empty() {
            bail!("--api-key-file {} holds no key (one per line)", file.display());
        }
    }
    if let Some(short) = keys.iter().find(|k| k.len() < 8) {
        bail!(
            "an API key of {} characters is too easy to guess; use at least 8 (e.g. `openssl rand -hex 16`)",
            short.len()
        );
    }
    if n.no_auth && !keys.is_empty() {
        bail!("--no-auth and an API key contradict each other; give one or the other");
    }
    Ok(keys)
}
