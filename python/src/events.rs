//! A training run's events handed to Python: `on_event(kind, fields)` with `lines`, what the
//! command line prints for it, and the values the progress bar and `on_epoch` use. Each event is also where a
//! pending Ctrl-C (or an exception the callback raised) reaches the run: the stop flag goes up,
//! the run saves where it stands, and the exception is raised when it returns.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use charrnn_core::train::events::{Event, Observer, StopFlag};

/// Calls a Python function for each event, holding the GIL only while it does.
pub struct PythonObserver {
    on_event: Py<PyAny>,
    /// The run's folder, which the command line's lines name.
    dir: PathBuf,
    stop: StopFlag,
    raised: Option<PyErr>,
}

impl PythonObserver {
    pub fn new(on_event: Py<PyAny>, dir: PathBuf, stop: StopFlag) -> Self {
        PythonObserver { on_event, dir, stop, raised: None }
    }

    /// A line of the command line's that comes with no event (the device picked), as a notice.
    pub fn say(&self, py: Python<'_>, line: &str) -> PyResult<()> {
        let fields = PyDict::new(py);
        fields.set_item("lines", vec![line])?;
        self.on_event.call1(py, ("notice", fields))?;
        Ok(())
    }

    /// The exception that stopped the run, if one did.
    pub fn raised(&mut self) -> Option<PyErr> {
        self.raised.take()
    }

    fn call(&self, py: Python<'_>, event: &Event) -> PyResult<()> {
        py.check_signals()?;
        let fields = values(py, event)?;
        fields.set_item("lines", charrnn::report::lines(event, &self.dir))?;
        self.on_event.call1(py, (kind(event), fields))?;
        Ok(())
    }
}

impl Observer for PythonObserver {
    fn event(&mut self, event: &Event) {
        if self.raised.is_some() {
            return; // stopping already: the rest of the run's events are its wind-down
        }
        if let Err(e) = Python::attach(|py| self.call(py, event)) {
            self.raised = Some(e);
            self.stop.raise();
        }
    }
}

/// The event's kind, by which `charrnn._progress.Report` tells them apart.
fn kind(event: &Event) -> &'static str {
    match event {
        Event::Notice(_) => "notice",
        Event::FineTuning { .. } => "fine_tuning",
        Event::Resuming { .. } => "resuming",
        Event::Started(_) => "started",
        Event::AlreadyTrained { .. } => "already_trained",
        Event::Step(_) => "step",
        Event::EpochEnd(_) => "epoch",
        Event::Saved { .. } => "saved",
        Event::NewBest { .. } => "new_best",
        Event::Sample { .. } => "sample",
        Event::SampleFailed { .. } => "sample_failed",
        Event::LimitReached { .. } => "limit_reached",
        Event::Planned { .. } => "planned",
        Event::EarlyStop { .. } => "early_stop",
        Event::Paused { .. } => "paused",
    }
}

/// The values Python uses beside the lines: the batches the bar counts, each step's loss and
/// rate, each epoch's losses for `on_epoch`.
fn values<'py>(py: Python<'py>, event: &Event) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match event {
        Event::Started(s) => d.set_item("batches_left", s.batches_left)?,
        Event::Planned { batches_left, .. } => d.set_item("batches_left", batches_left)?,
        Event::Step(r) => {
            d.set_item("loss", r.loss)?;
            d.set_item("chars_per_s", r.chars_per_s)?;
        }
        Event::EpochEnd(r) => {
            d.set_item("epoch", r.epoch)?;
            d.set_item("train_loss", r.train_loss)?;
            d.set_item("val_loss", r.val_loss)?;
            d.set_item("seconds", r.seconds)?;
        }
        _ => {}
    }
    Ok(d)
}
