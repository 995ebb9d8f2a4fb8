//! Sampling: one [`Engine`] runs [`Job`]s — requests for samples with their own start, options
//! and random stream — as rows of one batch that join and leave between steps. `generate` runs
//! one job to its end ([`generate`]); the server keeps admitting and removing jobs as clients
//! come and go. Each step warms a job on its start or draws its next character, and feeds every
//! row at once, so the weights are read once per step however many jobs run.
//!
//! A row's result does not depend on the other rows (see [`Sampler`]), and a job draws its
//! random numbers in a fixed order (see [`job`]), so a job's text depends only on its own options
//! and seed. A model on a GPU samples there, with the same picking rule and random numbers; the
//! GPU engine runs one job at a time, drawing a chunk of characters per step on the device.
//!
//! Loading a checkpoint and sampling 100 characters after a start, with a seed:
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use charrnn_core::checkpoint::{self, Provenance};
//! use charrnn_core::data::vocab::Vocab;
//! use charrnn_core::model::{Config, Model};
//! use charrnn_core::sample::{generate, Engine, Job, SampleOptions};
//! use charrnn_core::Compute;
//! use rand::SeedableRng;
//!
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("ckpt_1.safetensors");
//! # let vocab = Vocab::from_text("ROMEO: wherefore art thou?\n");
//! # let mut rng = rand::rngs::StdRng::seed_from_u64(1);
//! # let model = Model::new_random(Config::gru(vocab.len(), 8, 16), candle_core::DType::F32, &Compute::cpu(), &mut rng)?;
//! # checkpoint::save(&path, &model, &vocab, &Provenance::default())?;
//! // A checkpoint written by `charrnn train` (here a small one made above).
//! let ckpt = checkpoint::load(&path, &Compute::cpu())?;
//! let options = SampleOptions { seed: 7, ..SampleOptions::new("ROMEO: ", 100) };
//! let job = Job::new(&ckpt.vocab, &options)?;
//! let mut engine = Engine::new(&ckpt.model, &ckpt.vocab, options.num_samples)?;
//! let mut text = Vec::new();
//! let job = generate(&mut engine, job, &mut text)?;
//! let sample = &job.texts()[0];
//! assert_eq!(sample.chars().count(), "ROMEO: ".len() + 100);
//! assert_eq!(String::from_utf8(text)?, format!("{sample}\n"));
//! // The same seed gives the same text.
//! let again = generate(&mut engine, Job::new(&ckpt.vocab, &options)?, &mut Vec::new())?;
//! assert_eq!(again.texts(), job.texts());
//! # Ok(())
//! # }
//! ```

mod cpu;
pub mod job;
mod picker;

use std::borrow::BorrowMut;
use std::io::Write;

use anyhow::{bail, Result};

pub use cpu::{sampler_bytes, Sampler, StepParts};
pub use job::{Job, SampleOptions};
pub use picker::Picker;

use crate::data::vocab::Vocab;
use crate::model::Model;

/// A job's name in an engine.
pub type JobId = u64;

/// Why an engine did not take a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its samples would not fit beside the rows in use.
    Full {
        /// Rows in use.
        in_use: usize,
        /// Rows the engine holds.
        capacity: usize,
        /// Rows asked for.
        asked: usize,
    },
    /// The GPU engine runs one job at a time, of exactly its size.
    Busy,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Full { in_use, capacity, asked } => write!(
                f,
                "{in_use} sequences are running and the sampler holds {capacity}; cannot add {asked}"
            ),
            Refusal::Busy => write!(f, "the GPU sampler runs one job at a time, of the size it was made for"),
        }
    }
}

impl std::error::Error for Refusal {}

/// The stepping machinery: the CPU kernels, or the GPU's for a model whose weights are there.
enum Backend {
    Cpu(Sampler),
    #[cfg(feature = "cuda")]
    Gpu(crate::kernels::cuda::GpuSampler),
}

/// Runs jobs: see the module notes.
pub struct Engine {
    backend: Backend,
    vocab: Vocab,
    capacity: usize,
    /// In row order: job k's rows follow job k − 1's.
    jobs: Vec<(JobId, Job)>,
    next_id: JobId,
}

