//! A training run's events as the command line shows them: the tutorial's log lines and the
//! run's own ([`lines`], which Python's `train` prints too), on stderr under a progress bar of
//! the batches left.

use std::path::{Path, PathBuf};

use charrnn_core::score::bits;
use charrnn_core::train::events::{EpochReport, Event, Observer, RunSummary, StopFlag};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The log and progress bar of one `train`.
pub struct TrainReport<'a> {
    dir: PathBuf,
    stop: StopFlag,
    progress: Option<ProgressBar>,
    /// Connects Ctrl-C but shows nothing (the ranks of a run but the first).
    quiet: bool,
    /// A line to add after each epoch's, given the epoch's seconds (the ranks' traffic).
    epoch_note: Option<EpochNote<'a>>,
}

type EpochNote<'a> = Box<dyn FnMut(f64) -> Option<String> + 'a>;

impl<'a> TrainReport<'a> {
    /// A report for a run whose files go to `dir`, connecting Ctrl-C to `stop` once the epochs
    /// begin; `quiet`, it shows nothing.
    pub fn new(dir: PathBuf, stop: StopFlag, quiet: bool) -> Self {
        TrainReport { dir, stop, progress: None, quiet, epoch_note: None }
    }

    /// After each epoch's lines, `note`'s, if it has one.
    pub fn with_epoch_note(mut self, note: impl FnMut(f64) -> Option<String> + 'a) -> Self {
        self.epoch_note = Some(Box::new(note));
        self
    }

    /// Prints a line above the progress bar.
    fn line(&self, text: &str) {
        match &self.progress {
            Some(bar) => bar.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    /// The run ended: the bar goes.
    pub fn finish(&mut self) {
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
    }

    /// The run failed or was stopped: the bar stays where it was.
    pub fn abandon(&mut self) {
        if let Some(bar) = self.progress.take() {
            bar.abandon();
        }
    }
}

impl Observer for TrainReport<'_> {
    fn event(&mut self, event: &Event) {
        if let Event::AlreadyTrained { .. } = event {
            self.finish();
        }
        if self.quiet {
            if let Event::Started(_) = event {
                // A rank asked to stop says nothing either: rank 0 speaks for the run.
                let _ = crate::signals::stop_training(&self.dir, &self.stop, true);
            }
            return;
        }
        for line in lines(event, &self.dir) {
            self.line(&line);
        }
        match event {
            Event::Started(s) => {
                if let Err(e) = crate::signals::stop_training(&self.dir, &self.stop, false) {
                    self.line(&format!("warning: {e:#}; Ctrl-C will end the run without saving"));
                }
                self.progress = Some(progress_bar(s.batches_left));
            }
            Event::EpochEnd(r) => {
                if let Some(line) = self.epoch_note.as_mut().and_then(|note| note(r.seconds)) {
                    self.line(&line);
                }
            }
            Event::Planned { batches_left, .. } => {
                if let Some(bar) = &self.progress {
                    bar.set_length(bar.position() + batches_left);
                }
            }
            Event::Step(r) => {
                if let Some(bar) = &self.progress {
                    bar.set_message(format!("loss {:.4}  {:.0} chars/s", r.loss, r.chars_per_s));
                    bar.inc(1);
                }
            }
            _ => {}
        }
    }
}

/// What the command line prints for `event` of a run writing to `dir`.
pub fn lines(event: &Event, dir: &Path) -> Vec<String> {
    let continue_with = || format!("continue with: charrnn train --resume {}", dir.display());
    match event {
        Event::Notice(n) => vec![n.to_string()],
        Event::FineTuning { path, epoch } => {
            vec![format!("starting from {} (epoch {epoch})", path.display())]
        }
        Event::Resuming { path, epoch, batch } => {
            vec![format!("resuming {} at epoch {epoch} batch {batch}", path.display())]
        }
        Event::Started(summary) => started(summary),
        Event::AlreadyTrained { epochs } => {
            vec![format!("already trained {epochs} epochs; pass a larger --epochs to continue")]
        }
        Event::Step(r) if r.logged => vec![format!("Epoch {} Batch {} Loss {:.4}", r.epoch, r.batch, r.loss)],
        Event::Step(_) | Event::NewBest { .. } => vec![],
        Event::EpochEnd(r) => epoch_end(r),
        Event::Saved { path } => vec![format!("saved {}", path.display())],
        Event::Sample { epoch, text } => {
            vec![format!("--- sample after epoch {epoch} ---\n{}", text.trim_end())]
        }
        Event::SampleFailed { epoch, error } => vec![format!("no sample after epoch {epoch}: {error}")],
        Event::LimitReached { limit, at_epoch_end: None } => vec![format!("reached {limit}")],
        Event::LimitReached { limit, at_epoch_end: Some(epoch) } => {
            vec![format!("reached {limit} at the end of epoch {epoch}"), continue_with()]
        }
        Event::Planned { epochs, asked, minutes, epoch_seconds, .. } => {
            let pace = format!("{epoch_seconds:.1} s per epoch, validation included");
            vec![match epochs < asked {
                true => format!(
                    "--fit-minutes {minutes}: {epochs} of the {asked} epochs fit at {pace}; the run and its learning-rate schedule end after epoch {epochs}"
                ),
                false => format!("--fit-minutes {minutes}: all {asked} epochs fit at {pace}"),
            }]
        }
        Event::EarlyStop { patience: p, best, best_path } => {
            let best = best.map_or("none".into(), |b| format!("{b:.4}"));
            vec![format!(
                "stopping early: no better validation loss for {p} epoch(s) (--patience {p}); the best, {best}, is in {}",
                best_path.display()
            )]
        }
        Event::Paused { epoch, batch, path } => vec![
            format!("stopped in epoch {epoch} after batch {batch}; saved {}", path.display()),
            continue_with(),
        ],
    }
}

fn started(s: &RunSummary) -> Vec<String> {
    let order = match s.sequences {
        Some(n) => format!("{n} shuffled sequences of {}", s.sequence_chars),
        None => format!(
            "{} contiguous lanes of {} read in order (--stateful)",
            s.batch_size,
            s.train_chars / s.batch_size
        ),
    };
    let layers: Vec<String> = s.layers.iter().map(|(n, c)| format!("{n} {c}")).collect();
    vec![
        s.corpus.clone(),
        format!(
            "split: {} training / {} validation characters; {order}; {} batches of {} per epoch",
            s.train_chars, s.val_chars, s.batches_per_epoch, s.batch_size
        ),
        format!("model: {} | total {} parameters", layers.join(" | "), s.parameters),
        format!("seed {} (pass --seed {} to repeat this run)", s.seed, s.seed),
    ]
}

/// The end-of-epoch lines, as the tutorial prints them plus validation.
fn epoch_end(r: &EpochReport) -> Vec<String> {
    let epoch = r.epoch;
    vec![
        format!("Epoch {epoch} Loss: {:.4}", r.train_loss),
        match r.val_loss {
            Some(v) => format!("Epoch {epoch} validation loss {v:.4} nats/char ({:.4} bits/char)", bits(v)),
            None => format!("Epoch {epoch} no validation split (--val-fraction 0)"),
        },
        match r.first_batch {
            0 => format!("Time taken for 1 epoch {:.2} sec", r.seconds),
            first => {
                format!("Time taken for the rest of epoch {epoch} (from batch {first}) {:.2} sec", r.seconds)
            }
        },
    ]
}

fn progress_bar(total: u64) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} batches  {msg}  ETA {eta}")
            .expect("valid template"),
    );
    pb
}
