//! The command line: every command's arguments and the parsers that check them (with the
//! core's rules, so a flag and a saved setting are refused in the same words); the commands
//! themselves are in `crate::commands`.

mod settings;

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use charrnn_core::checks::{self, Rule};
use charrnn_core::compute::Precision;
use charrnn_core::kernels::cpu::Kernel;
use charrnn_core::sample::job;
use charrnn_core::train::presets::Preset;
use charrnn_core::Choice;

use charrnn_core::data::tutorial;
pub use settings::{ModelArgs, SettingsArgs};

/// The default of `download --max-bytes`: far above any text corpus one downloads, far below a
/// disk.
const DOWNLOAD_MAX_BYTES: u64 = 4 << 30;

#[derive(Parser, Debug)]
#[command(
    name = "charrnn",
    version,
    about = "Train character-level recurrent language models on any UTF-8 text and sample from them",
    after_help = "Example:\n  charrnn download\n  charrnn train --epochs 10\n  charrnn generate --start \"ROMEO: \" --temperature 1.0"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Download a corpus (by default the tutorial's Shakespeare), checksum-verified
    #[command(after_help = "Example:\n  charrnn download --output data/shakespeare.txt")]
    Download(DownloadArgs),
    /// Train a model and write checkpoints
    #[command(after_help = "Example:\n  charrnn train --epochs 10 --rnn-units 1024 --seed 1")]
    Train(Box<TrainArgs>),
    /// Sample text from a checkpoint
    #[command(
        after_help = "Example:\n  charrnn generate --start \"ROMEO: \" --length 500 --temperature 0.8"
    )]
    Generate(GenerateArgs),
    /// Score a text under a model: loss per character, bits per character, perplexity
    #[command(
        after_help = "Example:\n  charrnn eval --checkpoint checkpoints/best.safetensors --data data/shakespeare.txt"
    )]
    Eval(EvalArgs),
    /// Show a checkpoint's configuration, vocabulary, size, provenance and metrics
    #[command(after_help = "Example:\n  charrnn info checkpoints/ckpt_10.safetensors --json")]
    Info(InfoArgs),
    /// Serve a checkpoint over HTTP: a JSON API with streaming, and a page to try it
    #[command(
        after_help = "Example:\n  charrnn serve --checkpoint checkpoints --port 8080\n  curl -s localhost:8080/v1/generate -H 'Content-Type: application/json' -d '{\"start\": \"ROMEO: \", \"length\": 200, \"seed\": 1}'"
    )]
    Serve(ServeArgs),
    /// Measure training and sampling speed against this machine's GEMM rate
    #[command(
        after_help = "Example:\n  charrnn bench --rnn-units 256 --json\n  charrnn bench --preset hour --precision bf16"
    )]
    Bench(BenchArgs),
    /// Write a trained model out to run elsewhere: a static web page that samples in the
    /// browser, or an ONNX graph for standard runtimes
    #[command(
        after_help = "Example:\n  charrnn export --web site --checkpoint checkpoints\n  charrnn export --onnx model.onnx"
    )]
    Export(ExportArgs),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("format").required(true).multiple(true).args(["web", "onnx"])))]
