//! `charrnn bench`: training and sampling speed of a model configuration on this machine,
//! beside the machine's own GEMM rate, so the numbers carry their yardstick with them.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

use super::emit;
use crate::budget;
use crate::cli::BenchArgs;
use crate::data::Batch;
use crate::device;
use crate::device::Precision;
use crate::kernels::cpu::bf16::{self, matmul_bf16_on, PackedBf16, Scratch, Tiles};
use crate::kernels::cpu::blas::{matmul_packed, Packed, View};
use crate::kernels::cpu::{self as kernel, Kernel};
use crate::model::sample::{Engine, Picker};
use crate::model::{Config, Model};
use crate::optim::Adam;
use crate::train::presets::Preset;
use crate::train::{train_step, StepOptions};

pub struct BenchOptions {
    pub config: Config,
    pub batch_size: usize,
    pub seq_len: usize,
    pub batches: usize,
    pub gen_chars: usize,
    pub device: Device,
    pub precision: crate::device::Precision,
}

#[derive(Serialize, Debug)]
pub struct BenchReport {
    pub device: String,
    /// The products' arithmetic (f32, tf32).
    pub precision: String,
    /// The CPU kernel of the recurrent products, gate passes and sampling (see `kernel`).
    pub kernel: String,
    pub threads: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub embedding_dim: usize,
    pub rnn_units: usize,
    pub layers: usize,
    pub cell: String,
    pub vocab_size: usize,
    pub train_ms_per_batch: f64,
    pub train_ms_per_batch_all: Vec<f64>,
    pub train_chars_per_s: f64,
    pub flops_per_batch: f64,
    pub achieved_gflops: f64,
    pub gemm_gflops: f64,
    pub gemm_fraction: f64,
    /// GFLOP/s of one step's recurrent product on the CPU kernel alone: [B×H]·[H×GH] against
    /// the packed W_hhᵀ, as the fused layer runs it.
    pub step_product_gflops: f64,
    pub gen_chars_per_s: f64,
    /// Where the CPU has AVX512-BF16 (absent elsewhere): the bf16 product kernel's rate on a
    /// 2048³ product and on one step's recurrent product, and batch-1 generation in bf16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bf16: Option<Bf16Report>,
    pub peak_rss_mib: f64,
}

