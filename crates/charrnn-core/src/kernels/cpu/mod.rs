//! Which instruction set the CPU hot loops run on.
//!
//! The recurrent products, the gate passes and the sampling dot products each exist compiled
//! for AVX-512, for AVX2+FMA and for the target's baseline (plus NEON on aarch64, where it is
//! always present). The kernel is part of a [`crate::compute::Compute`], chosen by the caller:
//! by default the widest set this CPU has; the binary takes `CHARRNN_KERNEL` (or `bench
//! --kernel`) to pick another, so every path can be tested and timed on one machine.

pub(crate) mod amx;
pub(crate) mod bf16;
pub(crate) mod blas;
pub(crate) mod float;
pub(crate) mod int8;
pub(crate) mod team;

use anyhow::{bail, Result};

pub use int8::Int8Kernel;

/// The variable that overrides the choice: `avx512`, `avx2`, `neon` or `portable`.
pub const ENV: &str = "CHARRNN_KERNEL";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// An instruction set the CPU kernels are compiled for.
pub enum Kernel {
    /// x86-64 with AVX-512F (and VL for the 256-bit forms): 16-lane FMA.
    Avx512,
    /// x86-64 with AVX2 and FMA: 8-lane FMA.
    Avx2,
    /// aarch64 Advanced SIMD: 4-lane FMA (every aarch64 CPU has it).
    Neon,
    /// Plain Rust compiled for the target's baseline, left to the compiler to vectorise.
    Portable,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 4] = [Kernel::Avx512, Kernel::Avx2, Kernel::Neon, Kernel::Portable];

    /// Its name, as `CHARRNN_KERNEL` and `bench --kernel` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Neon => "neon",
            Kernel::Portable => "portable",
        }
    }

    /// The CPU features it needs, as they are spelled in `/proc/cpuinfo` and by
    /// `is_x86_feature_detected!`.
    fn needs(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512f, avx512vl and fma",
            Kernel::Avx2 => "avx2 and fma",
            Kernel::Neon => "an aarch64 CPU",
            Kernel::Portable => "nothing",
        }
    }

    /// The kernel of this name; the error lists the names.
    pub fn parse(s: &str) -> Result<Kernel> {
        match Kernel::ALL.into_iter().find(|k| k.name() == s) {
            Some(k) => Ok(k),
            None => bail!("unknown kernel {s:?}: expected one of avx512, avx2, neon, portable"),
        }
    }

    /// Whether this CPU can run it.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => true,
            Kernel::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every kernel this CPU can run, fastest first.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.supported()).collect()
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Kernel {
        Kernel::available()[0]
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the instruction set a body is compiled for offers, as constants the body branches on
/// (each branch folds away when it is compiled).
pub trait Isa {
    /// Fused multiply-add instructions: `mul_add` is one instruction, not a library call.
    const FMA: bool;
    /// A rounding instruction: `floor` is one instruction, not a library call.
    const ROUNDS: bool;
}

/// AVX2+FMA and AVX-512 (both imply FMA and SSE4.1's rounding).
pub struct Wide;
impl Isa for Wide {
    const FMA: bool = true;
    const ROUNDS: bool = true;
}

/// The target's baseline: x86-64's has neither (unless the crate is built for a newer CPU),
/// aarch64's has both.
pub struct Baseline;
impl Isa for Baseline {
    const FMA: bool = cfg!(target_arch = "aarch64") || cfg!(target_feature = "fma");
    const ROUNDS: bool = cfg!(target_arch = "aarch64") || cfg!(target_feature = "sse4.1");
}

impl Kernel {
    /// Refuses a kernel whose CPU features this CPU lacks, saying which it can run.
    pub fn require(self) -> Result<()> {
        if !self.supported() {
            bail!(
                "the {self} kernel needs {}, which this CPU does not have; this CPU can run: {}",
                self.needs(),
                Kernel::available().iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            );
        }
        Ok(())
    }

    /// The kernel [`ENV`] names (checked against this CPU), else the fastest. The library never
    /// reads the variable by itself: this is how the binary, and the tests that CI runs once
    /// per kernel, choose.
    pub fn from_env() -> Result<Kernel> {
        let kernel = match std::env::var(ENV) {
            Ok(name) if !name.is_empty() => {
                Kernel::parse(&name).map_err(|e| anyhow::anyhow!("{ENV}: {e}"))?
            }
            _ => Kernel::best(),
        };
        kernel.require().map_err(|e| anyhow::anyhow!("{ENV}={kernel}: {e}"))?;
        Ok(kernel)
    }
}

/// Defines `fn name<T: Float>(kernel: Kernel, …)` from a body written as
/// `fn name<T: Float, I: Isa>(…)`: the body is compiled once per instruction set (with `I`
/// telling it what that set offers) and `kernel`'s runs, so that element-wise loops are
/// vectorised as wide as the chosen kernel allows, and no wider: `portable` really runs
/// baseline code. Callers take the kernel from their [`crate::compute::CpuMath`] and hand it
/// down.
macro_rules! per_kernel {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident<T: Float, I: Isa>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)] // the kernel comes on top of the body's own
        $vis fn $name<T: Float>(kernel: $crate::kernels::cpu::Kernel, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            // A body may not need to know what its instruction set offers.
            #[allow(clippy::too_many_arguments, clippy::extra_unused_type_parameters)]
            fn body<T: Float, I: $crate::kernels::cpu::Isa>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx512<T: Float>($($arg: $ty),*) $(-> $ret)? { body::<T, $crate::kernels::cpu::Wide>($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx2<T: Float>($($arg: $ty),*) $(-> $ret)? { body::<T, $crate::kernels::cpu::Wide>($($arg),*) }
            debug_assert!(kernel.supported());
            match kernel {
                // SAFETY: a kernel reaches a pass only from a `Compute`, which refuses one this
                // CPU lacks the features of (`Kernel::require`).
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::cpu::Kernel::Avx512 => unsafe { avx512::<T>($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                $crate::kernels::cpu::Kernel::Avx2 => unsafe { avx2::<T>($($arg),*) },
                // NEON (and FMA) are part of the aarch64 baseline, so the plain body uses them.
                _ => body::<T, $crate::kernels::cpu::Baseline>($($arg),*),
            }
        }
    };
}
pub(crate) use per_kernel;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for k in Kernel::ALL {
            assert_eq!(Kernel::parse(k.name()).unwrap(), k);
        }
        let e = Kernel::parse("sse9").unwrap_err().to_string();
        assert!(e.contains("sse9") && e.contains("avx2"), "{e}");
    }

    #[test]
    fn the_portable_kernel_runs_everywhere_and_is_listed_last() {
        let all = Kernel::available();
        assert_eq!(all.last(), Some(&Kernel::Portable));
        assert_eq!(Kernel::best(), all[0]);
        #[cfg(target_arch = "x86_64")]
        assert!(!Kernel::Neon.supported());
        #[cfg(target_arch = "aarch64")]
        assert!(!Kernel::Avx2.supported() && Kernel::Neon.supported());
    }

    #[test]
    fn a_kernel_the_cpu_lacks_is_refused_with_what_it_needs() {
        #[cfg(target_arch = "x86_64")]
        let missing = Kernel::Neon;
        #[cfg(not(target_arch = "x86_64"))]
        let missing = Kernel::Avx512;
        let e = missing.require().unwrap_err().to_string();
        assert!(e.contains(missing.name()) && e.contains("this CPU can run"), "{e}");
    }
}