/// The GPU sampler's view of a model: the input table and each layer's weights.
#[cfg(feature = "cuda")]
fn gpu_weights(model: &Model) -> Result<crate::kernels::cuda::SamplerWeights> {
    use crate::kernels::cuda::{LayerWeights, SamplerWeights};
    let cell = model.config.cell;
    if !cell.on_gpu() {
        bail!("--cell {} has no GPU sampler yet; generate with --device cpu", cell.name());
    }
    let layers = (model.layers.iter().enumerate())
        .map(|(l, p)| LayerWeights {
            input: (l > 0).then(|| (p.w_ih.as_tensor().clone(), p.b_ih.as_tensor().clone())),
            w_hh: p.w_hh.as_tensor().clone(),
            b_hh: p.b_hh.as_tensor().clone(),
        })
        .collect();
    Ok(SamplerWeights {
        table: model.input_table()?,
        layers,
        dense_w: model.dense.weight.as_tensor().clone(),
        dense_b: model.dense.bias.as_tensor().clone(),
    })
}

impl Engine {
    /// An engine for up to `capacity` samples at once of `model` (whose compute says where and
    /// how it runs), writing characters of `vocab`; no job is running yet.
    pub fn new(model: &Model, vocab: &Vocab, capacity: usize) -> Result<Self> {
        if vocab.len() != model.config.vocab_size {
            bail!("the vocabulary has {} characters, the model {}", vocab.len(), model.config.vocab_size);
        }
        #[cfg(feature = "cuda")]
        if model.device().is_cuda() {
            let sampler = crate::kernels::cuda::GpuSampler::new(gpu_weights(model)?, capacity)?;
            return Ok(Engine::with(Backend::Gpu(sampler), vocab, capacity));
        }
        let mut sampler = Sampler::new(model, capacity)?;
        sampler.retain_rows(|_| false); // jobs add their rows as they come
        Ok(Engine::with(Backend::Cpu(sampler), vocab, capacity))
    }

    fn with(backend: Backend, vocab: &Vocab, capacity: usize) -> Self {
        Engine { backend, vocab: vocab.clone(), capacity, jobs: Vec::new(), next_id: 0 }
    }

    /// The characters the model writes.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The most samples it runs at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Samples running now.
    pub fn rows_in_use(&self) -> usize {
        self.jobs.iter().map(|(_, j)| j.samples()).sum()
    }

