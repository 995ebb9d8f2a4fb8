//! charrnn's core: character-level recurrent language models — data, the network and its
//! kernels, checkpoints, the optimizer, training, sampling and scoring — as a library with no
//! command line, no printing, no signal handlers and no process-wide settings. Where and how
//! the arithmetic runs is a [`compute::Compute`] value the caller passes; what a long job has
//! to say comes back as values ([`notice::Notice`], [`train::Event`]).
//!
//! The layers, each depending only on those above it in this list (see ARCHITECTURE.md):
//! `kernels` (CPU products and gate passes, CUDA), `ops` (candle operations with their own
//! backward: the cells' recurrent sweep, the output layer, Adam's updates), `model` (the
//! network), then `sample`, `score`, `optim`, `checkpoint` and `data` beside one another, then
//! `train`, `info` and `bench`. Small shared pieces sit at the bottom: `compute`, `choice`,
//! `notice`, `collective` (ranks training together), `atomic` and `files` (safe writes and reads), `checks` and `budget` (value rules,
//! memory estimates), `system`, `metrics`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod atomic;
pub mod bench;
pub mod budget;
pub mod checkpoint;
pub mod checks;
pub mod choice;
pub mod collective;
pub mod compute;
pub mod data;
pub mod files;
pub mod info;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod notice;
pub mod ops;
pub mod optim;
pub mod sample;
pub mod score;
pub mod system;
pub mod train;

pub use candle_core::Device;
pub use choice::Choice;
pub use compute::{Compute, Precision};
pub use kernels::cpu::Kernel;
