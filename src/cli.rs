//! Command-line definitions and dispatch; the work itself lives in the other modules.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rand::{rngs::StdRng, SeedableRng};

use crate::checks::{self, Rule};
use crate::device::{self, DeviceChoice};
use crate::kernel::{self, Kernel};
use crate::model::Config;
use crate::presets::Preset;
use crate::settings::{checked, positive, ModelArgs, SettingsArgs};
use crate::{bench, budget, checkpoint, download, eval, sample, train};

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
    /// Measure training and sampling speed against this machine's GEMM rate
    #[command(after_help = "Example:\n  charrnn bench --rnn-units 256 --json")]
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// Where to fetch the text from
    #[arg(long, default_value = download::DEFAULT_URL)]
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
    #[arg(long, default_value_t = download::DEFAULT_MAX_BYTES, value_parser = positive_u64)]
    pub max_bytes: u64,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A named set of settings to start from; flags given here override its values
    #[arg(long, value_enum, default_value_t = Preset::Tutorial)]
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
    /// UTF-8 text to score
    #[arg(long)]
    pub data: PathBuf,
    /// Characters per scored sequence (each starts from a zero state, as in training)
    #[arg(long, default_value_t = 100, value_parser = positive)]
    pub seq_len: usize,
    /// Sequences scored at once
    #[arg(long, default_value_t = 64, value_parser = positive)]
    pub batch_size: usize,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
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
    #[arg(long, default_value = "ROMEO: ")]
    pub start: String,
    /// Characters to generate
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    pub length: usize,
    /// Read the start text from this file instead
    #[arg(long, conflicts_with = "start")]
    pub start_file: Option<PathBuf>,
    /// Softmax temperature: lower is more predictable; 0 always takes the most likely character
    #[arg(long, default_value_t = 1.0, value_parser = temperature, allow_negative_numbers = true)]
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
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Training batches to time (after one warm-up); the median is reported
    #[arg(long, default_value_t = 5, value_parser = positive)]
    pub batches: usize,
    /// Characters to generate for the sampling rate
    #[arg(long, default_value_t = 5000, value_parser = positive)]
    pub gen_chars: usize,
    /// Sequences per batch
    #[arg(long, default_value_t = 64, value_parser = positive)]
    pub batch_size: usize,
    /// Characters per training sequence
    #[arg(long, default_value_t = 100, value_parser = positive)]
    pub seq_len: usize,
    /// The model to time (the tutorial's where a size is not given)
    #[command(flatten)]
    pub model: ModelArgs,
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

fn probability(s: &str) -> Result<f32, String> {
    checked(s, &checks::PROBABILITY)
}

fn temperature(s: &str) -> Result<f32, String> {
    checked(s, &Rule { ok: |x: f32| x.is_finite() && x >= 0.0, expected: "0 (greedy) or a positive number" })
}

