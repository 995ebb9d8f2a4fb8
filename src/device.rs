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
                eprintln!("device: {} ({e:#})", cpu_summary());
                return Ok(Device::Cpu);
            }
        },
        DeviceChoice::Auto => Device::Cpu,
    };
    match &device {
        Device::Cpu => eprintln!("device: {}", cpu_summary()),
        _ => eprintln!("device: cuda:0"),
    }
    Ok(device)
}

/// "cpu, 2 threads, avx512 kernel"
fn cpu_summary() -> String {
    format!("cpu, {} threads, {} kernel", rayon::current_num_threads(), crate::kernel::active())
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