#[derive(Serialize, Debug)]
pub struct Bf16Report {
    /// The instructions of the training products: `amx` tiles, or `dot` (AVX512-BF16).
    pub tiles: String,
    /// On those instructions.
    pub gemm_gflops: f64,
    pub step_product_gflops: f64,
    pub gen_chars_per_s: f64,
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

/// GFLOP/s of the per-step recurrent product [batch × h]·[h × gh] on the active CPU kernel
/// (median of a few dozen runs after warm-up).
pub fn step_product_gflops(batch: usize, h: usize, gh: usize) -> f64 {
    let a: Vec<f32> = (0..batch * h).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..h * gh).map(|i| (i % 13) as f32 * 0.01).collect();
    let packed = Packed::new(View::rows(&b, h, gh));
    let mut out = vec![0.0f32; batch * gh];
    let mut times = Vec::new();
    for i in 0..41 {
        let t0 = Instant::now();
        matmul_packed(&mut out, false, View::rows(&a, batch, h), &packed);
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

/// Generation as `generate` runs it: draws at temperature 1 fed back, from one sample.
fn time_generation(engine: &mut Engine, chars: usize, rng: &mut StdRng) -> Result<f64> {
    let mut picker = Picker::new(1.0, None, None);
    engine.prime(&[0])?;
    engine.next(100, &mut picker, rng)?; // warm-up
    let t0 = Instant::now();
    engine.next(chars, &mut picker, rng)?;
    Ok(chars as f64 / t0.elapsed().as_secs_f64())
}

/// Peak resident memory of this process, from /proc (0 where unavailable).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

pub fn run(o: &BenchOptions) -> Result<BenchReport> {
    let mut rng = StdRng::seed_from_u64(0);
    let c = &o.config;
    let model = Model::new_random(c.clone(), DType::F32, &o.device, &mut rng)?;
    let mut adam = Adam::new(model.parameters())?;
    let step = StepOptions::plain(1e-3);
    let n = o.batch_size * o.seq_len;
    let random_ids = |rng: &mut StdRng| (0..n).map(|_| rng.random_range(0..c.vocab_size as u32)).collect();
    let batch = Batch {
        inputs: random_ids(&mut rng),
        targets: random_ids(&mut rng),
        batch_size: o.batch_size,
        seq_len: o.seq_len,
    };
    train_step(&model, &mut adam, &batch, &step)?; // warm-up
    let mut times = Vec::new();
    for _ in 0..o.batches {
        let t0 = Instant::now();
        train_step(&model, &mut adam, &batch, &step)?;
        o.device.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let per_batch = median(&times);
    let flops = unavoidable_flops(c, o.batch_size, o.seq_len);
    let gemm = gemm_gflops(&o.device, 2048)?;
    let step_product = step_product_gflops(o.batch_size, c.rnn_units, c.cell.gates() * c.rnn_units);

    let gen_rate = time_generation(&mut Engine::new(&model, 1)?, o.gen_chars, &mut rng)?;
    let bf16 = match o.device.is_cpu() && bf16::supported() {
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
            gen_chars_per_s: time_generation(
                &mut Engine::with_precision(&model, 1, Precision::Bf16)?,
                o.gen_chars,
                &mut rng,
            )?,
        }),
        false => None,
    };
    let achieved = flops / per_batch / 1e9;
    Ok(BenchReport {
        device: crate::device::name(&o.device),
        precision: crate::train::settings::shown(&o.precision),
        kernel: crate::kernels::cpu::active().name().to_string(),
        threads: rayon::current_num_threads(),
        batch_size: o.batch_size,
        seq_len: o.seq_len,
        embedding_dim: c.embedding_dim,
        rnn_units: c.rnn_units,
        layers: c.layers,
        cell: c.cell.name().to_string(),
        vocab_size: c.vocab_size,
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
        peak_rss_mib: peak_rss_mib(),
    })
}

/// The report as a small table, for people.
pub fn table(r: &BenchReport) -> String {
    let mut out = format!(
        "model: embedding {} -> {} {} x {} -> dense {}; batch {} x {} characters; {} on {} threads, {} kernel, {} products",
        r.embedding_dim,
        r.cell.to_uppercase(),
        r.rnn_units,
        r.layers,
        r.vocab_size,
        r.batch_size,
        r.seq_len,
        r.device,
        r.threads,
        r.kernel,
        r.precision
    );
    let mut rows = vec![
        ("training, ms per batch (median)", format!("{:.1}", r.train_ms_per_batch)),
        ("training, characters per second", format!("{:.0}", r.train_chars_per_s)),
        ("unavoidable GFLOP per batch", format!("{:.1}", r.flops_per_batch / 1e9)),
        ("achieved GFLOP/s", format!("{:.1}", r.achieved_gflops)),
        ("machine GEMM GFLOP/s (2048^3)", format!("{:.1}", r.gemm_gflops)),
        ("achieved / GEMM", format!("{:.0}%", r.gemm_fraction * 100.0)),
        ("recurrent step product alone, GFLOP/s", format!("{:.1}", r.step_product_gflops)),
        ("generation, characters per second (batch 1)", format!("{:.0}", r.gen_chars_per_s)),
    ];
    if let Some(b) = &r.bf16 {
        rows.extend([
            ("bf16 products on", b.tiles.clone()),
            ("bf16 kernel, GFLOP/s (2048^3)", format!("{:.1}", b.gemm_gflops)),
            ("bf16 recurrent step product, GFLOP/s", format!("{:.1}", b.step_product_gflops)),
            ("generation in bf16, characters per second", format!("{:.0}", b.gen_chars_per_s)),
        ]);
    }
    rows.push(("peak resident memory, MiB", format!("{:.0}", r.peak_rss_mib)));
    for (k, v) in rows {
        out.push_str(&format!("\n  {k:<46} {v:>10}"));
    }
    out.push('\n');
    out
}

/// `charrnn bench`: times each kernel asked for, as a table or JSON.
pub(super) fn command(a: BenchArgs) -> Result<()> {
    let kernels = match a.kernel.iter().copied().collect::<Option<Vec<Kernel>>>() {
        None => Kernel::available(), // `all` was among them
        Some(named) if named.is_empty() => vec![kernel::active()],
        Some(named) => named,
    };
    let m = Preset::Tutorial.settings(0).model.overlay(&a.model);
    let config =
        Config::gru(a.vocab_size, m.embedding_dim, m.rnn_units).with_layers(m.layers).with_cell(m.cell);
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
    a.precision.apply(&device)?;
    let mut reports = Vec::new();
    for k in kernels {
        kernel::set(k).context("bench --kernel")?;
        let report = run(&BenchOptions {
            config: config.clone(),
            batch_size: a.batch_size,
            seq_len: a.seq_len,
            batches: a.batches,
            gen_chars: a.gen_chars,
            device: device.clone(),
            precision: a.precision,
        })?;
        if !a.json {
            emit(&table(&report))?;
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
