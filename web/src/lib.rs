//! charrnn's sampler as a WebAssembly module: the page that `charrnn export --web` writes loads
//! it in a worker, hands it the checkpoint's bytes, and asks for text piece by piece. It is the
//! core's own code — checkpoint validation, the portable kernel, the job's random stream and
//! picking rule — so a seed gives the text `CHARRNN_KERNEL=portable charrnn generate` prints.
//!
//! The interface is a few C functions over the module's memory (no JavaScript glue is
//! generated): the page copies bytes in through [`charrnn_alloc`], calls a function that answers
//! 0 for success, and reads the answer (a piece of text, JSON, or an error message) through
//! [`charrnn_output_ptr`] and [`charrnn_output_len`].

use std::cell::RefCell;

use anyhow::{anyhow, Result};
use serde::Deserialize;

use charrnn_core::checkpoint::{self, Checkpoint};
use charrnn_core::checks;
use charrnn_core::compute::{Compute, Precision};
use charrnn_core::sample::job::{DEFAULT_LENGTH, DEFAULT_START, DEFAULT_TEMPERATURE};
use charrnn_core::sample::{Engine, Job, Pieces, SampleOptions};
use charrnn_core::{info, Device, Kernel};

/// What the module holds between calls: the model, the running job, the last answer.
#[derive(Default)]
struct State {
    checkpoint: Option<Checkpoint>,
    pieces: Option<Pieces<Engine>>,
    output: Vec<u8>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// The sampling options the page sends, as JSON; missing fields take `generate`'s defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default = "default_start")]
    start: String,
    #[serde(default = "default_length")]
    length: usize,
    #[serde(default = "default_temperature")]
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    /// A decimal string: JavaScript's numbers cannot hold every u64.
    seed: String,
}

fn default_start() -> String {
    DEFAULT_START.to_string()
}
fn default_length() -> usize {
    DEFAULT_LENGTH
}
fn default_temperature() -> f32 {
    DEFAULT_TEMPERATURE
}

impl Request {
    /// The options, each checked by the rule its `generate` flag uses.
    fn options(self) -> Result<SampleOptions> {
        let length = checks::AT_LEAST_ONE.check_flag("length", self.length).map_err(anyhow::Error::msg)?;
        let temperature =
            checks::TEMPERATURE.check_flag("temperature", self.temperature).map_err(anyhow::Error::msg)?;
        let top_k = match self.top_k {
            Some(k) => Some(checks::AT_LEAST_ONE.check_flag("top-k", k).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let top_p = match self.top_p {
            Some(p) => Some(checks::PROBABILITY.check_flag("top-p", p).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let seed = self
            .seed
            .trim()
            .parse()
            .map_err(|_| anyhow!("seed must be a whole number from 0 to 2^64 - 1"))?;
        Ok(SampleOptions {
            length,
            temperature,
            top_k,
            top_p,
            seed,
            ..SampleOptions::new(&self.start, length)
        })
    }
}

/// The arithmetic the page runs: the portable kernel in f32, as on every machine.
fn compute() -> Result<Compute> {
    Compute::new(Device::Cpu, Kernel::Portable, Precision::F32)
}

/// Runs `f` on the state; its answer (or error message) becomes the output. 0 on success.
fn answer(f: impl FnOnce(&mut State) -> Result<Vec<u8>>) -> i32 {
    STATE.with(|s| {
        let mut state = s.borrow_mut();
        let result = f(&mut state);
        let (code, output) = match result {
            Ok(bytes) => (0, bytes),
            Err(e) => (1, format!("{e:#}").into_bytes()),
        };
        state.output = output;
        code
    })
}

/// Room for `len` bytes the page writes into (a checkpoint, a request).
#[unsafe(no_mangle)]
pub extern "C" fn charrnn_alloc(len: usize) -> *mut u8 {
    let mut room = Vec::<u8>::with_capacity(len);
    let ptr = room.as_mut_ptr();
    std::mem::forget(room);
    ptr
}

/// Gives back room from [`charrnn_alloc`].
///
/// # Safety
/// `ptr` and `len` must be a pair [`charrnn_alloc`] returned, not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn charrnn_free(ptr: *mut u8, len: usize) {
    // SAFETY: the caller passes back exactly what charrnn_alloc made: a Vec's buffer of
    // capacity `len`, never freed.
    drop(unsafe { Vec::from_raw_parts(ptr, 0, len) });
}

/// Reads `len` bytes the page wrote at `ptr`.
///
/// # Safety
/// `ptr` must point at `len` initialised bytes in the module's memory.
unsafe fn input<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    // SAFETY: the page wrote `len` bytes at `ptr` (from charrnn_alloc) before the call.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// Loads a checkpoint from its file's bytes (validated as the command line validates it); the
/// output is `charrnn info --json`'s report of it.
///
/// # Safety
/// `ptr` must point at `len` bytes the page wrote.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn charrnn_load(ptr: *const u8, len: usize) -> i32 {
    // SAFETY: as the function's contract says.
    let bytes = unsafe { input(ptr, len) };
    answer(|state| {
        let ckpt = checkpoint::from_bytes(bytes, &compute()?)?;
        let report = info::info_of("model.safetensors".as_ref(), &ckpt, &mut |_| {})?;
        state.pieces = None;
        state.checkpoint = Some(ckpt);
        Ok(serde_json::to_vec(&report)?)
    })
}

/// Starts a sample for the JSON request at `ptr` (see `Request`); its pieces come from
/// [`charrnn_next`].
///
/// # Safety
/// `ptr` must point at `len` bytes the page wrote.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn charrnn_begin(ptr: *const u8, len: usize) -> i32 {
    // SAFETY: as the function's contract says.
    let bytes = unsafe { input(ptr, len) };
    answer(|state| {
        let request: Request = serde_json::from_slice(bytes).map_err(|e| anyhow!("bad request: {e}"))?;
        let options = request.options()?;
        let ckpt = state.checkpoint.as_ref().ok_or_else(|| anyhow!("no model loaded"))?;
        let job = Job::new(&ckpt.vocab, &options).map_err(|e| e.context("start"))?;
        let engine = Engine::new(&ckpt.model, &ckpt.vocab, 1)?;
        state.pieces = Some(Pieces::new(engine, job)?);
        Ok(Vec::new())
    })
}

/// The next piece of the running sample as the output: 0 with a piece, 2 when the sample has
/// ended (empty output), 1 on an error.
#[unsafe(no_mangle)]
pub extern "C" fn charrnn_next() -> i32 {
    let mut ended = false;
    let code = answer(|state| {
        let pieces = state.pieces.as_mut().ok_or_else(|| anyhow!("no sample running"))?;
        match pieces.next_piece()? {
            Some(piece) => Ok(piece.into_bytes()),
            None => {
                state.pieces = None;
                ended = true;
                Ok(Vec::new())
            }
        }
    });
    if code == 0 && ended {
        2
    } else {
        code
    }
}

/// Where the last answer is.
#[unsafe(no_mangle)]
pub extern "C" fn charrnn_output_ptr() -> *const u8 {
    STATE.with(|s| s.borrow().output.as_ptr())
}

/// The last answer's length in bytes.
#[unsafe(no_mangle)]
pub extern "C" fn charrnn_output_len() -> usize {
    STATE.with(|s| s.borrow().output.len())
}
