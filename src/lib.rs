//! The `charrnn` command line on top of `charrnn-core`: the arguments (`cli`), one file per
//! command (`commands`), the HTTP server (`serve`), corpus downloads (`download`), training on
//! several processes under MPI (`cluster`), and what a command shows on stderr (`report`) and
//! does on Ctrl-C (`signals`). The core has no command
//! line, prints nothing and handles no signals; this crate does all three.

pub mod cli;
mod cluster;
pub mod commands;
pub mod download;
pub mod memory;
pub mod onnx;
pub mod report;
pub mod serve;
mod signals;

use std::ffi::OsString;

use charrnn_core::train::Interrupted;
use clap::Parser;

/// Runs the `charrnn` command line `args` (the program's name first) and returns its exit
/// status: 0, 1 with `error: …` on stderr, 2 for arguments clap refuses, 130 for a run stopped
/// by Ctrl-C. The binary's `main`, and the Python wheel's `charrnn` command.
pub fn run_command_line(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> u8 {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(2);
        }
    };
    match commands::run(cli) {
        Ok(()) => 0,
        Err(e) if e.is::<Interrupted>() => 130,
        Err(e) if is_broken_pipe(&e) => 0, // e.g. `charrnn generate | head`
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
