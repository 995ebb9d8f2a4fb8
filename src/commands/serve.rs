//! `charrnn serve`: a checkpoint behind HTTP until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use charrnn_core::{Compute, Device, Kernel};

use crate::cli::{DeviceChoice, ServeArgs};
use crate::serve::{self, Limits, ServeOptions};

pub(super) fn run(a: ServeArgs, kernel: Kernel) -> Result<()> {
    if a.device != DeviceChoice::Cpu {
        bail!(
            "the server samples on the CPU only (the GPU sampler runs one request at a time, which the server does not schedule yet); pass --device cpu"
        );
    }
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
        compute: Compute::new(Device::Cpu, kernel, a.precision)?,
    })
}
