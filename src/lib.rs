//! The `charrnn` command line on top of `charrnn-core`: the arguments (`cli`), one file per
//! command (`commands`), the HTTP server (`serve`), corpus downloads (`download`), and what a
//! command shows on stderr (`report`) and does on Ctrl-C (`signals`). The core has no command
//! line, prints nothing and handles no signals; this crate does all three.

pub mod cli;
pub mod commands;
pub mod download;
mod report;
pub mod serve;
mod signals;
