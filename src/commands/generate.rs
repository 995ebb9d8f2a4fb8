//! `charrnn generate`: sample text from a checkpoint to stdout.

use std::io::Write;

use anyhow::{Context, Result};
use rand::{rngs::StdRng, SeedableRng};

use crate::cli::GenerateArgs;
use crate::model::sample::{self, Engine, Picker};
use crate::{budget, checkpoint, device};

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
    budget::check(
        "sampling",
        budget::sampling_bytes(&ckpt.model.config, a.num_samples),
        &format!("--num-samples {}", a.num_samples),
    )?;
    let mut sampler = Engine::new(&ckpt.model, a.num_samples)?;
    let mut picker = Picker::new(a.temperature, a.top_k, a.top_p);
    let mut rng = StdRng::seed_from_u64(a.seed.unwrap_or_else(rand::random));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    sample::generate(&mut sampler, &ckpt.vocab, &start, a.length, &mut picker, &mut rng, &mut out)?;
    out.flush()?;
    Ok(())
}
