//! charrnn for Python: the core library's models, sampling, scoring and training behind a small
//! PyO3 module (`charrnn._native`), which `charrnn/__init__.py` re-exports with the progress
//! bar and callbacks of `train`. Keywords become the command line's flags and are parsed by its
//! own parsers, so every value is checked by the same rule and refused in the same words; the
//! GIL is released while the arithmetic runs.

mod errors;
mod events;
mod flags;
mod model;

use std::ffi::OsString;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use charrnn::cli::Command;
use charrnn::download::DownloadOptions;

use errors::{to_py, CheckpointError};

/// Trains a model as `charrnn train` does, with `settings` as its flags (snake-case names),
/// calling `on_event(kind, fields)` for each of the run's events. Ctrl-C (any pending Python
/// signal, or an exception from `on_event`) stops the run where it stands: it saves the
/// resumable checkpoint, and the exception is raised once it has.
#[pyfunction]
#[pyo3(signature = (settings, on_event))]
fn train(py: Python<'_>, settings: &Bound<'_, PyDict>, on_event: Py<PyAny>) -> PyResult<()> {
    let Command::Train(args) = flags::command("train", settings)? else {
        unreachable!("the command line named train")
    };
    let kernel = charrnn_core::Kernel::from_env().map_err(to_py)?;
    let (options, device) = charrnn::commands::train::options(*args, kernel).map_err(to_py)?;
    let mut observer =
        events::PythonObserver::new(on_event, options.checkpoint_dir.clone(), options.stop.clone());
    observer.say(py, &device)?;
    let result = py.detach(|| charrnn_core::train::run(&options, &mut observer));
    // What Python raised along the way comes first: it is why the run stopped.
    if let Some(error) = observer.raised() {
        return Err(error);
    }
    result.map_err(to_py)
}

/// Downloads a corpus as `charrnn download` does (checksum-verified, atomically written);
/// returns the file's path.
#[pyfunction]
#[pyo3(signature = (settings))]
fn download(py: Python<'_>, settings: &Bound<'_, PyDict>) -> PyResult<String> {
    let Command::Download(a) = flags::command("download", settings)? else {
        unreachable!("the command line named download")
    };
    let options = DownloadOptions::from(a);
    py.detach(|| charrnn::download::run(&options)).map_err(to_py)?;
    Ok(options.output.display().to_string())
}

/// Runs the `charrnn` command with `argv` (its name first) and returns its exit status: the
/// wheel's `charrnn` command is the binary's own code.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    py.detach(|| charrnn::run_command_line(argv))
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CheckpointError", m.py().get_type::<CheckpointError>())?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Stream>()?;
    m.add_function(wrap_pyfunction!(model::load, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(download, m)?)?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
