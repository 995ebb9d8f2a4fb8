//! charrnn: character-level recurrent language models — train on any UTF-8 text, sample.
//!
//! The layers, each depending only on those above it in this list (see ARCHITECTURE.md):
//! `kernels` (CPU products and gate passes, CUDA), `ops` (candle operations with their own
//! backward: the cells' recurrent sweep, the output layer), `model` (the network, sampling),
//! `optim`, `checkpoint`, `train`, `eval`, and `commands` behind the `cli`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub(crate) mod atomic;
pub(crate) mod budget;
pub mod checkpoint;
pub(crate) mod checks;
pub mod cli;
pub mod commands;
pub mod data;
pub mod device;
pub mod eval;
pub(crate) mod files;
pub mod kernels;
pub(crate) mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod serve;
pub mod train;
