//! Python keywords as the command line's flags: `top_k=5` is `--top-k=5`, `True` a switch
//! given, `False` and `None` a flag left out (its default), a list one flag per item, a path
//! its text. The command line's own parser then checks them, so a keyword is refused by the
//! flag's rule in the flag's words.

use clap::Parser;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString, PyTuple};

use charrnn::cli::{Cli, Command};

/// `charrnn <command>` with one flag per keyword of `settings`, parsed as the command line
/// parses it: a keyword that is no flag of the command is a `TypeError`, as Python's own
/// functions answer one; a value its parser refuses a `ValueError` with clap's message.
pub fn command(command: &str, settings: &Bound<'_, PyDict>) -> PyResult<Command> {
    Ok(parse(command_line(command, settings)?)?.command)
}

/// `charrnn <command>` with one flag per keyword of `settings`.
fn command_line(command: &str, settings: &Bound<'_, PyDict>) -> PyResult<Vec<String>> {
    let cli = <Cli as clap::CommandFactory>::command();
    let sub = cli.find_subcommand(command).expect("a command of charrnn's");
    let known: Vec<String> = (sub.get_arguments().filter_map(|a| a.get_long()))
        .filter(|long| !matches!(*long, "help" | "version"))
        .map(|long| long.replace('-', "_"))
        .collect();
    let mut argv = vec!["charrnn".to_string(), command.to_string()];
    for (key, value) in settings.iter() {
        let name: String = key.extract()?;
        if !known.contains(&name) {
            return Err(PyTypeError::new_err(format!(
                "{command}() got an unexpected keyword argument '{name}'; its settings are: {}",
                known.join(", ")
            )));
        }
        push(&mut argv, &name, &value)?;
    }
    Ok(argv)
}

fn push(argv: &mut Vec<String>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
    let flag = format!("--{}", name.replace('_', "-"));
    if value.is_none() {
        return Ok(());
    }
    if let Ok(switch) = value.cast::<PyBool>() {
        if switch.is_true() {
            argv.push(flag);
        }
        return Ok(());
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        for item in value.try_iter()? {
            push(argv, name, &item?)?;
        }
        return Ok(());
    }
    argv.push(format!("{flag}={}", text(value)?));
    Ok(())
}

/// A value's text on the command line: a string as it is, a path by `os.fspath`, anything else
/// by `str()`.
fn text(value: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = value.cast::<PyString>() {
        return s.extract();
    }
    let os = value.py().import("os")?;
    if value.is_instance(&os.getattr("PathLike")?)? {
        return os.getattr("fspath")?.call1((value,))?.extract();
    }
    value.str()?.extract()
}

/// Parses a command line built by [`command_line`]; its refusal is a `ValueError` with clap's
/// message (without the usage lines).
fn parse(argv: Vec<String>) -> PyResult<Cli> {
    Cli::try_parse_from(argv).map_err(|e| {
        let rendered = e.render().to_string();
        let message = rendered.trim_start_matches("error: ");
        let message = message.split("\n\n").next().unwrap_or(message);
        // One line: clap puts the possible values on a line of their own.
        let message: Vec<&str> = message.lines().map(str::trim).collect();
        PyValueError::new_err(message.join(" "))
    })
}
