//! The arithmetic at the bottom: CPU matrix products and per-instruction-set dispatch, and
//! the CUDA kernels with their launches.

pub mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
