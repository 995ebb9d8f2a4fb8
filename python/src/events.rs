//! A training run's events handed to Python: `on_event(kind, fields)` with a dict of the
//! event's values and `lines`, what the command line prints for it. Each event is also where a
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
        fields.set_item("message", line)?;
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
        let (kind, fields) = describe(py, event)?;
        fields.set_item("lines", charrnn::report::lines(event, &self.dir))?;
        self.on_event.call1(py, (kind, fields))?;
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

/// The event's kind and values.
fn describe<'py>(py: Python<'py>, event: &Event) -> PyResult<(&'static str, Bound<'py, PyDict>)> {
    let d = PyDict::new(py);
    let kind = match event {
        Event::Notice(n) => {
            d.set_item("message", n.to_string())?;
            "notice"
        }
        Event::FineTuning { path, epoch } => {
            d.set_item("path", path)?;
            d.set_item("epoch", epoch)?;
            "fine_tuning"
        }
        Event::Resuming { path, epoch, batch } => {
            d.set_item("path", path)?;
            d.set_item("epoch", epoch)?;
            d.set_item("batch", batch)?;
            "resuming"
        }
        Event::Started(s) => {
            d.set_item("corpus", &s.corpus)?;
            d.set_item("train_chars", s.train_chars)?;
            d.set_item("val_chars", s.val_chars)?;
            d.set_item("batch_size", s.batch_size)?;
            d.set_item("batches_per_epoch", s.batches_per_epoch)?;
            d.set_item("batches_left", s.batches_left)?;
            d.set_item("parameters", s.parameters)?;
            d.set_item("seed", s.seed)?;
            "started"
        }
        Event::AlreadyTrained { epochs } => {
            d.set_item("epochs", epochs)?;
            "already_trained"
        }
        Event::Step(r) => {
            d.set_item("epoch", r.epoch)?;
            d.set_item("batch", r.batch)?;
            d.set_item("step", r.step)?;
            d.set_item("loss", r.loss)?;
            d.set_item("learning_rate", r.learning_rate)?;
            d.set_item("chars_per_s", r.chars_per_s)?;
            "step"
        }
        Event::EpochEnd(r) => {
            d.set_item("epoch", r.epoch)?;
            d.set_item("train_loss", r.train_loss)?;
            d.set_item("val_loss", r.val_loss)?;
            d.set_item("seconds", r.seconds)?;
            "epoch"
        }
        Event::Saved { path } => {
            d.set_item("path", path)?;
            "saved"
        }
        Event::NewBest { val_loss, path } => {
            d.set_item("val_loss", val_loss)?;
            d.set_item("path", path)?;
            "new_best"
        }
        Event::Sample { epoch, text } => {
            d.set_item("epoch", epoch)?;
            d.set_item("text", text)?;
            "sample"
        }
        Event::SampleFailed { epoch, error } => {
            d.set_item("epoch", epoch)?;
            d.set_item("error", error)?;
            "sample_failed"
        }
        Event::LimitReached { limit, at_epoch_end } => {
            d.set_item("limit", limit.to_string())?;
            d.set_item("at_epoch_end", at_epoch_end)?;
            "limit_reached"
        }
        Event::EarlyStop { patience, best, best_path } => {
            d.set_item("patience", patience)?;
            d.set_item("best", best)?;
            d.set_item("path", best_path)?;
            "early_stop"
        }
        Event::Paused { epoch, batch, path } => {
            d.set_item("epoch", epoch)?;
            d.set_item("batch", batch)?;
            d.set_item("path", path)?;
            "paused"
        }
    };
    Ok((kind, d))
}
