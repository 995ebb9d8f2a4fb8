//! `charrnn eval` (how well a model predicts a text) and `charrnn info` (what a checkpoint is).

use anyhow::Result;

use super::emit;
use crate::cli::{EvalArgs, InfoArgs};
use crate::data::cache::{self, CacheOptions};
use crate::data::sources::Sources;
use crate::{budget, checkpoint, device, eval};

pub(super) fn run(a: EvalArgs) -> Result<()> {
    let device = device::select(a.device.choice)?;
    a.precision.apply(&device)?;
    let path = checkpoint::resolve(&a.checkpoint)?;
    let ckpt = checkpoint::load(&path, &device)?;
    budget::check(
        "scoring",
        budget::training_bytes(&ckpt.model.config, a.batch_size, a.seq_len),
        &format!("--batch-size {} --seq-len {}", a.batch_size, a.seq_len),
    )?;
    let sources = Sources(a.data.clone());
    let options = CacheOptions {
        dir: a.cache.dir(),
        separator: a.doc_separator.clone(),
        skip_invalid: a.skip_invalid,
        base: None,
    };
    let corpus = cache::prepare(&sources, &options)?;
    let score = eval::score_corpus(&ckpt.model, &ckpt.vocab, &corpus, a.seq_len, a.batch_size)?;
    match a.json {
        true => emit(&format!("{}\n", serde_json::to_string_pretty(&score)?)),
        false => emit(&format!("{}\n", score.describe(&path, &sources))),
    }
}

pub(super) fn info(a: InfoArgs) -> Result<()> {
    let path = checkpoint::resolve(&a.checkpoint)?;
    let report = eval::info(&path)?;
    match a.json {
        true => emit(&format!("{}\n", serde_json::to_string_pretty(&report)?)),
        false => emit(&eval::describe_info(&report)),
    }
}
