//! Setting a run up: the corpus and its split into batches, and the model and optimizer, new
//! or resumed.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, SeedableRng};

use super::resume::{Position, Resumed};
use crate::data::cache::{self, BaseVocab, CacheOptions, Corpus};
use crate::data::{split_validation, Lanes, Sequences};
use crate::model::{Config, Model};
use crate::optim::Adam;
use crate::train::settings::Settings;

/// The training text, from its token cache (built or checked first).
pub(super) fn corpus(
    s: &Settings,
    cache_dir: Option<&std::path::Path>,
    base: Option<BaseVocab>,
) -> Result<Corpus> {
    let options = CacheOptions {
        dir: cache_dir.map(std::path::Path::to_path_buf),
        separator: s.data.doc_separator.clone(),
        skip_invalid: s.data.skip_invalid,
        base,
    };
    cache::prepare(&s.data.data, &options)
}

/// The corpus cut into what an epoch reads: shuffled sequences or (stateful) contiguous lanes,
/// and the validation sequences.
pub(super) struct Batches<'a> {
    pub train: Sequences<'a>,
    pub lanes: Lanes<'a>,
    pub val: Sequences<'a>,
    pub train_chars: usize,
    pub val_chars: usize,
    pub per_epoch: usize,
}

impl<'a> Batches<'a> {
    /// Refuses a corpus too short for one batch, saying how long it must be.
    pub fn new(corpus: &'a Corpus, s: &Settings) -> Result<Self> {
        let d = &s.data;
        let (train_ids, val_ids) = split_validation(corpus.ids(), d.val_fraction);
        let train = Sequences::new(train_ids, d.seq_len);
        let lanes = Lanes::new(train_ids, d.batch_size, d.seq_len);
        if train.len() < d.batch_size || (d.stateful && lanes.is_empty()) {
            let need = ((d.batch_size * (d.seq_len + 1)) as f64 / (1.0 - d.val_fraction)).ceil();
            bail!(
                "the corpus {} is too short: one batch of {} sequences of {} characters needs at least {} characters{}, it has {}. Use a longer text or lower --batch-size / --seq-len",
                d.data,
                d.batch_size,
                d.seq_len + 1,
                need,
                if d.val_fraction > 0.0 { format!(" (with --val-fraction {})", d.val_fraction) } else { String::new() },
                corpus.len()
            );
        }
        let per_epoch = if d.stateful { lanes.len() } else { train.len() / d.batch_size };
        Ok(Batches {
            train,
            lanes,
            val: Sequences::new(val_ids, d.seq_len),
            train_chars: train_ids.len(),
            val_chars: val_ids.len(),
            per_epoch,
        })
    }
}

/// What the epoch loop starts from.
pub(super) struct Start {
    pub model: Model,
    pub adam: Adam,
    pub position: Position,
    /// The recurrent state to carry into the first batch (stateful runs resumed mid-epoch).
    pub carried: Option<Vec<Tensor>>,
    /// The checkpoint a fine-tuned run started from, by its SHA-256.
    pub parent_sha256: Option<String>,
}

/// A new model (the seed's initialisation), a fresh optimizer, and a new run id.
pub(super) fn fresh(s: &Settings, corpus: &Corpus, device: &Device) -> Result<Start> {
    let m = &s.model;
    let config =
        Config::gru(corpus.vocab.len(), m.embedding_dim, m.rnn_units).with_layers(m.layers).with_cell(m.cell);
    check_memory(&config, s)?;
    let model = Model::new_random(config, DType::F32, device, &mut StdRng::seed_from_u64(s.seed))?;
    let mut adam = Adam::new(model.parameters())?;
    adam.weight_decay = s.optimizer.weight_decay;
    let position = Position {
        settings: s.clone(),
        epoch: 0,
        batch: 0,
        epoch_loss_sum: 0.0,
        best_val_loss: None,
        run_id: Some(format!("{:016x}", rand::random::<u64>())),
    };
    Ok(Start { model, adam, position, carried: None, parent_sha256: None })
}

/// The resumed run's model and optimizer, once the corpus is known to be the same text.
pub(super) fn resumed(r: Resumed, s: &Settings, corpus: &Corpus) -> Result<Start> {
    let provenance = &r.checkpoint.provenance;
    if provenance.corpus_sha256 != corpus.sha256 {
        bail!(
            "{} differs from the text {} was trained on (SHA-256 {}); resume with the same corpus",
            s.data.data,
            r.path.display(),
            provenance.corpus_sha256
        );
    }
    let mut adam = r.adam;
    adam.weight_decay = s.optimizer.weight_decay;
    check_memory(&r.checkpoint.model.config, s)?;
    eprintln!("resuming {} at epoch {} batch {}", r.path.display(), r.position.epoch + 1, r.position.batch);
    let carried = (!r.carried.is_empty()).then_some(r.carried);
    let parent_sha256 = r.checkpoint.provenance.parent_sha256.clone();
    Ok(Start { model: r.checkpoint.model, adam, position: r.position, carried, parent_sha256 })
}

/// Refuses a run whose sizes need more memory than the machine has.
fn check_memory(config: &Config, s: &Settings) -> Result<()> {
    let (batch, steps) = (s.data.batch_size, s.data.seq_len);
    let sizes = format!(
        "--embedding-dim {} --rnn-units {} --layers {} --batch-size {batch} --seq-len {steps} ({} characters in the vocabulary)",
        config.embedding_dim, config.rnn_units, config.layers, config.vocab_size
    );
    crate::budget::check("training", crate::budget::training_bytes(config, batch, steps), &sizes)
}

/// The run's summary on stderr: corpus, split, model, seed.
pub(super) fn describe(s: &Settings, corpus: &Corpus, batches: &Batches, config: &Config) {
    let d = &s.data;
    eprintln!("{}", corpus.describe(&d.data));
    let order = match d.stateful {
        false => format!("{} shuffled sequences of {}", batches.train.len(), d.seq_len + 1),
        true => format!(
            "{} contiguous lanes of {} read in order (--stateful)",
            d.batch_size,
            batches.train_chars / d.batch_size
        ),
    };
    eprintln!(
        "split: {} training / {} validation characters; {order}; {} batches of {} per epoch",
        batches.train_chars, batches.val_chars, batches.per_epoch, d.batch_size
    );
    let layers: Vec<String> = config.layer_sizes().iter().map(|(n, c)| format!("{n} {c}")).collect();
    eprintln!("model: {} | total {} parameters", layers.join(" | "), config.parameter_count());
    eprintln!("seed {} (pass --seed {} to repeat this run)", s.seed, s.seed);
}
