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
use crate::model::{Cell, Config};
use crate::presets::Preset;
use crate::train::LrSchedule;
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
    Train(TrainArgs),
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
    /// UTF-8 text to train on
    #[arg(long, default_value = "data/shakespeare.txt")]
    pub data: PathBuf,
    /// Passes over the training data
    #[arg(long, default_value_t = 10, value_parser = positive)]
    pub epochs: usize,
    /// Sequences per batch
    #[arg(long, default_value_t = 64, value_parser = positive)]
    pub batch_size: usize,
    /// Characters per training sequence
    #[arg(long, default_value_t = 100, value_parser = positive)]
    pub seq_len: usize,
    /// Shuffle buffer size, in sequences (tf.data's shuffle)
    #[arg(long, default_value_t = 10000, value_parser = positive)]
    pub buffer_size: usize,
    /// Width of the character embedding
    #[arg(long, default_value_t = 256, value_parser = positive)]
    pub embedding_dim: usize,
    /// Width of the GRU state
    #[arg(long, default_value_t = 1024, value_parser = positive)]
    pub rnn_units: usize,
    /// Stacked recurrent layers
    #[arg(long, default_value_t = 1, value_parser = positive)]
    pub layers: usize,
    /// Recurrent cell (parameters in the layout of PyTorch's module of that name)
    #[arg(long, value_enum, default_value_t = Cell::Gru)]
    pub cell: Cell,
    /// Adam step size
    #[arg(long, default_value_t = 0.001, value_parser = positive_f64, allow_negative_numbers = true)]
    pub learning_rate: f64,
    /// Share of the text (its end) held out for validation; 0 reproduces the tutorial
    #[arg(long, default_value_t = 0.1, value_parser = fraction, allow_negative_numbers = true)]
    pub val_fraction: f64,
    /// Where checkpoints go
    #[arg(long, default_value = "checkpoints")]
    pub checkpoint_dir: PathBuf,
    /// Save a checkpoint every N epochs (and after the last)
    #[arg(long, default_value_t = 5, value_parser = positive)]
    pub save_every: usize,
    /// Seed for initialisation and shuffling (random if not given; printed either way)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where to run
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Continue a run exactly where it stopped: from this checkpoint, or the newest resumable
    /// one in this folder (default: the --checkpoint-dir); new checkpoints go beside it
    #[arg(long, num_args = 0..=1, value_name = "FILE|DIR")]
    pub resume: Option<Option<PathBuf>>,
    /// Keep only the newest N periodic checkpoints
    #[arg(long, value_parser = positive)]
    pub keep: Option<usize>,
    /// Start afresh in a --checkpoint-dir that holds another run, deleting that run's
    /// checkpoints, optimizer states and metrics first (without it such a folder is refused)
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Rescale gradients whose global L2 norm exceeds X (off by default)
    #[arg(long, value_parser = positive_f64, value_name = "X")]
    pub clip_grad_norm: Option<f64>,
    /// Learning-rate schedule after the warm-up
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant)]
    pub lr_schedule: LrSchedule,
    /// Steps of linear learning-rate warm-up
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// Final learning rate of the cosine schedule
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_f64)]
    pub min_lr: f64,
    /// Decoupled weight decay (AdamW); 0 is the tutorial's plain Adam
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_f64)]
    pub weight_decay: f64,
    /// Truncated backpropagation through time: contiguous lanes in order, the state carried
    /// from batch to batch (no shuffling)
    #[arg(long)]
    pub stateful: bool,
    /// Dropout probability after each recurrent layer (training only)
    #[arg(long, default_value_t = 0.0, value_parser = fraction, allow_negative_numbers = true)]
    pub dropout: f64,
}

/// Settings of `train` that the user may have typed; the rest come from defaults.
pub const TRAIN_SETTINGS: [&str; 22] = [
    "stateful",
    "layers",
    "cell",
    "clip_grad_norm",
    "lr_schedule",
    "warmup_steps",
    "min_lr",
    "weight_decay",
    "dropout",
    "checkpoint_dir",
    "data",
    "epochs",
    "batch_size",
    "seq_len",
    "buffer_size",
    "embedding_dim",
    "rnn_units",
    "learning_rate",
    "val_fraction",
    "save_every",
    "keep",
    "seed",
];

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
    /// Where to run
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
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
    /// Where to run
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
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
    /// Width of the character embedding
    #[arg(long, default_value_t = 256, value_parser = positive)]
    pub embedding_dim: usize,
    /// Width of the GRU state
    #[arg(long, default_value_t = 1024, value_parser = positive)]
    pub rnn_units: usize,
    /// Stacked recurrent layers
    #[arg(long, default_value_t = 1, value_parser = positive)]
    pub layers: usize,
    /// Recurrent cell (parameters in the layout of PyTorch's module of that name)
    #[arg(long, value_enum, default_value_t = Cell::Gru)]
    pub cell: Cell,
    /// Vocabulary size (Shakespeare's is 65)
    #[arg(long, default_value_t = 65, value_parser = positive)]
    pub vocab_size: usize,
    /// Where to run
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// CPU kernel(s) to time, comma-separated: avx512, avx2, neon, portable, or all this CPU
    /// can run (default: CHARRNN_KERNEL, else the fastest); several are timed one after another
    /// in this run
    #[arg(long, value_delimiter = ',', value_parser = kernel_choice)]
    pub kernel: Vec<Option<Kernel>>,
    /// Print JSON (one object, or an array with several kernels) instead of a table
    #[arg(long)]
    pub json: bool,
}

