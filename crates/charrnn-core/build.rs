//! Builds with the `cuda` feature compile the GPU kernels (src/kernels/cuda/kernels.cu) to PTX, which
//! the binary embeds; other builds need nothing from CUDA.

use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-changed=src/kernels/cuda/kernels.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.ptx");
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let arch = format!("-arch=compute_{}", env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into()));
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &arch, "-o"])
        .arg(&out)
        .arg("src/kernels/cuda/kernels.cu")
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {nvcc} ({e}): the cuda feature needs CUDA's nvcc; see scripts/build-cuda.sh")
        });
    assert!(status.success(), "nvcc failed on src/kernels/cuda/kernels.cu");
}