pub struct ExportArgs {
    /// A checkpoint file, or a folder to take the newest ckpt_N.safetensors from
    #[arg(long, default_value = "checkpoints")]
    pub checkpoint: PathBuf,
    /// Write a self-contained static page to DIR (index.html, style.css, worker.js,
    /// charrnn.wasm, the model): it samples in the visitor's browser, served by any static file
    /// server
    #[arg(long, value_name = "DIR")]
    pub web: Option<PathBuf>,
    /// Write the model as an ONNX graph to FILE (ids and initial states in; logits and final
    /// states out), to be stepped one character at a time by any ONNX runtime
    #[arg(long, value_name = "FILE")]
    pub onnx: Option<PathBuf>,
    /// Replace an earlier export in DIR, or an existing FILE
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// Where to fetch the text from
    #[arg(long, default_value = tutorial::URL)]
    pub url: String,
    /// Where to write it
    #[arg(long, default_value = "data/shakespeare.txt")]
    pub output: PathBuf,
    /// Expected SHA-256 (hex); the default URL's is built in
    #[arg(long)]
    pub sha256: Option<String>,
    /// Replace an existing output file with a different content
    #[arg(long)]
    pub force: bool,
    /// Give up when the whole download has taken this many seconds (at most a week)
    #[arg(long, default_value_t = 120, value_parser = timeout_seconds)]
    pub timeout: u64,
    /// Refuse a body larger than this many bytes
    #[arg(long, default_value_t = DOWNLOAD_MAX_BYTES, value_parser = positive_u64)]
    pub max_bytes: u64,
    /// Follow HTTP redirects (at most 10, never from https to plain http); without it a
    /// redirect is an error that names where it points
    #[arg(long)]
    pub follow_redirects: bool,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A named set of settings to start from; flags given here override its values
    #[arg(long, value_parser = choice::<Preset>(), default_value_t = Preset::Tutorial)]
    pub preset: Preset,
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Where checkpoints go [default: checkpoints, or the resumed run's folder]
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Continue a run exactly where it stopped: from this checkpoint, or the newest resumable
    /// one in this folder (default: the --checkpoint-dir); new checkpoints go beside it
    #[arg(long, num_args = 0..=1, value_name = "FILE|DIR")]
    pub resume: Option<Option<PathBuf>>,
    /// Start afresh in a --checkpoint-dir that holds another run, deleting that run's
    /// checkpoints, optimizer states and metrics first (without it such a folder is refused)
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Start a new run from this checkpoint's weights (a file, or a folder's newest), on new
    /// text, with a fresh optimizer; the model keeps the checkpoint's shape
    #[arg(long, value_name = "CKPT", conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// With --init-from: add the new text's characters that the checkpoint lacks at the end of
    /// its vocabulary (without it they are an error that lists them)
    #[arg(long, requires = "init_from")]
    pub extend_vocab: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Early ends and samples of one `train` invocation (not saved with the run).
#[derive(Args, Debug)]
pub struct LimitArgs {
    /// End after N optimisation steps of this invocation, with a resumable checkpoint
    #[arg(long, value_name = "N", value_parser = positive_u64)]
    pub max_steps: Option<u64>,
    /// End at the first step after M minutes, with a resumable checkpoint
    #[arg(long, value_name = "M", value_parser = minutes)]
    pub max_minutes: Option<f64>,
    /// End after N epochs without a new best validation loss (best.safetensors holds the best)
    #[arg(long, value_name = "N", value_parser = positive)]
    pub patience: Option<usize>,
    /// Every N epochs, print a sample to stderr and append it to samples.txt in the run's folder
    #[arg(long, value_name = "N", value_parser = positive)]
    pub sample_every: Option<usize>,
    /// Characters per sample of --sample-every
    #[arg(long, default_value_t = 200, value_parser = positive, requires = "sample_every")]
    pub sample_length: usize,
    /// Temperature of the samples of --sample-every
    #[arg(long, default_value_t = 0.8, value_parser = temperature, requires = "sample_every")]
    pub sample_temperature: f32,
    /// Text the samples of --sample-every start from [default: a newline]
    #[arg(long, default_value = "", requires = "sample_every")]
    pub start: String,
}

impl LimitArgs {
    /// The core's limits of one run.
    pub fn limits(&self) -> charrnn_core::train::limits::RunLimits {
        use charrnn_core::train::limits::{RunLimits, SampleSpec};
        RunLimits {
            max_steps: self.max_steps,
            max_time: self.max_minutes.map(|m| std::time::Duration::from_secs_f64(m * 60.0)),
            patience: self.patience,
            sample_every: self.sample_every,
            sample: SampleSpec {
                start: self.start.clone(),
                length: self.sample_length,
                temperature: self.sample_temperature,
            },
        }
    }
}

/// Where the corpus's token cache lives.
#[derive(Args, Debug)]
pub struct CacheArgs {
    /// Folder for token caches [default: $CHARRNN_CACHE_DIR, else $XDG_CACHE_HOME/charrnn,
    /// else ~/.cache/charrnn]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Build a temporary token cache for this run only and remove it afterwards
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
}

impl CacheArgs {
    /// The folder to keep the cache in, or None for a temporary one: also when the default
    /// folder cannot be made (a read-only home, say), which is said, since no one asked for it.
    pub fn dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        if let Some(dir) = &self.cache_dir {
            return Some(dir.clone());
        }
        let dir = charrnn_core::data::cache::CacheOptions::default_dir();
        match charrnn_core::data::cache::make_cache_dir(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                eprintln!(
                    "cannot use the cache folder {} ({e}); using a temporary token cache",
                    dir.display()
                );
                None
            }
        }
    }
}

/// Where to run: the device the user picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when this build has it and a GPU answers, else the CPU
    Auto,
    Cpu,
    Cuda,
}

