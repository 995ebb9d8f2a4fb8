//! `charrnn eval` (how well a model predicts a text) and `charrnn info` (what a checkpoint is).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Result};
use candle_core::DType;
use serde::Serialize;

use crate::checkpoint::{self, Provenance};
use crate::data::cache::Corpus;
use crate::data::vocab::Vocab;
use crate::data::Sequences;
use crate::metrics::{self, Metrics, Record};
use crate::model::{ids_tensor, Config, Model, Pass};

/// Mean loss per character over all sequences (no shuffling, partial last batch included).
pub fn mean_loss(model: &Model, seqs: &Sequences, batch_size: usize) -> Result<Option<f64>> {
    if seqs.is_empty() {
        return Ok(None);
    }
    let indices: Vec<usize> = (0..seqs.len()).collect();
    crate::device::on_compute_thread(model.device(), || {
        let mut total = 0.0;
        for chunk in indices.chunks(batch_size) {
            let b = seqs.batch(chunk);
            let inputs = ids_tensor(&b.inputs, b.batch_size, b.seq_len, model.device())?;
            let l = model.loss(&inputs, &b.targets, &Pass::Eval)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            total += l * chunk.len() as f64;
        }
        Ok(Some(total / seqs.len() as f64))
    })
}

#[derive(Debug, Serialize)]
pub struct Score {
    /// Characters predicted and scored.
    pub characters: usize,
    /// Characters of the text outside the model's vocabulary, left out before scoring.
    pub skipped: usize,
    pub unknown_characters: Vec<String>,
    pub nats_per_char: f64,
    pub bits_per_char: f64,
    pub perplexity: f64,
}

impl Score {
    pub fn describe(&self, checkpoint: &Path, data: &impl std::fmt::Display) -> String {
        let mut s = format!(
            "{} under {}: {:.4} nats/char, {:.4} bits/char, perplexity {:.3} over {} characters",
            data,
            checkpoint.display(),
            self.nats_per_char,
            self.bits_per_char,
            self.perplexity,
            self.characters
        );
        if self.skipped > 0 {
            let _ = write!(
                s,
                "\nskipped {} characters outside the vocabulary: {}",
                self.skipped,
                self.unknown_characters.join(" ")
            );
        }
        s
    }
}

/// Mean cross-entropy of `text` under `model`, scored in consecutive sequences of `seq_len`
/// predictions from a zero state (as the validation loss during training). Characters outside
/// the vocabulary are counted and dropped from the stream.
pub fn score(model: &Model, vocab: &Vocab, text: &str, seq_len: usize, batch_size: usize) -> Result<Score> {
    let (ids, skipped, unknown) = vocab.encode_known(text);
    score_ids(model, ids, skipped, unknown, seq_len, batch_size)
}

/// [`score`] for a prepared corpus, whose ids are in its own vocabulary: they are translated
/// to the model's, chunk by chunk, leaving out (and counting) the characters it lacks.
pub fn score_corpus(
    model: &Model,
    vocab: &Vocab,
    corpus: &Corpus,
    seq_len: usize,
    batch_size: usize,
) -> Result<Score> {
    let to_model: Vec<Option<u32>> = corpus.vocab.chars().iter().map(|&c| vocab.id(c)).collect();
    let (mut ids, mut skipped, mut unknown) = (Vec::new(), 0, BTreeSet::new());
    let (all, mut chunk) = (corpus.ids(), Vec::new());
    for start in (0..all.len()).step_by(1 << 20) {
        chunk.clear();
        all.extend(start..(start + (1 << 20)).min(all.len()), &mut chunk);
        for &id in &chunk {
            match to_model[id as usize] {
                Some(m) => ids.push(m),
                None => {
                    skipped += 1;
                    unknown.insert(corpus.vocab.char(id));
                }
            }
        }
    }
    score_ids(model, ids, skipped, unknown, seq_len, batch_size)
}

fn score_ids(
    model: &Model,
    ids: Vec<u32>,
    skipped: usize,
    unknown: BTreeSet<char>,
    seq_len: usize,
    batch_size: usize,
) -> Result<Score> {
    if ids.len() < 2 {
        bail!("the text has {} characters the model knows; at least 2 are needed to score it", ids.len());
    }
    let seq_len = seq_len.min(ids.len() - 1);
    let seqs = Sequences::new(&ids, seq_len);
    let nats = mean_loss(model, &seqs, batch_size)?.expect("at least one sequence");
    Ok(Score {
        characters: seqs.len() * seq_len,
        skipped,
        unknown_characters: unknown.iter().map(|c| format!("{c:?}")).collect(),
        nats_per_char: nats,
        bits_per_char: nats / std::f64::consts::LN_2,
        perplexity: nats.exp(),
    })
}

#[derive(Debug, Serialize)]
pub struct Info {
    pub path: String,
    pub config: Config,
    pub vocab: Vec<String>,
    pub parameters: usize,
    pub layer_parameters: Vec<(String, usize)>,
    pub provenance: Provenance,
    pub resumable: bool,
    /// The epoch records of `metrics.jsonl` beside the checkpoint, up to its step.
    pub epochs: Vec<Record>,
}

pub fn info(path: &Path) -> Result<Info> {
    info_of(path, &checkpoint::load(path, &candle_core::Device::Cpu)?)
}

/// [`info`] of a checkpoint already loaded from `path`.
pub fn info_of(path: &Path, ckpt: &checkpoint::Checkpoint) -> Result<Info> {
    let config = ckpt.model.config.clone();
    let log = path.with_file_name(Metrics::FILE);
    let epochs = if log.exists() {
        metrics::read(&log)?
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
        epochs,
        config,
    })
}

pub fn describe_info(i: &Info) -> String {
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
