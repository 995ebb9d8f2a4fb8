//! The core's errors as Python exceptions, by what went wrong: a damaged or foreign checkpoint
//! is a `CheckpointError` (a `ValueError`), a refusal of the memory estimate a `MemoryError`,
//! a missing or forbidden path the `OSError` of its kind, a stopped run `KeyboardInterrupt`;
//! the rest are bad values (`ValueError`). The message is the command line's.

use pyo3::create_exception;
use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyMemoryError, PyOSError, PyPermissionError, PyValueError,
};
use pyo3::PyErr;

use charrnn_core::budget::TooLarge;
use charrnn_core::checkpoint::InvalidCheckpoint;
use charrnn_core::train::Interrupted;

create_exception!(
    charrnn,
    CheckpointError,
    PyValueError,
    "A checkpoint that cannot be used: truncated, corrupted, foreign or inconsistent with itself."
);

/// The exception for `e`, chosen by the first cause in its chain that says what kind it is.
pub fn to_py(e: anyhow::Error) -> PyErr {
    let message = format!("{e:#}");
    for cause in e.chain() {
        if cause.is::<InvalidCheckpoint>() {
            return CheckpointError::new_err(message);
        }
        if cause.is::<TooLarge>() {
            return PyMemoryError::new_err(message);
        }
        if cause.is::<Interrupted>() {
            return PyKeyboardInterrupt::new_err(message);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
                _ => PyOSError::new_err(message),
            };
        }
    }
    PyValueError::new_err(message)
}