/// Where to run.
#[derive(Args, Debug)]
pub struct DeviceArg {
    /// Where to run
    #[arg(long = "device", value_enum, default_value_t = DeviceChoice::Auto)]
    pub choice: DeviceChoice,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint file, or a folder to take the newest ckpt_N.safetensors from
    #[arg(long, default_value = "checkpoints")]
    pub checkpoint: PathBuf,
    /// UTF-8 text to score: files, folders and glob patterns, as `train --data` takes them
    #[arg(long, num_args = 1.., required = true, value_name = "PATH")]
    pub data: Vec<PathBuf>,
    /// Put between the documents of several files
    #[arg(long, default_value = "\n\n", value_name = "TEXT")]
    pub doc_separator: String,
    /// Leave out files that are not UTF-8 (they are listed) instead of refusing them
    #[arg(long)]
    pub skip_invalid: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Characters per scored sequence (each starts from a zero state, as in training)
    #[arg(long, default_value_t = 100, value_parser = positive)]
    pub seq_len: usize,
    /// Sequences scored at once
    #[arg(long, default_value_t = 64, value_parser = positive)]
    pub batch_size: usize,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
    /// Arithmetic of the products: f32, bf16 (f32 sums) on a CPU with AVX512-BF16, int8 (the
    /// sampler's int8 products, scored step by step) on a CPU, or tf32 on a GPU
    #[arg(long, value_parser = choice::<Precision>(), default_value_t = Precision::F32)]
    pub precision: Precision,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A checkpoint file, or a folder to take the newest ckpt_N.safetensors from
    #[arg(default_value = "checkpoints")]
    pub checkpoint: PathBuf,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A checkpoint file, or a folder to take the newest ckpt_N.safetensors from
    #[arg(long, default_value = "checkpoints")]
    pub checkpoint: PathBuf,
    /// Text to start from (and to print first)
    #[arg(long, default_value = job::DEFAULT_START)]
    pub start: String,
    /// Characters to generate
    #[arg(long, default_value_t = job::DEFAULT_LENGTH, value_parser = positive)]
    pub length: usize,
    /// Read the start text from this file instead
    #[arg(long, conflicts_with = "start")]
    pub start_file: Option<PathBuf>,
    /// Softmax temperature: lower is more predictable; 0 always takes the most likely character
    #[arg(long, default_value_t = job::DEFAULT_TEMPERATURE, value_parser = temperature, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample only from the K most likely characters
    #[arg(long, value_parser = positive)]
    pub top_k: Option<usize>,
    /// Sample only from the most likely characters that together have probability P (nucleus)
    #[arg(long, value_parser = probability, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Generate N samples together (one batch), printed one after the other
    #[arg(long, default_value_t = 1, value_parser = positive)]
    pub num_samples: usize,
    /// Seed for sampling (random if not given)
    #[arg(long)]
    pub seed: Option<u64>,
    /// End a sample at the first occurrence of STR (repeatable; each sample stops on its own)
    #[arg(long = "stop", value_name = "STR", value_parser = stop_string)]
    pub stop: Vec<String>,
    /// Keep the stop string that ended a sample
    #[arg(long, requires = "stop")]
    pub include_stop: bool,
    /// Write the text to FILE (all at once, when it is complete) instead of stdout
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Arithmetic of the sampling products: f32, bf16 (f32 sums) on a CPU with AVX512-BF16, or
    /// int8 (int8 weights and activations, exact integer sums) on a CPU
    #[arg(long, value_parser = choice::<Precision>(), default_value_t = Precision::F32)]
    pub precision: Precision,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A checkpoint file, or a folder to serve the newest ckpt_N.safetensors from
    #[arg(long, default_value = "checkpoints")]
    pub checkpoint: PathBuf,
    /// Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port to listen on; 0 picks a free one (the line `listening on ...` says which)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// With a folder: switch to a newer checkpoint when one appears there, between requests
    #[arg(long)]
    pub reload: bool,
    /// Largest request body, in bytes
    #[arg(long, default_value_t = 65_536, value_parser = positive)]
    pub max_body_bytes: usize,
    /// Most characters one sample may ask for
    #[arg(long, default_value_t = 20_000, value_parser = positive)]
    pub max_length: usize,
    /// Most samples one request may ask for
    #[arg(long, default_value_t = 16, value_parser = positive)]
    pub max_samples: usize,
    /// Most samples generating at once over all requests; more are answered 503 with
    /// Retry-After
    #[arg(long, default_value_t = 64, value_parser = positive)]
    pub max_streams: usize,
    /// Seconds a request may run before it is ended
    #[arg(long, default_value_t = 60, value_parser = timeout_seconds)]
    pub time_limit: u64,
    /// Most samples generating at once for one client (by API key where keys are used, else
    /// by address); more are answered 429 with Retry-After
    #[arg(long, default_value_t = 16, value_parser = positive)]
    pub max_streams_per_client: usize,
    /// Most characters of a request's start (the model reads them all before it writes)
    #[arg(long, default_value_t = 4096, value_parser = positive)]
    pub max_start_chars: usize,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Where to sample: the server samples on the CPU (a GPU model is refused)
    #[arg(long = "device", value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Arithmetic of the sampling products: f32, bf16 (f32 sums) on a CPU with AVX512-BF16, or
    /// int8 (int8 weights and activations, exact integer sums) on a CPU
    #[arg(long, value_parser = choice::<Precision>(), default_value_t = Precision::F32)]
    pub precision: Precision,
}

