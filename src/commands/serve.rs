//! `charrnn serve`: a checkpoint behind HTTP until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::cli::ServeArgs;
use crate::device::DeviceChoice;
use crate::serve::{self, Limits, ServeOptions};

pub(super) fn run(a: ServeArgs) -> Result<()> {
    if a.device != DeviceChoice::Cpu {
        bail!(
            "the server samples on the CPU only (the GPU sampler cannot yet take requests joining a running batch); pass --device cpu"
        );
    }
    a.precision.apply(&candle_core::Device::Cpu)?;
    serve::run(ServeOptions {
        checkpoint: a.checkpoint,
        addr: SocketAddr::new(a.host, a.port),
        limits: Limits {
            max_body_bytes: a.max_body_bytes,
            max_length: a.max_length,
            max_samples: a.max_samples,
            max_streams: a.max_streams,
            time_limit: Duration::from_secs(a.time_limit),
        },
        reload: a.reload,
        precision: a.precision,
    })
}
