//! What a checkpoint is: its configuration, vocabulary, size, provenance and the epochs its
//! run logged (`charrnn info`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::checkpoint::{self, Checkpoint, Provenance};
use crate::compute::{Compute, Precision};
use crate::metrics::{self, Metrics, Record};
use crate::model::Config;
use crate::notice::Notify;

/// A checkpoint described.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// The file.
    pub path: String,
    /// The model's shape.
    pub config: Config,
    /// The characters, in id order.
    pub vocab: Vec<String>,
    /// All parameters.
    pub parameters: usize,
    /// Parameters per layer, as Keras' summary lists them.
    pub layer_parameters: Vec<(String, usize)>,
    /// Where it came from.
    pub provenance: Provenance,
    /// Whether its optimizer state lies beside it.
    pub resumable: bool,
    /// MiB of weights a CPU sampler holds in each precision (f32, bf16, int8).
    pub sampling_mib: Vec<(String, f64)>,
    /// The epoch records of `metrics.jsonl` beside the checkpoint, up to its step.
    pub epochs: Vec<Record>,
}

/// The checkpoint at `path` described (loaded on the CPU, every check made).
pub fn info(path: &Path, notify: Notify) -> Result<Info> {
    info_of(path, &checkpoint::load(path, &Compute::cpu())?, notify)
}

/// [`info`] of a checkpoint already loaded from `path`.
pub fn info_of(path: &Path, ckpt: &Checkpoint, notify: Notify) -> Result<Info> {
    let config = ckpt.model.config.clone();
    let log = path.with_file_name(Metrics::FILE);
    let epochs = if log.exists() {
        metrics::read(&log, notify)?
            .into_iter()
            .filter(|r| matches!(r, Record::Epoch { .. }) && r.step() <= ckpt.provenance.step)
            .collect()
    } else {
        Vec::new()
    };
    Ok(Info {
        path: path.display().to_string(),
        vocab: ckpt.vocab.chars().iter().map(|c| c.to_string()).collect(),
        parameters: config.parameter_count(),
        layer_parameters: config.layer_sizes().iter().map(|(n, c)| (n.to_string(), *c)).collect(),
        provenance: ckpt.provenance.clone(),
        resumable: checkpoint::optim_path(path).exists(),
        sampling_mib: [Precision::F32, Precision::Bf16, Precision::Int8]
            .into_iter()
            .map(|p| (p.to_string(), crate::sample::sampler_bytes(&config, p) as f64 / (1 << 20) as f64))
            .collect(),
        epochs,
        config,
    })
}

/// The description as lines for people.
pub fn describe(i: &Info) -> String {
    let c = &i.config;
    let p = &i.provenance;
    let mut s = String::new();
    let _ = writeln!(s, "checkpoint  {}", i.path);
    let _ = writeln!(
        s,
        "model       embedding {} -> {} layer(s) of {} {} -> dense {}",
        c.embedding_dim,
        c.layers,
        c.cell.name(),
        c.rnn_units,
        c.vocab_size
    );
    let layers: Vec<String> = i.layer_parameters.iter().map(|(n, k)| format!("{n} {k}")).collect();
    let _ = writeln!(s, "parameters  {} ({})", i.parameters, layers.join(", "));
    let _ = writeln!(s, "vocabulary  {} characters: {:?}", i.vocab.len(), i.vocab.concat());
    let loss = |l: Option<f64>| l.map_or("-".to_string(), |v| format!("{v:.4}"));
    let _ = writeln!(
        s,
        "trained     epoch {}, step {}, train loss {}, validation loss {}",
        p.epoch,
        p.step,
        loss(p.train_loss),
        loss(p.val_loss)
    );
    let _ = writeln!(s, "seed        {}", p.seed);
    if let Some(parent) = &p.parent_sha256 {
        let _ = writeln!(s, "started     from the checkpoint with SHA-256 {parent} (--init-from)");
    }
    let _ = writeln!(s, "corpus      SHA-256 {}", p.corpus_sha256);
    let _ = writeln!(s, "written by  charrnn {}", p.charrnn_version);
    let _ =
        writeln!(s, "resumable   {}", if i.resumable { "yes" } else { "no (no optimizer state beside it)" });
    let sizes: Vec<String> = i.sampling_mib.iter().map(|(p, mib)| format!("{p} {mib:.1} MiB")).collect();
    let _ = writeln!(s, "sampling    weights in {}", sizes.join(", "));
    for r in &i.epochs {
        if let Record::Epoch { epoch, train_loss, val_loss, seconds, .. } = r {
            let _ = writeln!(
                s,
                "epoch {epoch:>4}  train {train_loss:.4}  validation {}  {seconds:.1} s",
                loss(*val_loss)
            );
        }
    }
    s
}
