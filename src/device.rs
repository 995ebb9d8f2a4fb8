//! Choosing where tensors live.

use anyhow::Result;
use candle_core::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when this build has it and a GPU answers, else the CPU
    Auto,
    Cpu,
    Cuda,
}

/// Resolves the choice and says on stderr what was picked.
pub fn select(choice: DeviceChoice) -> Result<Device> {
    let device = match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda => cuda()?,
        DeviceChoice::Auto if cfg!(feature = "cuda") => match cuda() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("device: cpu, {} threads ({e:#})", rayon::current_num_threads());
                return Ok(Device::Cpu);
            }
        },
        DeviceChoice::Auto => Device::Cpu,
    };
    match &device {
        Device::Cpu => eprintln!("device: cpu, {} threads", rayon::current_num_threads()),
        _ => eprintln!("device: cuda:0"),
    }
    Ok(device)
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device> {
    Device::new_cuda(0).map_err(|e| anyhow::anyhow!("no usable CUDA GPU (driver or device missing?): {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device> {
    anyhow::bail!(
        "this charrnn was built without CUDA; rebuild with --features cuda (see scripts/build-cuda.sh)"
    )
}
