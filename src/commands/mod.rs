//! One file per command: each takes its parsed arguments and does the job through the core
//! library, turning its results and events into the command's output. `main` calls [`run`].

mod bench;
mod download;
pub mod eval;
mod export;
pub mod generate;
mod serve;
pub mod train;

use std::io::Write;

use anyhow::Result;
use charrnn_core::compute::{self, Compute, Precision};
use charrnn_core::{Device, Kernel};

use crate::cli::{Cli, Command, DeviceChoice};

/// Runs the command the user asked for.
pub fn run(cli: Cli) -> Result<()> {
    // The CPU kernel: CHARRNN_KERNEL's, else the fastest; a bad one is a clear error before
    // any work starts.
    let kernel = Kernel::from_env()?;
    match cli.command {
        Command::Download(a) => download::run(a),
        Command::Train(a) => train::run(*a, kernel),
        Command::Eval(a) => eval::run(a, kernel),
        Command::Info(a) => eval::info(a),
        Command::Generate(a) => generate::run(a, kernel),
        Command::Serve(a) => serve::run(a, kernel),
        Command::Bench(a) => bench::run(a, kernel),
        Command::Export(a) => export::run(a, kernel),
    }
}

/// The device the user chose with the CPU `kernel` and `precision`, checked against the
/// machine; says on stderr what was picked.
fn compute(choice: DeviceChoice, kernel: Kernel, precision: Precision) -> Result<Compute> {
    let (compute, line) = described_compute(choice, kernel, precision)?;
    eprintln!("{line}");
    Ok(compute)
}

/// As [`compute`], returning the line that says what was picked instead of printing it.
fn described_compute(
    choice: DeviceChoice,
    kernel: Kernel,
    precision: Precision,
) -> Result<(Compute, String)> {
    let device = match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda => compute::cuda_device()?,
        DeviceChoice::Auto if cfg!(feature = "cuda") => match compute::cuda_device() {
            Ok(d) => d,
            Err(e) => {
                let cpu = Compute::new(Device::Cpu, kernel, precision)?;
                let line = format!("device: {} ({e:#})", cpu.describe());
                return Ok((cpu, line));
            }
        },
        DeviceChoice::Auto => Device::Cpu,
    };
    let compute = Compute::new(device, kernel, precision)?;
    let line = format!("device: {}", compute.describe());
    Ok((compute, line))
}

/// Prints a notice of the library's on stderr.
fn say(notice: charrnn_core::notice::Notice) {
    eprintln!("{notice}");
}

/// Writes a command's result to stdout, returning the error (a closed pipe included, which
/// `main` treats as a reader that has seen enough) instead of panicking as `println!` does.
fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
