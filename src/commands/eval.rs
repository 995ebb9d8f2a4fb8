//! `charrnn eval` (how well a model predicts a text) and `charrnn info` (what a checkpoint is).

use anyhow::Result;
use charrnn_core::data::cache::{self, CacheOptions};
use charrnn_core::data::sources::Sources;
use charrnn_core::model::Config;
use charrnn_core::{budget, checkpoint, info, score, Kernel};

use super::{compute, emit, say};
use crate::cli::{EvalArgs, InfoArgs};

pub(super) fn run(a: EvalArgs, kernel: Kernel) -> Result<()> {
    let compute = compute(a.device.choice, kernel, a.precision)?;
    let path = checkpoint::resolve(&a.checkpoint)?;
    let ckpt = checkpoint::load(&path, &compute)?;
    check_budget(&ckpt.model.config, a.batch_size, a.seq_len)?;
    let sources = Sources(a.data.clone());
    let options = CacheOptions {
        dir: a.cache.dir(),
        separator: a.doc_separator.clone(),
        skip_invalid: a.skip_invalid,
        base: None,
    };
    let corpus = cache::prepare(&sources, &options, &mut say)?;
    let score = score::score_corpus(&ckpt.model, &ckpt.vocab, &corpus, a.seq_len, a.batch_size)?;
    match a.json {
        true => emit(&format!("{}\n", serde_json::to_string_pretty(&score)?)),
        false => emit(&format!("{}\n", score.describe(&path, &sources))),
    }
}

/// Refuses a scoring batch whose memory the machine cannot give.
pub fn check_budget(config: &Config, batch_size: usize, seq_len: usize) -> Result<()> {
    budget::check(
        "scoring",
        budget::training_bytes(config, batch_size, seq_len),
        &format!("--batch-size {batch_size} --seq-len {seq_len}"),
    )
}

pub(super) fn info(a: InfoArgs) -> Result<()> {
    let path = checkpoint::resolve(&a.checkpoint)?;
    let report = info::info(&path, &mut say)?;
    match a.json {
        true => emit(&format!("{}\n", serde_json::to_string_pretty(&report)?)),
        false => emit(&info::describe(&report)),
    }
}
