//! One file per command: each takes its parsed arguments and does the job, through the
//! library's modules. `main` calls [`run`].

pub(crate) mod bench;
mod download;
mod eval;
mod generate;
mod serve;
mod train;

use std::io::Write;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::kernels::cpu as kernel;

/// Runs the command the user asked for.
pub fn run(cli: Cli) -> Result<()> {
    // A bad CHARRNN_KERNEL is a clear error before any work starts.
    kernel::init()?;
    match cli.command {
        Command::Download(a) => download::run(a),
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Info(a) => eval::info(a),
        Command::Generate(a) => generate::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::command(a),
    }
}

/// Writes a command's result to stdout, returning the error (a closed pipe included, which
/// `main` treats as a reader that has seen enough) instead of panicking as `println!` does.
fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