/// The `train` settings given on the command line (not taken from defaults).
pub fn explicit_train_settings(matches: &clap::ArgMatches) -> Vec<String> {
    let Some(("train", m)) = matches.subcommand() else {
        return Vec::new();
    };
    TRAIN_SETTINGS
        .iter()
        .filter(|id| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect()
}

/// Parses a number and checks it against a rule, saying what was expected when it fails.
fn checked<T>(s: &str, rule: &Rule<T>) -> Result<T, String>
where
    T: std::str::FromStr + std::fmt::Display + Copy,
    T::Err: std::fmt::Display,
{
    rule.check(s.parse().map_err(|e: T::Err| e.to_string())?)
}

/// A kernel by name, or `None` for `all`.
fn kernel_choice(s: &str) -> Result<Option<Kernel>, String> {
    match s {
        "all" => Ok(None),
        _ => Kernel::parse(s).map(Some).map_err(|e| e.to_string()),
    }
}

fn positive(s: &str) -> Result<usize, String> {
    checked(s, &checks::AT_LEAST_ONE)
}

fn positive_u64(s: &str) -> Result<u64, String> {
    checked(s, &checks::AT_LEAST_ONE_U64)
}

fn timeout_seconds(s: &str) -> Result<u64, String> {
    checked(s, &Rule { ok: |n: u64| (1..=7 * 24 * 3600).contains(&n), expected: "from 1 to 604800 (a week)" })
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

fn probability(s: &str) -> Result<f32, String> {
    checked(s, &checks::PROBABILITY)
}

fn temperature(s: &str) -> Result<f32, String> {
    checked(s, &Rule { ok: |x: f32| x.is_finite() && x >= 0.0, expected: "0 (greedy) or a positive number" })
}

pub fn run(cli: Cli, explicit: Vec<String>) -> Result<()> {
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
            let resume = a.resume.map(|p| p.unwrap_or_else(|| a.checkpoint_dir.clone()));
            let mut settings = train::Settings {
                data: a.data,
                epochs: a.epochs,
                batch_size: a.batch_size,
                seq_len: a.seq_len,
                buffer_size: a.buffer_size,
                embedding_dim: a.embedding_dim,
                rnn_units: a.rnn_units,
                layers: a.layers,
                cell: a.cell,
                learning_rate: a.learning_rate,
                val_fraction: a.val_fraction,
                save_every: a.save_every,
                keep: a.keep,
                seed: a.seed.unwrap_or_else(rand::random),
                clip_grad_norm: a.clip_grad_norm,
                lr_schedule: a.lr_schedule,
                warmup_steps: a.warmup_steps,
                min_lr: a.min_lr,
                weight_decay: a.weight_decay,
                dropout: a.dropout,
                stateful: a.stateful,
            };
            a.preset.apply(&mut settings, &explicit);
            train::run(&train::TrainOptions {
                device: device::select(a.device)?,
                settings,
                checkpoint_dir: match &resume {
                    // A resumed run writes where it was found unless told otherwise.
                    Some(r) if !explicit.iter().any(|e| e == "checkpoint_dir") => match r.is_dir() {
                        true => r.clone(),
                        false => r.parent().map_or_else(|| PathBuf::from("."), PathBuf::from),
                    },
                    _ => a.checkpoint_dir,
                },
                resume,
                explicit,
                overwrite: a.overwrite,
            })
        }
        Command::Eval(a) => {
            let device = device::select(a.device)?;
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
            let device = device::select(a.device)?;
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
            let config = Config::gru(a.vocab_size, a.embedding_dim, a.rnn_units)
                .with_layers(a.layers)
                .with_cell(a.cell);
            let sizes = format!(
                "--vocab-size {} --embedding-dim {} --rnn-units {} --layers {} --batch-size {} --seq-len {} --gen-chars {}",
                a.vocab_size, a.embedding_dim, a.rnn_units, a.layers, a.batch_size, a.seq_len, a.gen_chars
            );
            // Training, sampling, and the generated ids (4 bytes each).
            let need = budget::training_bytes(&config, a.batch_size, a.seq_len)
                .zip(budget::sampling_bytes(&config, 1))
                .and_then(|(t, s)| t.checked_add(s)?.checked_add((a.gen_chars as u128).checked_mul(4)?));
            budget::check("benchmarking", need, &sizes)?;
            let device = device::select(a.device)?;
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

/// Writes a command's result to stdout, returning the error (a closed pipe included, which
/// `main` treats as a reader that has seen enough) instead of panicking as `println!` does.
fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