pub fn run(cli: Cli) -> Result<()> {
    // A bad CHARRNN_KERNEL is a clear error before any work starts.
    kernel::init()?;
    match cli.command {
        Command::Download(a) => {
            let outcome = download::run(&download::DownloadOptions {
                url: a.url,
                output: a.output.clone(),
                sha256: a.sha256,
                force: a.force,
                timeout: Duration::from_secs(a.timeout),
                max_bytes: a.max_bytes,
            })?;
            match outcome {
                download::Outcome::AlreadyPresent => {
                    eprintln!("{} already present (checksum verified)", a.output.display())
                }
                download::Outcome::Downloaded { bytes, sha256 } => {
                    eprintln!("wrote {} ({bytes} bytes, SHA-256 {sha256})", a.output.display())
                }
            }
            Ok(())
        }
        Command::Train(a) => {
            let resume =
                a.resume.map(|p| p.unwrap_or_else(|| a.checkpoint_dir.clone().unwrap_or_else(default_dir)));
            let checkpoint_dir = match (&a.checkpoint_dir, &resume) {
                (Some(dir), _) => dir.clone(),
                // A resumed run writes where it was found unless told otherwise.
                (None, Some(r)) if r.is_dir() => r.clone(),
                (None, Some(r)) => r.parent().map_or_else(|| PathBuf::from("."), PathBuf::from),
                (None, None) => default_dir(),
            };
            train::run(&train::TrainOptions {
                device: device::select(a.device.choice)?,
                base: a.preset.settings(rand::random()),
                typed: a.settings,
                checkpoint_dir,
                resume,
                overwrite: a.overwrite,
            })
        }
        Command::Eval(a) => {
            let device = device::select(a.device.choice)?;
            let path = checkpoint::resolve(&a.checkpoint)?;
            let ckpt = checkpoint::load(&path, &device)?;
            budget::check(
                "scoring",
                budget::training_bytes(&ckpt.model.config, a.batch_size, a.seq_len),
                &format!("--batch-size {} --seq-len {}", a.batch_size, a.seq_len),
            )?;
            let text = crate::data::read_corpus(&a.data)?;
            let score = eval::score(&ckpt.model, &ckpt.vocab, &text, a.seq_len, a.batch_size)?;
            match a.json {
                true => emit(&format!("{}\n", serde_json::to_string_pretty(&score)?)),
                false => emit(&format!("{}\n", score.describe(&path, &a.data))),
            }
        }
        Command::Info(a) => {
            let path = checkpoint::resolve(&a.checkpoint)?;
            let report = eval::info(&path)?;
            match a.json {
                true => emit(&format!("{}\n", serde_json::to_string_pretty(&report)?)),
                false => emit(&eval::describe_info(&report)),
            }
        }
        Command::Generate(a) => {
            let device = device::select(a.device.choice)?;
            let path = checkpoint::resolve(&a.checkpoint)?;
            let ckpt = checkpoint::load(&path, &device)?;
            eprintln!("checkpoint {} (epoch {})", path.display(), ckpt.provenance.epoch);
            let start = match &a.start_file {
                Some(f) => crate::files::read_to_string(f).with_context(|| {
                    format!("cannot read --start-file {} (it must be UTF-8 text)", f.display())
                })?,
                None => a.start.clone(),
            };
            budget::check(
                "sampling",
                budget::sampling_bytes(&ckpt.model.config, a.num_samples),
                &format!("--num-samples {}", a.num_samples),
            )?;
            let mut sampler = sample::Engine::new(&ckpt.model, a.num_samples)?;
            let mut picker = sample::Picker::new(a.temperature, a.top_k, a.top_p);
            let mut rng = StdRng::seed_from_u64(a.seed.unwrap_or_else(rand::random));
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            sample::generate(&mut sampler, &ckpt.vocab, &start, a.length, &mut picker, &mut rng, &mut out)?;
            out.flush()?;
            Ok(())
        }
        Command::Bench(a) => {
            let kernels = match a.kernel.iter().copied().collect::<Option<Vec<Kernel>>>() {
                None => Kernel::available(), // `all` was among them
                Some(named) if named.is_empty() => vec![kernel::active()],
                Some(named) => named,
            };
            let m = Preset::Tutorial.settings(0).model.overlay(&a.model);
            let config = Config::gru(a.vocab_size, m.embedding_dim, m.rnn_units)
                .with_layers(m.layers)
                .with_cell(m.cell);
            let sizes = format!(
                "--vocab-size {} --embedding-dim {} --rnn-units {} --layers {} --batch-size {} --seq-len {} --gen-chars {}",
                a.vocab_size, m.embedding_dim, m.rnn_units, m.layers, a.batch_size, a.seq_len, a.gen_chars
            );
            // Training, sampling, and the generated ids (4 bytes each).
            let need = budget::training_bytes(&config, a.batch_size, a.seq_len)
                .zip(budget::sampling_bytes(&config, 1))
                .and_then(|(t, s)| t.checked_add(s)?.checked_add((a.gen_chars as u128).checked_mul(4)?));
            budget::check("benchmarking", need, &sizes)?;
            let device = device::select(a.device.choice)?;
            let mut reports = Vec::new();
            for k in kernels {
                kernel::set(k).context("bench --kernel")?;
                let report = bench::run(&bench::BenchOptions {
                    config: config.clone(),
                    batch_size: a.batch_size,
                    seq_len: a.seq_len,
                    batches: a.batches,
                    gen_chars: a.gen_chars,
                    device: device.clone(),
                })?;
                if !a.json {
                    emit(&bench::table(&report))?;
                }
                reports.push(report);
            }
            if a.json {
                let json = match reports.as_slice() {
                    [one] => serde_json::to_string_pretty(one)?,
                    all => serde_json::to_string_pretty(all)?,
                };
                emit(&format!("{json}\n"))?;
            }
            Ok(())
        }
    }
}

/// Where checkpoints go when no --checkpoint-dir is given.
fn default_dir() -> PathBuf {
    PathBuf::from("checkpoints")
}

/// Writes a command's result to stdout, returning the error (a closed pipe included, which
/// `main` treats as a reader that has seen enough) instead of panicking as `println!` does.
fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
