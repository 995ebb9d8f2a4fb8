//! A loaded checkpoint and what Python does with it: sample (all at once or piece by piece),
//! score a text, the next character's probabilities, what the checkpoint is.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use pyo3::exceptions::{PyFileNotFoundError, PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use charrnn::cli::{Command, EvalArgs};
use charrnn_core::checkpoint::{self, Checkpoint};
use charrnn_core::compute::{Compute, Precision};
use charrnn_core::sample::job::{DEFAULT_LENGTH, DEFAULT_START, DEFAULT_TEMPERATURE};
use charrnn_core::sample::{Engine, Job, Pieces, Sampler};
use charrnn_core::{info, score, Device, Kernel};

use crate::errors::to_py;
use crate::flags;

/// A trained model: a checkpoint's weights and vocabulary, loaded once in f32; each call
/// samples or scores in the precision it asks for.
#[pyclass(frozen, module = "charrnn")]
pub struct Model {
    path: PathBuf,
    checkpoint: Checkpoint,
    kernel: Kernel,
}

/// Loads a checkpoint file, or a folder's newest `ckpt_N.safetensors`.
#[pyfunction]
pub fn load(py: Python<'_>, path: PathBuf) -> PyResult<Model> {
    if !path.exists() {
        return Err(PyFileNotFoundError::new_err(format!(
            "no checkpoint at {}: pass a checkpoint file, or a folder that `charrnn.train` wrote",
            path.display()
        )));
    }
    let kernel = Kernel::from_env().map_err(to_py)?;
    py.detach(|| {
        let path = checkpoint::resolve(&path)?;
        let checkpoint = checkpoint::load(&path, &Compute::new(Device::Cpu, kernel, Precision::F32)?)?;
        Ok(Model { path, checkpoint, kernel })
    })
    .map_err(to_py)
}

impl Model {
    /// The weights computing in `precision` (the same tensors; bf16 packs its own copy when
    /// an engine is made).
    fn in_precision(&self, precision: Precision) -> anyhow::Result<charrnn_core::model::Model> {
        let compute = Compute::new(Device::Cpu, self.kernel, precision)?;
        self.checkpoint.model.with_compute(compute)
    }

    /// A sampling job from the keywords, checked as `charrnn generate` checks its flags, and
    /// the weights in the precision it asks for.
    fn prepare(&self, py: Python<'_>, k: SamplingKeywords) -> PyResult<(Job, charrnn_core::model::Model)> {
        let settings = PyDict::new(py);
        settings.set_item("start", k.start)?;
        settings.set_item("length", k.length)?;
        settings.set_item("temperature", k.temperature)?;
        settings.set_item("top_k", k.top_k)?;
        settings.set_item("top_p", k.top_p)?;
        settings.set_item("seed", k.seed)?;
        settings.set_item("num_samples", k.num_samples)?;
        settings.set_item("stop", Stops::into_vec(k.stop))?;
        settings.set_item("include_stop", k.include_stop)?;
        settings.set_item("precision", k.precision)?;
        let Command::Generate(args) = flags::command("generate", &settings)? else {
            unreachable!("the command line named generate")
        };
        let job =
            charrnn::commands::generate::job(&args, &self.checkpoint, args.start.clone()).map_err(to_py)?;
        Ok((job, self.in_precision(args.precision).map_err(to_py)?))
    }

    /// One row per character of `text`, made by `row` from the logits after it (the model fed
    /// the text one character at a time, as sampling does), as a NumPy float32 array.
    fn rows<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        row: fn(&[f32]) -> Vec<f32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let numpy = py.import("numpy").map_err(|_| {
            pyo3::exceptions::PyImportError::new_err(
                "Model.probabilities and Model.logits need NumPy: pip install numpy",
            )
        })?;
        let vocab = &self.checkpoint.vocab;
        let ids = vocab.encode(text).context("text").map_err(to_py)?;
        if ids.is_empty() {
            return Err(PyValueError::new_err("text is empty: give at least one character"));
        }
        let model = &self.checkpoint.model;
        let bytes = py
            .detach(|| -> anyhow::Result<Vec<u8>> {
                let mut sampler = Sampler::new(model, 1)?;
                let mut bytes = Vec::with_capacity(ids.len() * vocab.len() * 4);
                for &id in &ids {
                    bytes.extend(row(sampler.step(&[id])).iter().flat_map(|p| p.to_le_bytes()));
                }
                Ok(bytes)
            })
            .map_err(to_py)?;
        let flat = numpy.call_method1("frombuffer", (PyBytes::new(py, &bytes), "<f4"))?;
        // A writable array of its own (frombuffer over bytes would be read-only).
        flat.call_method1("reshape", (ids.len(), vocab.len()))?.call_method0("copy")
    }
}

