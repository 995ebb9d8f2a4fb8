//! `charrnn generate`: sample text from a checkpoint to stdout or a file.

use std::io::Write;

use anyhow::{Context, Result};
use charrnn_core::checkpoint::Checkpoint;
use charrnn_core::sample::{self, Engine, Job, SampleOptions};
use charrnn_core::{atomic, budget, checkpoint, files, Kernel};

use super::compute;
use crate::cli::GenerateArgs;

pub(super) fn run(a: GenerateArgs, kernel: Kernel) -> Result<()> {
    let compute = compute(a.device.choice, kernel, a.precision)?;
    let path = checkpoint::resolve(&a.checkpoint)?;
    let ckpt = checkpoint::load(&path, &compute)?;
    eprintln!("checkpoint {} (epoch {})", path.display(), ckpt.provenance.epoch);
    let start = match &a.start_file {
        Some(f) => files::read_to_string(f)
            .with_context(|| format!("cannot read --start-file {} (it must be UTF-8 text)", f.display()))?,
        None => a.start.clone(),
    };
    let job = job(&a, &ckpt, start)?;
    let mut engine = Engine::new(&ckpt.model, &ckpt.vocab, a.num_samples)?;
    match &a.output {
        Some(file) => {
            let mut text = Vec::new();
            sample::generate(&mut engine, job, &mut text)?;
            atomic::write(file, &text)?;
            eprintln!("wrote {}", file.display());
        }
        None => {
            let mut out = std::io::stdout().lock();
            sample::generate(&mut engine, job, &mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// The sampling job `generate`'s arguments ask for, continuing `start`, checked against the
/// checkpoint's vocabulary and, before anything is sized by the number of samples, the memory
/// estimate.
pub fn job(a: &GenerateArgs, ckpt: &Checkpoint, start: String) -> Result<Job> {
    let options = SampleOptions {
        start,
        length: a.length,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed.unwrap_or_else(rand::random),
        num_samples: a.num_samples,
        stop: a.stop.clone(),
        include_stop: a.include_stop,
    };
    budget::check(
        "sampling",
        budget::sampling_bytes(&ckpt.model.config, a.num_samples),
        &format!("--num-samples {}", a.num_samples),
    )?;
    let flag = if a.start_file.is_some() { "--start-file" } else { "--start" };
    Job::new(&ckpt.vocab, &options).context(flag)
}
