//! charrnn: character-level recurrent language models — train on any UTF-8 text, sample.

pub mod atomic;
pub mod bench;
pub mod blas;
pub mod budget;
pub mod cells;
pub mod checkpoint;
pub mod checks;
pub mod cli;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod device;
pub mod download;
pub mod eval;
pub mod files;
pub mod float;
pub mod head;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod presets;
pub mod rnn;
pub mod sample;
pub mod train;
pub mod vocab;
