//! Training and sampling speed of a model configuration on this machine, beside the machine's
//! own GEMM rate, so the numbers carry their yardstick with them (`charrnn bench`).

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

use crate::compute::{Compute, Precision};
use crate::data::vocab::Vocab;
use crate::data::Batch;
use crate::kernels::cpu::bf16::{self, matmul_bf16_on, PackedBf16, Scratch, Tiles};
use crate::kernels::cpu::blas::{matmul_packed, Packed, View};
use crate::kernels::cpu::Kernel;
use crate::model::{Config, Dropout, Model};
use crate::optim::Adam;
use crate::sample::{Engine, Job, SampleOptions, Sampler, StepParts};
use crate::train::{train_step, StepOptions};

/// What to time.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The model.
    pub config: Config,
    /// Sequences per training batch.
    pub batch_size: usize,
    /// Characters per training sequence.
    pub seq_len: usize,
    /// Training batches to time (after one warm-up).
    pub batches: usize,
    /// Characters to generate for the sampling rate.
    pub gen_chars: usize,
    /// The output weight tied to the embedding (`train --tie-weights`).
    pub tie_weights: bool,
    /// What the timed training steps drop (`train`'s regularisers).
    pub dropout: Dropout,
    /// Where and how it runs: training and generation both run in its precision.
    pub compute: Compute,
}

/// What was measured. Training and generation ran in `precision` (training in f32 where it is
/// int8), on `device` with the CPU `kernel`; the GEMM yardstick and the step product are f32;
/// `bf16` and `int8` are those kernels' own.
#[derive(Serialize, Debug, Clone)]
pub struct BenchReport {
    /// The device ("cpu", or the GPU's name).
    pub device: String,
    /// The products' arithmetic in training and generation (f32, tf32, bf16).
    pub precision: String,
    /// The CPU kernel of the recurrent products, gate passes and sampling.
    pub kernel: String,
    /// Threads of the CPU pool.
    pub threads: usize,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Characters per sequence.
    pub seq_len: usize,
    /// Width of the embedding.
    pub embedding_dim: usize,
    /// Width of each recurrent layer.
    pub rnn_units: usize,
    /// Recurrent layers.
    pub layers: usize,
    /// The cell.
    pub cell: String,
    /// Characters in the vocabulary.
    pub vocab_size: usize,
    /// What the timed training steps dropped.
    pub dropout: Dropout,
    /// Milliseconds per training batch, the median.
    pub train_ms_per_batch: f64,
    /// Every timed batch, in milliseconds.
    pub train_ms_per_batch_all: Vec<f64>,
    /// Training characters per second at the median.
    pub train_chars_per_s: f64,
    /// The floating-point work a batch cannot avoid.
    pub flops_per_batch: f64,
    /// That work over the median batch time, in GFLOP/s.
    pub achieved_gflops: f64,
    /// The machine's f32 rate on a 2048³ product (candle's matmul), in GFLOP/s.
    pub gemm_gflops: f64,
    /// `achieved_gflops` over `gemm_gflops`.
    pub gemm_fraction: f64,
    /// GFLOP/s of one step's recurrent product on the CPU kernel alone, in f32: [B×H]·[H×GH]
    /// against the packed W_hhᵀ, as the fused layer runs it.
    pub step_product_gflops: f64,
    /// Batch-1 generation in `precision`, characters per second.
    pub gen_chars_per_s: f64,
    /// Where the CPU has AVX512-BF16 (absent elsewhere): the bf16 product kernel's rate on a
    /// 2048³ product and on one step's recurrent product, and batch-1 generation in bf16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bf16: Option<Bf16Report>,
    /// On a CPU (absent on a GPU): batch-1 generation in int8 and its weights' bytes beside
    /// f32's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int8: Option<Int8Report>,
    /// The process's peak resident memory.
    pub peak_rss_mib: f64,
}

/// The bf16 kernel's figures.
#[derive(Serialize, Debug, Clone)]
pub struct Bf16Report {
    /// The instructions of the training products: `amx` tiles, or `dot` (AVX512-BF16).
    pub tiles: String,
    /// A 2048³ product on those instructions, in GFLOP/s.
    pub gemm_gflops: f64,
    /// One step's recurrent product on them, in GFLOP/s.
    pub step_product_gflops: f64,
    /// Batch-1 generation in bf16, characters per second.
    pub gen_chars_per_s: f64,
}

/// The int8 sampler's figures.
#[derive(Serialize, Debug, Clone)]
pub struct Int8Report {
    /// The instructions of its products (`avx512-vnni`, `avx-vnni`, `avx2`, `neon-sdot`, …).
    pub kernel: String,
    /// Batch-1 generation in int8, characters per second.
    pub gen_chars_per_s: f64,
    /// The sampler's weights in int8 (packed products, f32 input table and biases), MiB.
    pub weights_mib: f64,
    /// The same sampler's weights in f32, MiB.
    pub f32_weights_mib: f64,
    /// Where an int8 step's time goes.
    pub step: StepParts,
}

