//! Where and how the arithmetic runs: the device, the CPU kernel and the precision of the
//! products, chosen once by the caller as one [`Compute`] value and carried by every model, so
//! that models with different choices live side by side in one process.

use anyhow::{bail, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::choice::Choice;
use crate::kernels::cpu::{bf16, Int8Kernel, Kernel};

/// The arithmetic of the matrix products. Weights, optimizer state and gate math stay f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Full f32 products.
    #[default]
    F32,
    /// TensorFloat-32 products on a GPU's tensor cores (10-bit mantissa inputs, f32 sums).
    Tf32,
    /// bf16 products with f32 sums on a CPU with AVX512-BF16 (AMX tiles where present).
    Bf16,
    /// Sampling only, on a CPU: the weights of every sampling product quantized to int8 (a
    /// scale per output row), activations per step and row, exact integer sums.
    Int8,
}

impl Choice for Precision {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (Precision::F32, "f32", "Full f32 products"),
        (
            Precision::Tf32,
            "tf32",
            "TensorFloat-32 products on a GPU's tensor cores (10-bit mantissa inputs, f32 sums)",
        ),
        (
            Precision::Bf16,
            "bf16",
            "bf16 products with f32 sums on a CPU with AVX512-BF16 (AMX tiles where present)",
        ),
        (
            Precision::Int8,
            "int8",
            "Sampling on a CPU with int8 weights and activations, exact integer sums (generate, serve, eval, bench)",
        ),
    ];
}

impl Precision {
    /// Whether this is plain f32 (the default, left out of saved settings).
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// Refuses a precision `device` does not have, saying what to use instead.
    pub fn check(self, device: &Device) -> Result<()> {
        match (self, device) {
            (Precision::F32, _) => Ok(()),
            (Precision::Tf32, Device::Cpu) => {
                bail!("--precision tf32 needs a GPU (--device cuda); the CPU computes in f32")
            }
            (Precision::Tf32, _) => Ok(()),
            (Precision::Bf16, Device::Cpu) => bf16::require(),
            (Precision::Bf16, _) => {
                bail!("--precision bf16 is not built for the GPU yet; use --precision tf32 there")
            }
            (Precision::Int8, Device::Cpu) => Ok(()),
            (Precision::Int8, _) => {
                bail!("--precision int8 samples on the CPU (--device cpu); on a GPU use f32 or tf32")
            }
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The device, the CPU kernel (the instruction set of the recurrent products, gate passes and
/// sampling) and the precision of the products: checked against the machine when it is made.
#[derive(Clone, Debug)]
pub struct Compute {
    device: Device,
    kernel: Kernel,
    precision: Precision,
}

/// What the CPU kernels need to know of a [`Compute`]: the instruction set and whether the
/// products are bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMath {
    /// The instruction set every pass and product runs on.
    pub kernel: Kernel,
    /// Products in bf16 with f32 sums (else f32).
    pub bf16: bool,
}

impl CpuMath {
    /// f32 products on `kernel`.
    pub fn f32(kernel: Kernel) -> Self {
        CpuMath { kernel, bf16: false }
    }
}

impl Compute {
    /// Runs on `device` with `kernel` for CPU work and `precision` for the products; refused
    /// where the CPU lacks the kernel's instructions or the device the precision.
    pub fn new(device: Device, kernel: Kernel, precision: Precision) -> Result<Self> {
        kernel.require()?;
        precision.check(&device)?;
        Ok(Compute { device, kernel, precision })
    }

    /// The CPU with its fastest kernel, in f32.
    pub fn cpu() -> Self {
        Compute { device: Device::Cpu, kernel: Kernel::best(), precision: Precision::F32 }
    }

    /// The same device and kernel in another precision (checked as [`Compute::new`] does).
    pub fn with_precision(&self, precision: Precision) -> Result<Self> {
        Compute::new(self.device.clone(), self.kernel, precision)
    }

    /// The same device and precision on another CPU kernel (checked as [`Compute::new`] does).
    pub fn with_kernel(&self, kernel: Kernel) -> Result<Self> {
        Compute::new(self.device.clone(), kernel, self.precision)
    }

    /// Where the tensors live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The CPU kernel.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The products' precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// What the CPU kernels need.
    pub fn cpu_math(&self) -> CpuMath {
        CpuMath { kernel: self.kernel, bf16: self.precision == Precision::Bf16 }
    }

    /// Whether GPU products may use TF32 tensor cores.
    pub fn tf32(&self) -> bool {
        self.precision == Precision::Tf32
    }

    /// The int8 products' instructions, where the precision is int8.
    pub fn int8_kernel(&self) -> Option<Int8Kernel> {
        (self.precision == Precision::Int8).then(|| Int8Kernel::for_kernel(self.kernel))
    }

    /// "cpu, 2 threads, avx512 kernel" (", int8 products on avx512-vnni" in int8), or the GPU's
    /// name ("cuda:0 NVIDIA H200").
    pub fn describe(&self) -> String {
        match self.device {
            Device::Cpu => {
                let threads = rayon::current_num_threads();
                let plural = if threads == 1 { "" } else { "s" };
                let int8 = self.int8_kernel().map(|k| format!(", int8 products on {k}")).unwrap_or_default();
                format!("cpu, {threads} thread{plural}, {} kernel{int8}", self.kernel)
            }
            _ => device_name(&self.device),
        }
    }
}

/// The device as a person would name it: a GPU by its driver's name ("cuda:0 NVIDIA H200"),
/// else "cpu".
pub fn device_name(device: &Device) -> String {
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

/// The first CUDA GPU, or why there is none (a build without CUDA says how to get one).
pub fn cuda_device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    return Device::new_cuda(0)
        .map_err(|e| anyhow::anyhow!("no usable CUDA GPU (driver or device missing?): {e}"));
    #[cfg(not(feature = "cuda"))]
    bail!("this charrnn was built without CUDA; rebuild with --features cuda (see scripts/build-cuda.sh)")
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
