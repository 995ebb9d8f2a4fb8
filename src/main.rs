use std::process::ExitCode;

use charrnn::cli::Cli;
use charrnn::commands;
use charrnn_core::train::Interrupted;
use clap::Parser;

fn main() -> ExitCode {
    match commands::run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Interrupted>() => ExitCode::from(130),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS, // e.g. `charrnn generate | head`
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
