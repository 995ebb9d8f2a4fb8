//! `charrnn generate`: sample text from a checkpoint to stdout or a file.

use std::io::Write;

use anyhow::{Context, Result};

use crate::cli::GenerateArgs;
use crate::model::job::{Job, SampleOptions};
use crate::model::sample::{self, Engine};
use crate::{atomic, budget, checkpoint, device};

pub(super) fn run(a: GenerateArgs) -> Result<()> {
    let device = device::select(a.device.choice)?;
    let path = checkpoint::resolve(&a.checkpoint)?;
    let ckpt = checkpoint::load(&path, &device)?;
    eprintln!("checkpoint {} (epoch {})", path.display(), ckpt.provenance.epoch);
    let start = match &a.start_file {
        Some(f) => crate::files::read_to_string(f)
            .with_context(|| format!("cannot read --start-file {} (it must be UTF-8 text)", f.display()))?,
        None => a.start.clone(),
    };
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
    // Before anything is sized by the number of samples.
    budget::check(
        "sampling",
        budget::sampling_bytes(&ckpt.model.config, a.num_samples),
        &format!("--num-samples {}", a.num_samples),
    )?;
    let flag = if a.start_file.is_some() { "--start-file" } else { "--start" };
    let mut job = Job::new(&ckpt.vocab, &options).context(flag)?;
    a.precision.apply(&device)?;
    let mut engine = Engine::with_precision(&ckpt.model, a.num_samples, a.precision)?;
    match &a.output {
        Some(file) => {
            let mut text = Vec::new();
            sample::generate(&mut engine, &ckpt.vocab, &mut job, &mut text)?;
            atomic::write(file, &text)?;
            eprintln!("wrote {}", file.display());
        }
        None => {
            let mut out = std::io::stdout().lock();
            sample::generate(&mut engine, &ckpt.vocab, &mut job, &mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}
