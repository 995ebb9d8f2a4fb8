//! How well a model predicts a text: the mean loss per character over sequences scored from a
//! zero state (the validation loss of training, and `charrnn eval`), in nats and bits per
//! character and as perplexity.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Result};
use candle_core::DType;
use serde::Serialize;

use crate::collective::{Alone, Collective};
use crate::compute::Precision;
use crate::data::cache::Corpus;
use crate::data::vocab::Vocab;
use crate::data::{Batch, Sequences};
use crate::model::{ids_tensor, Model, Pass};
use crate::sample::Sampler;

/// Bits per character of a loss in nats per character.
pub fn bits(nats: f64) -> f64 {
    nats / std::f64::consts::LN_2
}

/// Mean loss per character over all sequences (no shuffling, partial last batch included).
pub fn mean_loss(model: &Model, seqs: &Sequences, batch_size: usize) -> Result<Option<f64>> {
    mean_loss_shared(model, seqs, batch_size, &Alone)
}

/// [`mean_loss`] computed by several ranks together: each scores every `size`-th chunk of
/// `batch_size` sequences (the chunks one process would score), and the sums are added. In
/// int8, which has no training forward, the sampler steps through the sequences.
pub fn mean_loss_shared(
    model: &Model,
    seqs: &Sequences,
    batch_size: usize,
    world: &dyn Collective,
) -> Result<Option<f64>> {
    if seqs.is_empty() {
        return Ok(None);
    }
    let indices: Vec<usize> = (0..seqs.len()).collect();
    let mut total = [crate::compute::on_compute_thread(model.device(), || {
        let mut total = 0.0;
        let chunks = indices.chunks(batch_size).skip(world.rank()).step_by(world.size());
        if model.compute().precision() == Precision::Int8 {
            let mut sampler = Sampler::new(model, batch_size.min(seqs.len()))?;
            for chunk in chunks {
                total += sampled_loss(&mut sampler, &seqs.batch(chunk))?;
            }
            return Ok(total);
        }
        for chunk in chunks {
            let b = seqs.batch(chunk);
            let inputs = ids_tensor(&b.inputs, b.batch_size, b.seq_len, model.device())?;
            let l = model.loss(&inputs, &b.targets, &Pass::Eval)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            total += l * chunk.len() as f64;
        }
        Ok(total)
    })?];
    world.sum_f64(&mut total)?;
    Ok(Some(total[0] / seqs.len() as f64))
}

/// The summed per-sequence mean losses of a batch, stepping `sampler` through it from the zero
/// state: the log-softmax of each step's logits at the target, in f64.
fn sampled_loss(sampler: &mut Sampler, b: &Batch) -> Result<f64> {
    sampler.retain_rows(|_| false);
    sampler.add_rows(b.batch_size)?;
    let (t, v) = (b.seq_len, sampler.vocab_size());
    let mut ids = vec![0u32; b.batch_size];
    let mut total = 0.0;
    for step in 0..t {
        for (r, id) in ids.iter_mut().enumerate() {
            *id = b.inputs[r * t + step];
        }
        let logits = sampler.step(&ids);
        for (r, row) in logits.chunks_exact(v).enumerate() {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            total += max + sum.ln() - row[b.targets[r * t + step] as usize] as f64;
        }
    }
    Ok(total / t as f64)
}

/// A text's score under a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// Characters predicted and scored.
    pub characters: usize,
    /// Characters of the text outside the model's vocabulary, left out before scoring.
    pub skipped: usize,
    /// Those characters, each as a quoted Rust literal (`'\u{1f600}'`), sorted.
    pub unknown_characters: Vec<String>,
    /// Mean cross-entropy per character, in nats.
    pub nats_per_char: f64,
    /// The same in bits.
    pub bits_per_char: f64,
    /// e to the nats: the model's effective number of choices per character.
    pub perplexity: f64,
}

impl Score {
    /// The score as one line (two with skipped characters) for people.
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
///
/// A model that has learnt nothing spreads its bets over the whole vocabulary: about ln V nats,
/// log2 V bits and a perplexity of about V per character.
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use charrnn_core::data::vocab::Vocab;
/// use charrnn_core::model::{Config, Model};
/// use charrnn_core::{score, Compute};
/// use rand::SeedableRng;
///
/// let text = "to be, or not to be, that is the question\n".repeat(20);
/// let vocab = Vocab::from_text(&text);
/// let mut rng = rand::rngs::StdRng::seed_from_u64(3);
/// let config = Config::gru(vocab.len(), 8, 16);
/// let model = Model::new_random(config, candle_core::DType::F32, &Compute::cpu(), &mut rng)?;
/// let s = score::score(&model, &vocab, &text, 50, 8)?;
/// let v = vocab.len() as f64;
/// assert!((s.nats_per_char - v.ln()).abs() < 0.1, "{s:?}");
/// assert!((s.bits_per_char - score::bits(s.nats_per_char)).abs() < 1e-12);
/// assert!((s.perplexity / v - 1.0).abs() < 0.1);
/// assert_eq!(s.skipped, 0);
/// # Ok(())
/// # }
/// ```
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
        bits_per_char: bits(nats),
        perplexity: nats.exp(),
    })
}
