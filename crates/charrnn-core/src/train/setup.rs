//! Setting a run up: the corpus and its split into batches, and the model and optimizer, new
//! or resumed.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, SeedableRng};

use super::events::RunSummary;
use super::resume::Resumed;
use super::state::{RunIdentity, RunState};
use crate::compute::Compute;
use crate::data::cache::{self, BaseVocab, CacheOptions, Corpus};
use crate::data::{split_validation, Lanes, Sequences};
use crate::model::{Config, Model};
use crate::notice::Notify;
use crate::optim::Adam;
use crate::train::settings::Settings;

/// The training text, from its token cache (built or checked first).
pub(super) fn corpus(
    s: &Settings,
    cache_dir: Option<&std::path::Path>,
    base: Option<BaseVocab>,
    notify: Notify,
) -> Result<Corpus> {
    let options = CacheOptions {
        dir: cache_dir.map(std::path::Path::to_path_buf),
        separator: s.data.doc_separator.clone(),
        skip_invalid: s.data.skip_invalid,
        base,
    };
    cache::prepare(&s.data.data, &options, notify)
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
                corpus.label,
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
    pub state: RunState,
    /// The recurrent state to carry into the first batch (stateful runs resumed mid-epoch).
    pub carried: Option<Vec<Tensor>>,
}

/// A new model (the seed's initialisation), a fresh optimizer, and a new run id.
pub(super) fn fresh(s: &Settings, corpus: &Corpus, compute: &Compute) -> Result<Start> {
    let config = s.model.config(corpus.vocab.len());
    check_memory(&config, s)?;
    let mut model = Model::new_random(config, DType::F32, compute, &mut StdRng::seed_from_u64(s.seed))?;
    if s.model.tie_weights {
        model.tie()?;
    }
    let mut adam = Adam::new(model.parameters())?;
    adam.weight_decay = s.optimizer.weight_decay;
    adam.kernel = compute.kernel();
    let state = RunState::fresh(RunIdentity {
        run_id: Some(format!("{:016x}", rand::random::<u64>())),
        seed: s.seed,
        corpus_sha256: corpus.sha256.clone(),
        parent_sha256: None,
    });
    Ok(Start { model, adam, state, carried: None })
}

/// The resumed run's model (in `compute`) and optimizer, once the corpus is known to be the
/// same text and the saved position to lie inside an epoch of `per_epoch` batches.
pub(super) fn resumed(
    r: Resumed,
    s: &Settings,
    corpus: &Corpus,
    per_epoch: usize,
    compute: &Compute,
) -> Result<Start> {
    let provenance = &r.checkpoint.provenance;
    if provenance.corpus_sha256 != corpus.sha256 {
        bail!(
            "{} differs from the text {} was trained on (SHA-256 {}); resume with the same corpus",
            corpus.label,
            r.path.display(),
            provenance.corpus_sha256
        );
    }
    // A run stopped after its epoch's last batch (before the epoch's end) stands at batch
    // `per_epoch`: it resumes by ending that epoch.
    if r.position.batch > per_epoch {
        bail!(
            "{} says the run stopped after batch {} of an epoch that has {per_epoch} batches: it is damaged or not this run's; resume from another checkpoint",
            crate::checkpoint::optim_path(&r.path).display(),
            r.position.batch
        );
    }
    let mut adam = r.adam;
    adam.weight_decay = s.optimizer.weight_decay;
    adam.kernel = compute.kernel();
    check_memory(&r.checkpoint.model.config, s)?;
    let carried = (!r.carried.is_empty()).then_some(r.carried);
    let identity = RunIdentity {
        run_id: None, // the position's
        seed: s.seed,
        corpus_sha256: corpus.sha256.clone(),
        parent_sha256: provenance.parent_sha256.clone(),
    };
    let state = RunState::resumed(&r.position, adam.updates(), identity);
    let mut model = r.checkpoint.model;
    model.set_compute(compute.clone())?;
    Ok(Start { model, adam, state, carried })
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

/// What the run trains on and with, for its first event; `batches_left` is what this
/// invocation will run unless it stops early.
pub(super) fn summary(
    s: &Settings,
    corpus: &Corpus,
    batches: &Batches,
    config: &Config,
    batches_left: u64,
) -> RunSummary {
    let d = &s.data;
    RunSummary {
        corpus: corpus.describe(),
        train_chars: batches.train_chars,
        val_chars: batches.val_chars,
        sequences: (!d.stateful).then(|| batches.train.len()),
        sequence_chars: d.seq_len + 1,
        batch_size: d.batch_size,
        batches_per_epoch: batches.per_epoch,
        batches_left,
        layers: config.layer_sizes(),
        parameters: config.parameter_count(),
        seed: s.seed,
    }
}
