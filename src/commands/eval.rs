//! `charrnn eval` (how well a model predicts a text) and `charrnn info` (what a checkpoint is).

use anyhow::Result;

use super::emit;
use crate::cli::{EvalArgs, InfoArgs};
use crate::{budget, checkpoint, device, eval};

pub(super) fn run(a: EvalArgs) -> Result<()> {
    let device = device::select(a.device.choice)?;
    let path = checkpoint::resolve(&a.checkpoint)?;
    let ckpt = checkpoint::load(&path, &device)?;
    budget::check(
        "scoring",
        budget::training_bytes(&ckpt.model.config, a.batch_size, a.seq_len),
        &format!("--batch-size {} --seq-len {}", a.batch_size, a.seq_len),
    )?;
    let text = crate::data::read_corpus(&a.data)?;
    let score = eval::score(&ckpt.model, &ckpt.vocab, &text, a.seq_len, a.batch_size)?;
    match a.json {
        true => emit(&format!("{}\n", serde_json::to_string_pretty(&score)?)),
        false => emit(&format!("{}\n", score.describe(&path, &a.data))),
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