/// The floating-point work a training batch cannot avoid: per layer the recurrent product
/// forward, for dh and for dW_hh (2·B·T·H·GH each, G = 3 gates for a GRU, 4 for an LSTM) — and
/// for layers above the first the input projection's three products too — and the output
/// layer's three (2·B·T·H·V each).
pub fn unavoidable_flops(c: &Config, batch: usize, steps: usize) -> f64 {
    let (b, t, h, v) = (batch as f64, steps as f64, c.rnn_units as f64, c.vocab_size as f64);
    let products = (2 * c.layers - 1) as f64;
    let gates = c.cell.gates() as f64;
    products * 3.0 * 2.0 * b * t * h * gates * h + 3.0 * 2.0 * b * t * h * v
}

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// GFLOP/s of a square f32 matrix product on `device` (median of a few runs after warm-up).
pub fn gemm_gflops(device: &Device, n: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let mut times = Vec::new();
    for i in 0..4 {
        let t0 = Instant::now();
        let c = a.matmul(&b)?;
        c.device().synchronize()?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (n as f64).powi(3) / median(&times) / 1e9)
}

/// GFLOP/s of the per-step recurrent product [batch × h]·[h × gh] on the CPU `kernel` (median
/// of a few dozen runs after warm-up).
pub fn step_product_gflops(kernel: Kernel, batch: usize, h: usize, gh: usize) -> f64 {
    let a: Vec<f32> = (0..batch * h).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..h * gh).map(|i| (i % 13) as f32 * 0.01).collect();
    let packed = Packed::new(View::rows(&b, h, gh));
    let mut out = vec![0.0f32; batch * gh];
    let mut times = Vec::new();
    for i in 0..41 {
        let t0 = Instant::now();
        matmul_packed(kernel, &mut out, false, View::rows(&a, batch, h), &packed);
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    2.0 * (batch * h * gh) as f64 / median(&times) / 1e9
}

