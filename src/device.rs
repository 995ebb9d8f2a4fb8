//! Choosing where tensors live.

use anyhow::Result;
use candle_core::Device;

/// The arithmetic of the matrix products. Weights, optimizer state and gate math stay f32.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Full f32 products
    #[default]
    F32,
    /// TensorFloat-32 products on a GPU's tensor cores (10-bit mantissa inputs, f32 sums)
    Tf32,
    /// bf16 products with f32 sums on a CPU with AVX512-BF16 (AMX tiles where present)
    Bf16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// Makes this process's products on `device` use this precision; refuses one the device
    /// does not have.
    pub fn apply(self, device: &Device) -> Result<()> {
        match (self, device) {
            (Precision::F32, _) => {}
            (Precision::Tf32, Device::Cpu) => {
                anyhow::bail!("--precision tf32 needs a GPU (--device cuda); the CPU computes in f32")
            }
            (Precision::Tf32, _) => {}
            (Precision::Bf16, Device::Cpu) => crate::kernels::cpu::bf16::require()?,
            (Precision::Bf16, _) => {
                anyhow::bail!("--precision bf16 is not built for the GPU yet; use --precision tf32 there")
            }
        }
        crate::kernels::cpu::bf16::set_recurrent(self == Precision::Bf16);
        #[cfg(feature = "cuda")]
        crate::kernels::cuda::set_tf32(self == Precision::Tf32);
        Ok(())
    }
}

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
        _ => eprintln!("device: {}", name(&device)),
    }
    Ok(device)
}

/// "cpu, 2 threads, avx512 kernel"
fn cpu_summary() -> String {
    format!("cpu, {} threads, {} kernel", rayon::current_num_threads(), crate::kernels::cpu::active())
}

/// The device as a person would name it: a GPU by its driver's name ("cuda:0 NVIDIA H200"),
/// else "cpu".
pub fn name(device: &Device) -> String {
    #[cfg(feature = "cuda")]
    if let Ok(d) = device.as_cuda_device() {
        let context = d.cuda_stream().context().clone();
        return match context.name() {
            Ok(name) => format!("cuda:{} {name}", context.ordinal()),
            Err(e) => format!("cuda:{} (the driver did not give its name: {e})", context.ordinal()),
        };
    }
    format!("{:?}", device.location()).to_lowercase()
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

/// Runs `work` where the device wants it. CPU work goes to a worker of the thread pool, so that
/// its many short parallel regions are entered from inside the pool instead of each waking the
/// pool from outside (a futex round trip per region, which at small sizes costs more than the
/// region's work). GPU work stays on this thread: candle's CUDA stream is the calling thread's
/// own, and all of a model's work must go through one stream, in order.
pub(crate) fn on_compute_thread<R: Send>(
    device: &Device,
    work: impl FnOnce() -> anyhow::Result<R> + Send,
) -> anyhow::Result<R> {
    match device {
        Device::Cpu => rayon::scope(|_| work()),
        _ => work(),
    }
}
