//! charrnn: character-level recurrent language models — train on any UTF-8 text, sample.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub(crate) mod atomic;
pub(crate) mod bench;
pub(crate) mod blas;
pub(crate) mod budget;
pub mod cells;
pub mod checkpoint;
pub(crate) mod checks;
pub mod cli;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod data;
pub(crate) mod device;
pub mod download;
pub mod eval;
pub(crate) mod files;
pub(crate) mod float;
pub(crate) mod head;
pub mod kernel;
pub(crate) mod metrics;
pub mod model;
pub mod optim;
pub mod presets;
pub mod rnn;
pub mod sample;
pub mod settings;
pub mod train;
pub mod vocab;
