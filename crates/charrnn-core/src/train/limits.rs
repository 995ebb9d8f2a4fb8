//! What ends a run before its last epoch, and the samples it shows along the way. These apply
//! to one invocation of `train` and are not saved with the run: a resumed run takes its own.

use std::time::{Duration, Instant};

/// Early ends and samples for this invocation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunLimits {
    /// End after this many optimisation steps of this invocation.
    pub max_steps: Option<u64>,
    /// End at the first step boundary after this long.
    pub max_time: Option<Duration>,
    /// End after this many epochs without a new best validation loss.
    pub patience: Option<usize>,
    /// Print and keep a sample every this many epochs.
    pub sample_every: Option<usize>,
    /// The samples' start, length and temperature.
    pub sample: SampleSpec,
}

/// The sample `--sample-every` writes.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleSpec {
    /// Text it starts from (empty: a newline).
    pub start: String,
    /// Characters it draws.
    pub length: usize,
    /// Its softmax temperature.
    pub temperature: f32,
}

impl Default for SampleSpec {
    fn default() -> Self {
        SampleSpec { start: String::new(), length: 200, temperature: 0.8 }
    }
}

/// A limit of one invocation that ends it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// `max_steps` steps were taken.
    Steps(u64),
    /// `max_time` has passed.
    Time(Duration),
}

impl std::fmt::Display for Limit {
    /// The flag that set it, with its value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Steps(n) => write!(f, "--max-steps {n}"),
            Limit::Time(t) => write!(f, "--max-minutes {}", t.as_secs_f64() / 60.0),
        }
    }
}

impl RunLimits {
    /// The limit reached after `steps` steps of this invocation begun at `started`.
    pub fn reached(&self, steps: u64, started: Instant) -> Option<Limit> {
        if let Some(n) = self.max_steps.filter(|&n| steps >= n) {
            return Some(Limit::Steps(n));
        }
        self.max_time.filter(|&t| started.elapsed() >= t).map(Limit::Time)
    }
}