/// The keywords `generate` and `stream` share. Numbers are taken wide and signed, so that a
/// negative or zero one reaches the flag's own check and message.
struct SamplingKeywords {
    start: String,
    length: i64,
    temperature: f64,
    top_k: Option<i64>,
    top_p: Option<f64>,
    seed: Option<i128>,
    num_samples: i64,
    stop: Option<Stops>,
    include_stop: bool,
    precision: String,
}

/// A stop string or a list of them.
#[derive(FromPyObject)]
enum Stops {
    One(String),
    Many(Vec<String>),
}

impl Stops {
    fn into_vec(stop: Option<Stops>) -> Vec<String> {
        match stop {
            None => Vec::new(),
            Some(Stops::One(s)) => vec![s],
            Some(Stops::Many(v)) => v,
        }
    }
}

/// How many characters go between checks for a pending Ctrl-C while sampling.
const SIGNAL_CHECK_EVERY: usize = 256;

#[pymethods]
impl Model {
    /// Samples text as `charrnn generate` does: the same options, defaults, checks and, for the
    /// same seed, the same text. Returns the sample, its start first (a list of them when
    /// `num_samples` > 1). `seed=None` draws a random seed.
    #[pyo3(signature = (
        start = DEFAULT_START.to_string(),
        length = DEFAULT_LENGTH as i64,
        temperature = DEFAULT_TEMPERATURE as f64,
        top_k = None,
        top_p = None,
        seed = None,
        num_samples = 1,
        stop = None,
        include_stop = false,
        precision = "f32".to_string(),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        start: String,
        length: i64,
        temperature: f64,
        top_k: Option<i64>,
        top_p: Option<f64>,
        seed: Option<i128>,
        num_samples: i64,
        stop: Option<Stops>,
        include_stop: bool,
        precision: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let keywords = SamplingKeywords {
            start,
            length,
            temperature,
            top_k,
            top_p,
            seed,
            num_samples,
            stop,
            include_stop,
            precision,
        };
        let (job, model) = self.prepare(py, keywords)?;
        let samples = job.samples();
        let vocab = &self.checkpoint.vocab;
        let texts = py.detach(|| -> PyResult<Vec<String>> {
            let mut engine = Engine::new(&model, vocab, samples).map_err(to_py)?;
            let mut pieces = Pieces::new(&mut engine, job).map_err(to_py)?;
            let mut since_check = 0;
            while let Some(piece) = pieces.next_piece().map_err(to_py)? {
                since_check += piece.len();
                if since_check >= SIGNAL_CHECK_EVERY {
                    since_check = 0;
                    Python::attach(|py| py.check_signals())?;
                }
            }
            Ok(pieces.into_job().texts())
        })?;
        match samples {
            1 => Ok(texts.into_iter().next().unwrap_or_default().into_pyobject(py)?.into_any()),
            _ => Ok(PyList::new(py, texts)?.into_any()),
        }
    }

    /// Samples one text as `generate` does, yielding it in pieces as they are produced (the
    /// start first); the pieces join to `generate`'s text for the same options and seed.
    #[pyo3(signature = (
        start = DEFAULT_START.to_string(),
        length = DEFAULT_LENGTH as i64,
        temperature = DEFAULT_TEMPERATURE as f64,
        top_k = None,
        top_p = None,
        seed = None,
        stop = None,
        include_stop = false,
        precision = "f32".to_string(),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        py: Python<'_>,
        start: String,
        length: i64,
        temperature: f64,
        top_k: Option<i64>,
        top_p: Option<f64>,
        seed: Option<i128>,
        stop: Option<Stops>,
        include_stop: bool,
        precision: String,
    ) -> PyResult<Stream> {
        let keywords = SamplingKeywords {
            start,
            length,
            temperature,
            top_k,
            top_p,
            seed,
            num_samples: 1,
            stop,
            include_stop,
            precision,
        };
        let (job, model) = self.prepare(py, keywords)?;
        let engine = Engine::new(&model, &self.checkpoint.vocab, 1).map_err(to_py)?;
        let pieces = Pieces::new(engine, job).map_err(to_py)?;
        Ok(Stream { pieces: Mutex::new(Some(pieces)) })
    }

    /// How well the model predicts `text`, as `charrnn eval --json` reports it: a dict of
    /// `characters`, `skipped`, `unknown_characters`, `nats_per_char`, `bits_per_char` and
    /// `perplexity`.
    #[pyo3(signature = (text, *, seq_len = None, batch_size = None, precision = "f32"))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        seq_len: Option<Bound<'py, PyAny>>,
        batch_size: Option<Bound<'py, PyAny>>,
        precision: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let settings = PyDict::new(py);
        settings.set_item("data", "-")?;
        settings.set_item("seq_len", seq_len)?;
        settings.set_item("batch_size", batch_size)?;
        settings.set_item("precision", precision)?;
        let Command::Eval(args) = flags::command("eval", &settings)? else {
            unreachable!("the command line named eval")
        };
        let EvalArgs { seq_len, batch_size, precision, .. } = args;
        let model = self.in_precision(precision).map_err(to_py)?;
        let vocab = &self.checkpoint.vocab;
        let score = py
            .detach(|| {
                charrnn::commands::eval::check_budget(&model.config, batch_size, seq_len)?;
                score::score(&model, vocab, text, seq_len, batch_size)
            })
            .map_err(to_py)?;
        json(py, &score)
    }

    /// Next-character probabilities after each prefix of `text`: a NumPy float32 array of shape
    /// (len(text), len(vocab)) whose row i is the distribution of the character that follows
    /// `text[: i + 1]`, its columns in `vocab`'s order. Needs NumPy.
    fn probabilities<'py>(&self, py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
        self.rows(py, text, softmax)
    }

    /// The logits behind [`Model::probabilities`]: the same array before the softmax.
    fn logits<'py>(&self, py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
        self.rows(py, text, |row| row.to_vec())
    }

    /// What `charrnn info --json` shows: the file, its provenance, the model's shape and size.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let report = info::info_of(&self.path, &self.checkpoint, &mut |_| {}).map_err(to_py)?;
        json(py, &report)
    }

    /// The characters the model knows, in id order.
    #[getter]
    fn vocab(&self) -> Vec<String> {
        self.checkpoint.vocab.chars().iter().map(|c| c.to_string()).collect()
    }

    /// The model's shape: the checkpoint's config, as `info` shows it.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json(py, &self.checkpoint.model.config)
    }

    /// The checkpoint file.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "charrnn.Model('{}': {} characters, epoch {})",
            self.path.display(),
            self.checkpoint.vocab.len(),
            self.checkpoint.provenance.epoch
        )
    }
}

/// The softmax of one row of logits.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = logits.iter().map(|&l| ((l - max) as f64).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|e| (e / total) as f32).collect()
}

/// A value as Python's `json.loads` reads its JSON.
fn json<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// The pieces of one sample, produced as Python asks for them (`Model.stream`).
#[pyclass(module = "charrnn")]
pub struct Stream {
    pieces: Mutex<Option<Pieces<Engine>>>,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<String> {
        let mut guard = self.pieces.lock().map_err(|_| PyValueError::new_err("the stream failed before"))?;
        let Some(pieces) = guard.as_mut() else {
            return Err(PyStopIteration::new_err(()));
        };
        match py.detach(|| pieces.next_piece()) {
            Ok(Some(piece)) => Ok(piece),
            Ok(None) => {
                *guard = None;
                Err(PyStopIteration::new_err(()))
            }
            Err(e) => {
                *guard = None;
                Err(to_py(e))
            }
        }
    }
}