/// GFLOP/s of the bf16 kernel on `tiles` for [m × k]·[k × n], the operand packed beforehand
/// (median of a few runs after warm-up).
fn bf16_product_gflops(tiles: Tiles, m: usize, k: usize, n: usize, runs: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let packed = PackedBf16::new(View::rows(&b, k, n));
    let (mut out, mut scratch) = (vec![0.0f32; m * n], Scratch::default());
    let mut times = Vec::new();
    for i in 0..=runs {
        let t0 = Instant::now();
        matmul_bf16_on(tiles, &mut out, false, View::rows(&a, m, k), &packed, &mut scratch);
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    2.0 * (m * k * n) as f64 / median(&times) / 1e9
}

/// Generation as `generate` runs it, through the sampling engine: draws at temperature 1 fed
/// back, from one sample, after 100 characters of warm-up.
fn time_generation(model: &Model, chars: usize) -> Result<f64> {
    const WARM_UP: usize = 100;
    // Any characters will do: the rate is the model's, not the text's.
    let chars_of = (0..model.config.vocab_size as u32).filter_map(|i| char::from_u32(0x100 + i)).collect();
    let vocab = Vocab::from_chars(chars_of)?;
    let mut engine = Engine::new(model, &vocab, 1)?;
    let start = vocab.char(0).to_string();
    let length = chars.checked_add(WARM_UP).ok_or_else(|| anyhow::anyhow!("--gen-chars is too large"))?;
    let id = engine.admit(Job::new(&vocab, &SampleOptions::new(&start, length))?)?;
    let drawn = |engine: &Engine| engine.job(id).map_or(length, |j| length - j.left());
    while drawn(&engine) < WARM_UP {
        engine.step()?;
    }
    let (t0, from) = (Instant::now(), drawn(&engine));
    while !engine.step()?.iter().any(|(ended, _)| *ended == id) {}
    Ok((length - from) as f64 / t0.elapsed().as_secs_f64())
}

/// Peak resident memory of this process, from /proc (0 where unavailable).
pub fn peak_rss_mib() -> f64 {
    crate::system::proc_kib("/proc/self/status", "VmHWM").map_or(0.0, |kib| kib as f64 / 1024.0)
}

/// Times training and generation as `o` says, and the kernels' rates beside them.
pub fn run(o: &BenchOptions) -> Result<BenchReport> {
    let mut rng = StdRng::seed_from_u64(0);
    let c = &o.config;
    let device = o.compute.device();
    let mut model = Model::new_random(c.clone(), DType::F32, &o.compute, &mut rng)?;
    if o.tie_weights {
        model.tie()?;
    }
    let mut adam = Adam::new(model.parameters())?;
    adam.kernel = o.compute.kernel();
    // Each step draws its own masks, as a run's steps do.
    let step = |seed: u64| StepOptions { dropout: o.dropout, seed, ..StepOptions::plain(1e-3) };
    let n = o.batch_size * o.seq_len;
    let random_ids = |rng: &mut StdRng| (0..n).map(|_| rng.random_range(0..c.vocab_size as u32)).collect();
    let batch = Batch {
        inputs: random_ids(&mut rng),
        targets: random_ids(&mut rng),
        batch_size: o.batch_size,
        seq_len: o.seq_len,
    };
    train_step(&model, &mut adam, &batch, &step(0))?; // warm-up
    let mut times = Vec::new();
    for i in 1..=o.batches as u64 {
        let t0 = Instant::now();
        train_step(&model, &mut adam, &batch, &step(i))?;
        device.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let per_batch = median(&times);
    let flops = unavoidable_flops(c, o.batch_size, o.seq_len);
    let gemm = gemm_gflops(device, 2048)?;
    let (kernel, gates) = (o.compute.kernel(), c.cell.gates());
    let step_product = step_product_gflops(kernel, o.batch_size, c.rnn_units, gates * c.rnn_units);

    let gen_rate = time_generation(&model, o.gen_chars)?;
    let bf16 = match device.is_cpu() && bf16::supported() {
        true => Some(Bf16Report {
            tiles: format!("{:?}", Tiles::best()).to_lowercase(),
            gemm_gflops: bf16_product_gflops(Tiles::best(), 2048, 2048, 2048, 3),
            step_product_gflops: bf16_product_gflops(
                Tiles::best(),
                o.batch_size,
                c.rnn_units,
                c.cell.gates() * c.rnn_units,
                40,
            ),
            gen_chars_per_s: {
                let in_bf16 = model.with_compute(o.compute.with_precision(Precision::Bf16)?)?;
                time_generation(&in_bf16, o.gen_chars)?
            },
        }),
        false => None,
    };
    let int8 = match device.is_cpu() {
        true => {
            let in_int8 = model.with_compute(o.compute.with_precision(Precision::Int8)?)?;
            let in_f32 = model.with_compute(o.compute.with_precision(Precision::F32)?)?;
            let mib = |m: &Model| -> Result<f64> {
                Ok(Sampler::new(m, 1)?.weight_bytes() as f64 / (1 << 20) as f64)
            };
            Some(Int8Report {
                kernel: in_int8.compute().int8_kernel().map_or(String::new(), |k| k.name().to_string()),
                gen_chars_per_s: time_generation(&in_int8, o.gen_chars)?,
                weights_mib: mib(&in_int8)?,
                f32_weights_mib: mib(&in_f32)?,
                step: Sampler::step_parts(&in_int8, 2000)?,
            })
        }
        false => None,
    };
    let achieved = flops / per_batch / 1e9;
    Ok(BenchReport {
        device: crate::compute::device_name(device),
        precision: o.compute.precision().to_string(),
        kernel: kernel.name().to_string(),
        threads: rayon::current_num_threads(),
        batch_size: o.batch_size,
        seq_len: o.seq_len,
        embedding_dim: c.embedding_dim,
        rnn_units: c.rnn_units,
        layers: c.layers,
        cell: c.cell.name().to_string(),
        vocab_size: c.vocab_size,
        dropout: o.dropout,
        train_ms_per_batch: per_batch * 1e3,
        train_ms_per_batch_all: times.iter().map(|t| t * 1e3).collect(),
        train_chars_per_s: n as f64 / per_batch,
        flops_per_batch: flops,
        achieved_gflops: achieved,
        gemm_gflops: gemm,
        gemm_fraction: achieved / gemm,
        step_product_gflops: step_product,
        gen_chars_per_s: gen_rate,
        bf16,
        int8,
        peak_rss_mib: peak_rss_mib(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Cell;

    /// An LSTM's four gates make its recurrent products 4/3 of a GRU's; the output layer's
    /// work is the same.
    #[test]
    fn an_lstm_counts_four_thirds_of_a_grus_recurrent_work() {
        let (b, t) = (64, 100);
        let gru = Config::gru(65, 256, 1024).with_layers(2);
        let lstm = gru.clone().with_cell(Cell::Lstm);
        let head = 3.0 * 2.0 * (b * t * 1024 * 65) as f64;
        let ratio = (unavoidable_flops(&lstm, b, t) - head) / (unavoidable_flops(&gru, b, t) - head);
        assert!((ratio - 4.0 / 3.0).abs() < 1e-12, "{ratio}");
    }
}
