//! `train --init-from`: a new run that starts from a trained model's weights, on new text,
//! with a fresh optimizer. The model keeps its parent's shape; its vocabulary is the parent's,
//! extended at the end by the new text's other characters with `--extend-vocab` (their
//! embedding and output rows start as a fresh model's would; every other value is the
//! parent's).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use sha2::{Digest, Sha256};

use super::settings::{Settings, SettingsArgs};
use super::setup::{self, Start};
use crate::checkpoint::{self, Checkpoint};
use crate::compute::Compute;
use crate::data::cache::{BaseVocab, Corpus};

/// The checkpoint a run starts from.
pub(super) struct Parent {
    pub path: PathBuf,
    pub checkpoint: Checkpoint,
    /// SHA-256 of the checkpoint file, recorded in the new run's provenance.
    pub sha256: String,
}

impl Parent {
    pub fn load(path: &Path) -> Result<Parent> {
        let path = checkpoint::resolve(path)?;
        let bytes = crate::files::read(&path)
            .with_context(|| format!("cannot read --init-from {}", path.display()))?;
        let sha256 = crate::data::hex(&Sha256::digest(&bytes));
        let checkpoint = checkpoint::from_bytes(&bytes, &Compute::cpu())
            .map_err(|e| {
                let problem = format!("{e:#}");
                anyhow::Error::new(checkpoint::InvalidCheckpoint { path: path.clone(), problem })
            })
            .with_context(|| format!("--init-from {}", path.display()))?;
        Ok(Parent { path, checkpoint, sha256 })
    }

    /// The new text is encoded with the parent's vocabulary.
    pub fn base_vocab(&self, extend: bool) -> BaseVocab {
        BaseVocab { vocab: self.checkpoint.vocab.clone(), extend }
    }

    /// The run's settings: the parent's model shape, under the preset and the typed flags; a
    /// typed shape flag that disagrees is refused.
    pub fn settings(&self, mut base: Settings, typed: &SettingsArgs) -> Result<Settings> {
        let c = &self.checkpoint.model.config;
        base.model.embedding_dim = c.embedding_dim;
        base.model.rnn_units = c.rnn_units;
        base.model.layers = c.layers;
        base.model.cell = c.cell;
        // Tying is not part of the saved shape: `start` checks the parent allows it.
        base.model.tie_weights |= typed.model.tie_weights;
        let s = Settings::fresh(base.clone(), typed)?;
        if let Some(d) = base.model.first_difference(&s.model) {
            bail!(
                "{} {} disagrees with {}, which has {}; a model started from a checkpoint keeps its shape (leave {} out)",
                d.flag,
                d.now,
                self.path.display(),
                d.was,
                d.flag
            );
        }
        Ok(s)
    }

    /// A fresh start (the seed's initialisation, a new optimizer and run) with the parent's
    /// weights in place: whole tensors, or the first rows where the vocabulary grew.
    pub fn start(&self, s: &Settings, corpus: &Corpus, compute: &Compute) -> Result<Start> {
        if s.model.tie_weights && !self.checkpoint.model.output_is_embedding()? {
            bail!(
                "--tie-weights: {} was trained with an output weight of its own, which tying would replace by its embedding; start from it untied (leave --tie-weights out)",
                self.path.display()
            );
        }
        let mut start = setup::fresh(s, corpus, compute)?;
        // A tied model's output weight is its embedding: set once, from the parent's embedding.
        let parents = self.checkpoint.model.named();
        for ((name, var), (parent_name, parent)) in start.model.named().zip(parents) {
            if start.model.is_tied() && name == "dense.weight" {
                continue;
            }
            assert_eq!(name, parent_name, "one parameter layout");
            let parent = parent.as_tensor().to_device(compute.device())?;
            let (have, want) = (parent.dims().to_vec(), var.dims().to_vec());
            let value = if have == want {
                parent
            } else if have[1..] == want[1..] && have[0] < want[0] {
                let added = var.as_tensor().narrow(0, have[0], want[0] - have[0])?;
                Tensor::cat(&[&parent, &added], 0)?
            } else {
                bail!("{name} is {have:?} in {} but {want:?} here", self.path.display());
            };
            var.set(&value)?;
        }
        start.state.identity.parent_sha256 = Some(self.sha256.clone());
        Ok(start)
    }
}
