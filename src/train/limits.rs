//! What ends a run before its last epoch, and the samples it shows along the way. These apply
//! to one invocation of `train` and are not saved with the run: a resumed run takes its own.

use std::time::{Duration, Instant};

/// Early ends and samples for this invocation.
#[derive(Clone, Debug, Default)]
pub struct RunLimits {
    /// End after this many optimisation steps of this invocation.
    pub max_steps: Option<u64>,
    /// End at the first step boundary after this long.
    pub max_time: Option<Duration>,
    /// End after this many epochs without a new best validation loss.
    pub patience: Option<usize>,
    /// Print and keep a sample every this many epochs.
    pub sample_every: Option<usize>,
    pub sample: SampleSpec,
}

/// The sample `--sample-every` writes.
#[derive(Clone, Debug)]
pub struct SampleSpec {
    pub start: String,
    pub length: usize,
    pub temperature: f32,
}

impl Default for SampleSpec {
    fn default() -> Self {
        SampleSpec { start: String::new(), length: 200, temperature: 0.8 }
    }
}

impl RunLimits {
    /// The limit reached after `steps` steps of this invocation begun at `started`, as the
    /// flag that set it.
    pub fn reached(&self, steps: u64, started: Instant) -> Option<String> {
        if let Some(n) = self.max_steps.filter(|&n| steps >= n) {
            return Some(format!("--max-steps {n}"));
        }
        let t = self.max_time.filter(|&t| started.elapsed() >= t)?;
        Some(format!("--max-minutes {}", t.as_secs_f64() / 60.0))
    }
}