/// What `serve` lets in: connections, their timeouts, who may call it and from which pages.
#[derive(Args, Debug)]
pub struct NetworkArgs {
    /// Seconds a client has to send a request's headers, from its first byte
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    pub header_timeout: f64,
    /// Seconds a client has to send a request's body, from its headers
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub body_timeout: f64,
    /// Seconds an idle keep-alive connection stays open
    #[arg(long, default_value_t = 30.0, value_parser = seconds)]
    pub idle_timeout: f64,
    /// Most connections open at once (kept below the open-file limit); when full, the one
    /// longest without a request is closed for a new one
    #[arg(long, default_value_t = 1024, value_parser = positive)]
    pub max_connections: usize,
    /// Seconds running requests get to end when the server stops (a second Ctrl-C exits now)
    #[arg(long, default_value_t = 3.0, value_parser = seconds)]
    pub shutdown_timeout: f64,
    /// An API key clients must send as `Authorization: Bearer KEY` on every route but
    /// /healthz (repeatable; also CHARRNN_API_KEY)
    #[arg(long = "api-key", value_name = "KEY", env = "CHARRNN_API_KEY", hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// A file of API keys, one per line
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Serve on an address other machines can reach without an API key
    #[arg(long)]
    pub no_auth: bool,
    /// A web page origin (scheme://host[:port]) whose scripts may call the API, with CORS
    /// headers (repeatable); other pages' requests are refused
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,
    /// A host name clients may address the server by, besides its IP addresses and
    /// localhost (repeatable)
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The run to time: its model and the regularisers its training step applies (sizes and
    /// dropout flags given here override them)
    #[arg(long, value_parser = choice::<Preset>(), default_value_t = Preset::Tutorial)]
    pub preset: Preset,
    /// Arithmetic of the matrix products: f32, bf16 (f32 sums) on a CPU with AVX512-BF16, tf32
    /// on a GPU, or int8 for generation on a CPU (training then runs in f32)
    #[arg(long, value_parser = choice::<Precision>(), default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Training batches to time (after one warm-up); the median is reported
    #[arg(long, default_value_t = 5, value_parser = positive)]
    pub batches: usize,
    /// Characters to generate for the sampling rate
    #[arg(long, default_value_t = 5000, value_parser = positive)]
    pub gen_chars: usize,
    /// Sequences per batch [default: the preset's, 64]
    #[arg(long, value_parser = positive)]
    pub batch_size: Option<usize>,
    /// Characters per training sequence [default: the preset's, 100]
    #[arg(long, value_parser = positive)]
    pub seq_len: Option<usize>,
    /// The model to time (the preset's where a size is not given)
    #[command(flatten)]
    pub model: ModelArgs,
    /// Dropout after each recurrent layer in the timed steps [default: the preset's]
    #[arg(long, value_parser = fraction, allow_negative_numbers = true, value_name = "P")]
    pub dropout: Option<f64>,
    /// DropConnect on each recurrent matrix in the timed steps [default: the preset's]
    #[arg(long, value_parser = fraction, allow_negative_numbers = true, value_name = "P")]
    pub weight_drop: Option<f64>,
    /// Locked dropout of each layer's input and output in the timed steps [default: the preset's]
    #[arg(long, value_parser = fraction, allow_negative_numbers = true, value_name = "P")]
    pub locked_dropout: Option<f64>,
    /// Embedding dropout in the timed steps [default: the preset's]
    #[arg(long, value_parser = fraction, allow_negative_numbers = true, value_name = "P")]
    pub embedding_dropout: Option<f64>,
    /// Vocabulary size (Shakespeare's is 65)
    #[arg(long, default_value_t = 65, value_parser = positive)]
    pub vocab_size: usize,
    #[command(flatten)]
    pub device: DeviceArg,
    /// CPU kernel(s) to time, comma-separated: avx512, avx2, neon, portable, or all this CPU
    /// can run (default: CHARRNN_KERNEL, else the fastest); several are timed one after another
    /// in this run
    #[arg(long, value_delimiter = ',', value_parser = kernel_choice)]
    pub kernel: Vec<Option<Kernel>>,
    /// Print JSON (one object, or an array with several kernels) instead of a table
    #[arg(long)]
    pub json: bool,
}

/// A kernel by name, or `None` for `all`.
fn kernel_choice(s: &str) -> Result<Option<Kernel>, String> {
    match s {
        "all" => Ok(None),
        _ => Kernel::parse(s).map(Some).map_err(|e| e.to_string()),
    }
}

fn positive_u64(s: &str) -> Result<u64, String> {
    checked(s, &checks::AT_LEAST_ONE_U64)
}

fn timeout_seconds(s: &str) -> Result<u64, String> {
    checked(s, &Rule { ok: |n: u64| (1..=7 * 24 * 3600).contains(&n), expected: "from 1 to 604800 (a week)" })
}

fn seconds(s: &str) -> Result<f64, String> {
    checked(
        s,
        &Rule {
            ok: |x: f64| x.is_finite() && x > 0.0 && x <= 86_400.0,
            expected: "a number of seconds above 0, at most a day",
        },
    )
}

fn probability(s: &str) -> Result<f32, String> {
    checked(s, &checks::PROBABILITY)
}

fn temperature(s: &str) -> Result<f32, String> {
    checked(s, &checks::TEMPERATURE)
}

fn minutes(s: &str) -> Result<f64, String> {
    checked(
        s,
        &Rule { ok: |m: f64| m.is_finite() && m > 0.0 && m <= 1e7, expected: "a positive number of minutes" },
    )
}

/// A stop string, by the sampling rule.
fn stop_string(s: &str) -> Result<String, String> {
    match job::stop_problem(s) {
        Some(problem) => Err(problem.into()),
        None => Ok(s.to_string()),
    }
}

/// Parses a number and checks it against a rule, saying what was expected when it fails.
fn checked<T>(s: &str, rule: &checks::Rule<T>) -> Result<T, String>
where
    T: std::str::FromStr + std::fmt::Display + Copy,
    T::Err: std::fmt::Display,
{
    rule.check(s.parse().map_err(|e: T::Err| e.to_string())?)
}

fn positive(s: &str) -> Result<usize, String> {
    checked(s, &checks::AT_LEAST_ONE)
}

fn positive_f64(s: &str) -> Result<f64, String> {
    checked(s, &checks::POSITIVE)
}

fn non_negative_f64(s: &str) -> Result<f64, String> {
    checked(s, &checks::NON_NEGATIVE)
}

fn fraction(s: &str) -> Result<f64, String> {
    checked(s, &checks::FRACTION)
}

/// A value of one of the core's named choices (a cell, a schedule, a precision, a preset), its
/// names and help lines listed as clap lists an enum's.
fn choice<T: Choice + Send + Sync + Clone>() -> impl TypedValueParser<Value = T> {
    let names = T::ALL.iter().map(|(_, name, help)| PossibleValue::new(*name).help(*help));
    PossibleValuesParser::new(names).map(|name| T::parse(&name).expect("one of the names listed"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// The `[tutorial: v]` each flag's help shows is the tutorial preset's value.
    #[test]
    fn the_help_states_the_tutorial_preset_values() {
        let tutorial = serde_json::to_value(Preset::Tutorial.settings(0)).unwrap();
        let cli = Cli::command();
        let train = cli.find_subcommand("train").unwrap();
        let mut checked = 0;
        for arg in train.get_arguments() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let Some(stated) = help.split("[tutorial: ").nth(1).and_then(|r| r.split(']').next()) else {
                continue;
            };
            let value = &tutorial[arg.get_id().as_str()];
            let shown = charrnn_core::train::settings::shown(value);
            let same = shown == stated || stated.parse::<f64>().ok() == value.as_f64();
            assert!(same, "--{}: help says {stated}, the preset has {shown}", arg.get_id());
            checked += 1;
        }
        assert!(checked >= 12, "only {checked} flags state a tutorial value");
    }
}
