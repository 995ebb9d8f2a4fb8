//! `charrnn bench`: the core's measurements of training and sampling speed, as a table or
//! JSON.

use anyhow::{Context, Result};
use charrnn_core::bench::{self, BenchOptions, BenchReport};
use charrnn_core::train::settings::OptimizerSettings;
use charrnn_core::{budget, Kernel};

use super::{compute, emit};
use crate::cli::BenchArgs;

/// The report as a small table, for people.
fn table(r: &BenchReport) -> String {
    let mut out = format!(
        "model: embedding {} -> {} {} x {} -> dense {}; batch {} x {} characters; {} on {} thread{}, {} kernel, {} products",
        r.embedding_dim,
        r.cell.to_uppercase(),
        r.rnn_units,
        r.layers,
        r.vocab_size,
        r.batch_size,
        r.seq_len,
        r.device,
        r.threads,
        if r.threads == 1 { "" } else { "s" },
        r.kernel,
        r.precision
    );
    let d = &r.dropout;
    let dropped = [
        ("dropout", d.output),
        ("weight drop", d.weight),
        ("locked dropout", d.locked),
        ("embedding dropout", d.embedding),
    ]
    .into_iter()
    .filter(|(_, p)| *p > 0.0)
    .map(|(name, p)| format!("{name} {p}"))
    .collect::<Vec<_>>();
    if !dropped.is_empty() {
        out.push_str(&format!("; training with {}", dropped.join(", ")));
    }
    let generation = format!("generation in {}, characters per second (batch 1)", r.precision);
    let mut rows: Vec<(&str, String)> = vec![
        ("training, ms per batch (median)", format!("{:.1}", r.train_ms_per_batch)),
        ("training, characters per second", format!("{:.0}", r.train_chars_per_s)),
        ("unavoidable GFLOP per batch", format!("{:.1}", r.flops_per_batch / 1e9)),
        ("achieved GFLOP/s", format!("{:.1}", r.achieved_gflops)),
        ("machine GEMM GFLOP/s (2048^3)", format!("{:.1}", r.gemm_gflops)),
        ("achieved / GEMM", format!("{:.0}%", r.gemm_fraction * 100.0)),
        ("recurrent step product alone, GFLOP/s", format!("{:.1}", r.step_product_gflops)),
        (&generation, format!("{:.0}", r.gen_chars_per_s)),
    ];
    if let Some(b) = &r.bf16 {
        rows.extend([
            ("bf16 products on", b.tiles.clone()),
            ("bf16 kernel, GFLOP/s (2048^3)", format!("{:.1}", b.gemm_gflops)),
            ("bf16 recurrent step product, GFLOP/s", format!("{:.1}", b.step_product_gflops)),
            ("generation in bf16, characters per second", format!("{:.0}", b.gen_chars_per_s)),
        ]);
    }
    if let Some(i) = &r.int8 {
        rows.extend([
            ("int8 products on", i.kernel.clone()),
            ("generation in int8, characters per second", format!("{:.0}", i.gen_chars_per_s)),
            ("sampler weights, int8 / f32, MiB", format!("{:.1} / {:.1}", i.weights_mib, i.f32_weights_mib)),
        ]);
        let p = &i.step;
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        rows.extend([
            ("int8 step alone, µs", format!("{:.1}", p.step_us)),
            ("  recurrent products / output layer", format!("{:.1} / {:.1}", p.recurrent_us, p.output_us)),
            (
                "  gates / pick / team's bare call",
                format!("{:.1} / {:.1} / {}", p.gates_us, p.pick_us, opt(p.sync_us)),
            ),
            (
                "  reading its int8 matrices: 1 core / all",
                format!("{} / {}", opt(p.read_one_core_us), opt(p.read_team_us)),
            ),
        ]);
    }
    rows.push(("peak resident memory, MiB", format!("{:.0}", r.peak_rss_mib)));
    for (k, v) in rows {
        out.push_str(&format!("\n  {k:<46} {v:>10}"));
    }
    out.push('\n');
    out
}

/// `charrnn bench`: times each kernel asked for (by default `kernel`, the process's), as a
/// table or JSON.
pub(super) fn run(a: BenchArgs, kernel: Kernel) -> Result<()> {
    let kernels = match a.kernel.iter().copied().collect::<Option<Vec<Kernel>>>() {
        None => Kernel::available(), // `all` was among them
        Some(named) if named.is_empty() => vec![kernel],
        Some(named) => named,
    };
    let preset = a.preset.settings(0);
    let m = preset.model.overlay(&a.model.clone().into());
    let config = m.config(a.vocab_size);
    let batch_size = a.batch_size.unwrap_or(preset.data.batch_size);
    let seq_len = a.seq_len.unwrap_or(preset.data.seq_len);
    // The typed dropouts over the preset's, turned into a step's masks as `train` turns them.
    let o = &preset.optimizer;
    let dropout = OptimizerSettings {
        dropout: a.dropout.unwrap_or(o.dropout),
        weight_drop: a.weight_drop.unwrap_or(o.weight_drop),
        locked_dropout: a.locked_dropout.unwrap_or(o.locked_dropout),
        embedding_dropout: a.embedding_dropout.unwrap_or(o.embedding_dropout),
        ..o.clone()
    }
    .dropouts();
    let sizes = format!(
        "--vocab-size {} --embedding-dim {} --rnn-units {} --layers {} --batch-size {} --seq-len {} --gen-chars {}",
        a.vocab_size, m.embedding_dim, m.rnn_units, m.layers, batch_size, seq_len, a.gen_chars
    );
    // Training, sampling, and the generated ids (4 bytes each).
    let need = budget::training_bytes(&config, batch_size, seq_len)
        .zip(budget::sampling_bytes(&config, 1))
        .and_then(|(t, s)| t.checked_add(s)?.checked_add((a.gen_chars as u128).checked_mul(4)?));
    budget::check("benchmarking", need, &sizes)?;
    let compute = compute(a.device.choice, kernel, a.precision)?;
    let mut reports = Vec::new();
    for k in kernels {
        let report = bench::run(&BenchOptions {
            config: config.clone(),
            batch_size,
            seq_len,
            batches: a.batches,
            gen_chars: a.gen_chars,
            tie_weights: m.tie_weights,
            dropout,
            compute: compute.with_kernel(k).context("bench --kernel")?,
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
