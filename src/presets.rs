//! Named starting points for `train`: the tutorial, a model for a few minutes on a laptop CPU,
//! and a larger one for a GPU. Flags typed on the command line override a preset's values.

use crate::train::{LrSchedule, Settings};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Exactly the TensorFlow tutorial: GRU 1024, Adam 1e-3, 10 epochs
    Tutorial,
    /// The best validation loss in about 5 minutes on a 2-core CPU: GRU 512, 7 epochs, dropout 0.1, cosine decay
    Fast,
    /// The best validation loss measured: 2 × GRU 1024, dropout 0.4, AdamW, cosine over 10
    /// epochs (about 66 minutes on 2 CPU cores)
    Best,
}

impl Preset {
    /// Sets the preset's values on every setting the user did not type (`explicit`).
    pub fn apply(self, s: &mut Settings, explicit: &[String]) {
        let typed = |id: &str| explicit.iter().any(|e| e == id);
        macro_rules! set {
            ($($field:ident = $value:expr),* $(,)?) => {
                {
                    $(if !typed(stringify!($field)) { s.$field = $value; })*
                }
            };
        }
        match self {
            Preset::Tutorial => {}
            Preset::Fast => set!(
                rnn_units = 512,
                embedding_dim = 128,
                epochs = 7,
                dropout = 0.1,
                learning_rate = 2e-3,
                lr_schedule = LrSchedule::Cosine,
                warmup_steps = 50,
                min_lr = 1e-4,
                clip_grad_norm = Some(5.0),
            ),
            Preset::Best => set!(
                layers = 2,
                rnn_units = 1024,
                embedding_dim = 256,
                epochs = 10,
                learning_rate = 2e-3,
                lr_schedule = LrSchedule::Cosine,
                warmup_steps = 200,
                min_lr = 1e-4,
                dropout = 0.4,
                clip_grad_norm = Some(1.0),
                weight_decay = 0.01,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tutorial() -> Settings {
        Settings {
            data: "data/shakespeare.txt".into(),
            epochs: 10,
            batch_size: 64,
            seq_len: 100,
            buffer_size: 10_000,
            embedding_dim: 256,
            rnn_units: 1024,
            layers: 1,
            cell: crate::model::Cell::Gru,
            learning_rate: 1e-3,
            val_fraction: 0.1,
            save_every: 5,
            keep: None,
            seed: 1,
            clip_grad_norm: None,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            min_lr: 0.0,
            weight_decay: 0.0,
            dropout: 0.0,
            stateful: false,
        }
    }

    #[test]
    fn typed_flags_override_a_preset() {
        let mut s = tutorial();
        Preset::Tutorial.apply(&mut s, &[]);
        assert_eq!(s, tutorial());
        Preset::Fast.apply(&mut s, &["epochs".to_string()]);
        assert_eq!((s.rnn_units, s.epochs, s.lr_schedule), (512, 10, LrSchedule::Cosine));
    }
}