    /// Whether no job is running.
    pub fn is_idle(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Starts `job`: its rows join the batch at the zero state, to warm on its start from the
    /// next step.
    pub fn admit(&mut self, job: Job) -> Result<JobId, Refusal> {
        let (in_use, asked) = (self.rows_in_use(), job.samples());
        match &mut self.backend {
            Backend::Cpu(sampler) => sampler.add_rows(asked).map_err(|_| Refusal::Full {
                in_use,
                capacity: self.capacity,
                asked,
            })?,
            #[cfg(feature = "cuda")]
            Backend::Gpu(sampler) => {
                if !self.jobs.is_empty() || asked != self.capacity {
                    return Err(Refusal::Busy);
                }
                sampler.reset().map_err(|_| Refusal::Busy)?;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.jobs.push((id, job));
        Ok(id)
    }

    /// The running job `id`.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.iter().find(|(j, _)| *j == id).map(|(_, job)| job)
    }

    /// The running job `id`, to take its new text.
    pub fn job_mut(&mut self, id: JobId) -> Option<&mut Job> {
        self.jobs.iter_mut().find(|(j, _)| *j == id).map(|(_, job)| job)
    }

    /// Every running job's id, in row order.
    pub fn job_ids(&self) -> Vec<JobId> {
        self.jobs.iter().map(|(id, _)| *id).collect()
    }

    /// Ends the job `id` before its time (its client has gone, say): its rows leave the batch.
    pub fn remove(&mut self, id: JobId) -> Option<Job> {
        let at = self.jobs.iter().position(|(j, _)| *j == id)?;
        self.drop_rows(|k| k == at);
        Some(self.jobs.remove(at).1)
    }

    /// Ends every job (after a failure), leaving the engine empty.
    pub fn clear(&mut self) {
        self.drop_rows(|_| true);
        self.jobs.clear();
    }

    /// Drops the rows of the jobs (by position) for which `gone` is true.
    fn drop_rows(&mut self, gone: impl Fn(usize) -> bool) {
        match &mut self.backend {
            Backend::Cpu(sampler) => retain_jobs_rows(sampler, &self.jobs, gone),
            #[cfg(feature = "cuda")]
            Backend::Gpu(_) => {} // its one job's rows are reset when the next job comes
        }
    }

    /// Characters a job may draw in one step: one on the CPU; on the GPU a chunk, so that the
    /// device is not waited for per character.
    pub fn chunk(&self) -> usize {
        match self.backend {
            Backend::Cpu(_) => 1,
            #[cfg(feature = "cuda")]
            Backend::Gpu(_) => 256,
        }
    }

    /// One step of every running job: a job still warming feeds its next start character;
    /// the others draw their next character (a chunk of them on a GPU) and feed it back.
    /// Returns the jobs that ended (length reached, or every sample stopped), which leave the
    /// engine.
    pub fn step(&mut self) -> Result<Vec<(JobId, Job)>> {
        #[cfg(feature = "cuda")]
        let chunk = self.chunk();
        let over = match &mut self.backend {
            Backend::Cpu(sampler) => step_cpu(sampler, &mut self.jobs, &self.vocab),
            #[cfg(feature = "cuda")]
            Backend::Gpu(sampler) => step_gpu(sampler, &mut self.jobs, &self.vocab, chunk)?,
        };
        if !over.contains(&true) {
            return Ok(Vec::new());
        }
        let mut flags = over.iter();
        let (ended, kept) = std::mem::take(&mut self.jobs)
            .into_iter()
            .partition(|_| *flags.next().expect("one flag per job"));
        self.jobs = kept;
        Ok(ended)
    }
}

/// Keeps the rows of the jobs (by position) for which `gone` is false.
fn retain_jobs_rows(sampler: &mut Sampler, jobs: &[(JobId, Job)], gone: impl Fn(usize) -> bool) {
    let keep: Vec<bool> = (jobs.iter().enumerate())
        .flat_map(|(k, (_, job))| std::iter::repeat_n(!gone(k), job.samples()))
        .collect();
    sampler.retain_rows(|row| keep[row]);
}

/// One CPU step of `jobs` (see [`Engine::step`]): picks from the last step's logits, drops the
/// rows of the jobs that end, feeds the rest. Returns which jobs ended, by position.
fn step_cpu(sampler: &mut Sampler, jobs: &mut [(JobId, Job)], vocab: &Vocab) -> Vec<bool> {
    let v = sampler.vocab_size();
    let mut ids = Vec::with_capacity(sampler.rows());
    let mut over = vec![false; jobs.len()];
    let mut first_row = 0;
    for ((_, job), over) in jobs.iter_mut().zip(&mut over) {
        let n = job.samples();
        let logits = &sampler.logits()[first_row * v..(first_row + n) * v];
        first_row += n;
        if job.left() == 0 {
            *over = true; // nothing to draw: it ends before its start is even fed
            continue;
        }
        if let Some(id) = job.next_prime() {
            ids.extend(std::iter::repeat_n(id, n));
            continue;
        }
        let before = ids.len();
        job.pick(logits, &mut ids);
        *over = job.accept(&ids[before..], vocab);
        if *over {
            ids.truncate(before);
        }
    }
    if over.contains(&true) {
        retain_jobs_rows(sampler, jobs, |k| over[k]);
    }
    if !ids.is_empty() {
        sampler.step(&ids);
    }
    over
}

/// One GPU step of its one job (see [`Engine::step`]): a start character, or a chunk of
/// `chunk` draws made on the device. Returns whether it ended.
#[cfg(feature = "cuda")]
fn step_gpu(
    sampler: &mut crate::kernels::cuda::GpuSampler,
    jobs: &mut [(JobId, Job)],
    vocab: &Vocab,
    chunk: usize,
) -> Result<Vec<bool>> {
    use rand::Rng;
    let Some((_, job)) = jobs.first_mut() else { return Ok(Vec::new()) };
    let n = job.samples();
    if job.left() == 0 {
        return Ok(vec![true]);
    }
    if let Some(id) = job.next_prime() {
        sampler.feed(&vec![id; n])?;
        return Ok(vec![false]);
    }
    let steps = job.left().min(chunk);
    let (picker, rng) = job.picker_and_rng();
    // The same draws, in the same order, as the CPU's picker makes.
    let uniforms: Vec<f32> = match picker.temperature {
        0.0 => Vec::new(),
        _ => (0..steps * n).map(|_| rng.random::<f32>()).collect(),
    };
    let top_k = picker.top_k.map_or(0, |k| k.max(1));
    let drawn = sampler.sample(steps, picker.temperature, top_k, picker.top_p.unwrap_or(-1.0), &uniforms)?;
    Ok(vec![drawn.chunks_exact(n).any(|step| job.accept(step, vocab))])
}

/// One job run on an engine to its end, handed out in pieces as they become final: the start
/// first, then the text as it is drawn (text that may begin a stop string is held back until it
/// is known not to). Only a one-sample job is handed out piecewise; a job of several samples
/// runs to its end and its texts are [`Pieces::into_job`]'s. `E` is the engine or a borrow of
/// it, so a caller may keep the engine or give it away with the pieces (Python's `stream`).
pub struct Pieces<E: BorrowMut<Engine>> {
    engine: E,
    id: JobId,
    start: Option<String>,
    streaming: bool,
    ended: Option<Job>,
    /// The end has been handed out.
    done: bool,
}

impl<E: BorrowMut<Engine>> Pieces<E> {
    /// Admits `job` to `engine`, which must be idle.
    pub fn new(mut engine: E, job: Job) -> Result<Self> {
        if !engine.borrow().is_idle() {
            bail!("sampling one job to its end needs an engine with no job running");
        }
        let streaming = job.samples() == 1;
        let start = streaming.then(|| job.start().to_string());
        let id = engine.borrow_mut().admit(job)?;
        Ok(Pieces { engine, id, start, streaming, ended: None, done: false })
    }

    /// The next piece of a one-sample job's text, None once it has all been handed out (at
    /// once for a job of several samples).
    pub fn next_piece(&mut self) -> Result<Option<String>> {
        if let Some(start) = self.start.take() {
            return Ok(Some(start));
        }
        while self.ended.is_none() {
            let engine = self.engine.borrow_mut();
            if let Some((_, job)) = engine.step()?.into_iter().next() {
                self.ended = Some(job);
                break;
            }
            let job = engine.job_mut(self.id).expect("the job runs until it ends");
            if self.streaming && !job.is_priming() {
                if let Some(piece) = joined(job.take_new_text(false)) {
                    return Ok(Some(piece));
                }
            }
        }
        let job = self.ended.as_mut().expect("the job has ended");
        if self.streaming && !self.done {
            self.done = true;
            return Ok(joined(job.take_new_text(true)));
        }
        Ok(None)
    }

    /// The finished job (its texts, say), once [`Pieces::next_piece`] has said None.
    pub fn into_job(self) -> Job {
        self.ended.expect("into_job after the last piece")
    }
}

/// A one-sample job's new text as one piece, or None when there is none.
fn joined(new: Vec<(usize, String)>) -> Option<String> {
    let text: String = new.into_iter().map(|(_, t)| t).collect();
    (!text.is_empty()).then_some(text)
}

/// Runs `job` on `engine` (which must be idle) to its end: warms each sample's state on the
/// start, then draws until the job's length or stop strings end it. One sample is written as
/// it is produced, the start first; several are written one after the other, each under a
/// header line. Returns the finished job (its texts, say).
pub fn generate(engine: &mut Engine, job: Job, out: &mut impl Write) -> Result<Job> {
    let n = job.samples();
    let mut pieces = Pieces::new(engine, job)?;
    while let Some(piece) = pieces.next_piece()? {
        out.write_all(piece.as_bytes())?;
        out.flush()?;
    }
    let job = pieces.into_job();
    match n {
        1 => out.write_all(b"\n")?,
        _ => {
            for (b, text) in job.texts().iter().enumerate() {
                writeln!(out, "--- sample {} of {n} ---\n{text}", b + 1)?;
            }
        }
    }
    out.flush()?;
    Ok(job)
}
