//! A training run's settings as types.
//!
//! Each group is declared once, in `with_settings_groups!`, and that declaration makes the
//! settings (what a run uses and saves beside its checkpoints) and the overrides a user types,
//! where every setting a preset or a resumed run may supply is optional, so "typed by the user"
//! is `Some`. The binary expands the same declaration into its command-line flags (the
//! `#[arg(...)]` lines, which only it reads), so a setting's flag, rule and saved form come
//! from one line. One resolver turns `preset ← saved run ← typed overrides` into a validated
//! [`Settings`]; a resumed run compares its fixed groups with `==` and names a differing
//! setting's flag from the field itself.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::choice::Choice;
use crate::compute::Precision;
use crate::model::Config;

/// The flag of a settings field: `rnn_units` → `--rnn-units`, as clap derives it.
fn flag(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

/// The setting with the typed value laid over it.
macro_rules! overlay {
    (value $setting:expr, $typed:expr) => {
        $typed.clone().unwrap_or_else(|| $setting.clone())
    };
    (optional $setting:expr, $typed:expr) => {
        $typed.clone().or_else(|| $setting.clone())
    };
    (switch $setting:expr, $typed:expr) => {
        $setting || $typed
    };
    (list $setting:expr, $typed:expr) => {
        match $typed.is_empty() {
            true => $setting.clone(),
            false => $typed.clone().into(),
        }
    };
}

macro_rules! check_rule {
    (value $rule:expr, $field:ident, $v:expr) => {
        $rule.check_flag(&flag(stringify!($field)), $v).err()
    };
    (optional $rule:expr, $field:ident, $v:expr) => {
        $v.and_then(|v| $rule.check_flag(&flag(stringify!($field)), v).err())
    };
}

/// Hands every settings group's declaration to `$callback!`, one invocation per group:
/// `$name` (the settings) and `$args` (the overrides a user types). Each field is `value` (may
/// be left out), `optional` (a setting that may be absent), `switch` (can only turn the setting
/// on) or `list` (given several values, which replace the setting's), with its type as a
/// setting and `as` an override; `=>` gives the rule its value must satisfy, from whatever
/// source. `#[arg(...)]` is the command line's spelling (read by the binary only), `#[serde]`
/// the saved form's (read by the core only).
#[doc(hidden)]
#[macro_export]
macro_rules! with_settings_groups {
    ($callback:ident) => {
        $callback! {
            /// The model's shape (the vocabulary comes from the text).
            ModelSettings / ModelArgs {
                /// Width of the character embedding [tutorial: 256]
                #[arg(long, value_parser = positive)]
                value embedding_dim: usize as Option<usize> => $crate::checks::AT_LEAST_ONE;
                /// Width of the recurrent state [tutorial: 1024]
                #[arg(long, value_parser = positive)]
                value rnn_units: usize as Option<usize> => $crate::checks::AT_LEAST_ONE;
                /// Stacked recurrent layers [tutorial: 1]
                #[arg(long, value_parser = positive)]
                #[serde(default = "one")]
                value layers: usize as Option<usize> => $crate::checks::AT_LEAST_ONE;
                /// Recurrent cell (parameters in the layout of PyTorch's module of that name) [tutorial: gru]
                #[arg(long, value_parser = choice::<$crate::ops::cells::Cell>())]
                #[serde(default)]
                value cell: $crate::ops::cells::Cell as Option<$crate::ops::cells::Cell>;
                /// Tie the output layer's weight to the embedding (one matrix, saved under both
                /// names); needs --embedding-dim equal to --rnn-units
                #[arg(long)]
                #[serde(default, skip_serializing_if = "std::ops::Not::not")]
                switch tie_weights: bool as bool;
            }
        }

        $callback! {
            /// The text and how it is cut into batches.
            DataSettings / DataArgs {
                /// UTF-8 text to train on: files, folders (read recursively, in sorted path order,
                /// hidden files skipped) and glob patterns, one after the other [default:
                /// data/shakespeare.txt]
                #[arg(long, num_args = 1.., value_name = "PATH")]
                list data: $crate::data::sources::Sources as Vec<::std::path::PathBuf>;
                /// Put between the documents of several files [default: a blank line, "\n\n"]
                #[arg(long, value_name = "TEXT")]
                #[serde(default = "blank_line", skip_serializing_if = "is_blank_line")]
                value doc_separator: String as Option<String>;
                /// Leave out files that are not UTF-8 (they are listed) instead of refusing them
                #[arg(long)]
                #[serde(default, skip_serializing_if = "std::ops::Not::not")]
                switch skip_invalid: bool as bool;
                /// Sequences per batch [tutorial: 64]
                #[arg(long, value_parser = positive)]
                value batch_size: usize as Option<usize> => $crate::checks::AT_LEAST_ONE;
                /// Characters per training sequence [tutorial: 100]
                #[arg(long, value_parser = positive)]
                value seq_len: usize as Option<usize> => $crate::checks::AT_LEAST_ONE;
                /// Shuffle buffer size, in sequences (tf.data's shuffle) [tutorial: 10000]
                #[arg(long, value_parser = positive)]
                value buffer_size: usize as Option<usize> => $crate::checks::AT_LEAST_ONE;
                /// Share of the text (its end) held out for validation; 0 reproduces the tutorial [default: 0.1]
                #[arg(long, value_parser = fraction, allow_negative_numbers = true)]
                value val_fraction: f64 as Option<f64> => $crate::checks::FRACTION;
                /// Truncated backpropagation through time: contiguous lanes in order, the state carried
                /// from batch to batch (no shuffling)
                #[arg(long)]
                #[serde(default)]
                switch stateful: bool as bool;
            }
        }

        $callback! {
            /// The optimizer, its schedule and the regularisation.
            OptimizerSettings / OptimizerArgs {
                /// Adam step size [tutorial: 0.001]
                #[arg(long, value_parser = positive_f64, allow_negative_numbers = true)]
                value learning_rate: f64 as Option<f64> => $crate::checks::POSITIVE;
                /// Rescale gradients whose global L2 norm exceeds X (off in the tutorial)
                #[arg(long, value_parser = positive_f64, value_name = "X")]
                #[serde(default)]
                optional clip_grad_norm: Option<f64> as Option<f64> => $crate::checks::POSITIVE;
                /// Learning-rate schedule after the warm-up [tutorial: constant]
                #[arg(long, value_parser = choice::<$crate::train::settings::LrSchedule>())]
                #[serde(default)]
                value lr_schedule: $crate::train::settings::LrSchedule as Option<$crate::train::settings::LrSchedule>;
                /// Steps of linear learning-rate warm-up [tutorial: 0]
                #[arg(long)]
                #[serde(default)]
                value warmup_steps: u64 as Option<u64>;
                /// Final learning rate of the cosine schedule [tutorial: 0]
                #[arg(long, value_parser = non_negative_f64)]
                #[serde(default)]
                value min_lr: f64 as Option<f64> => $crate::checks::NON_NEGATIVE;
                /// Decoupled weight decay (AdamW); 0 is the tutorial's plain Adam
                #[arg(long, value_parser = non_negative_f64)]
                #[serde(default)]
                value weight_decay: f64 as Option<f64> => $crate::checks::NON_NEGATIVE;
                /// Dropout probability after each recurrent layer (training only) [tutorial: 0]
                #[arg(long, value_parser = fraction, allow_negative_numbers = true)]
                #[serde(default)]
                value dropout: f64 as Option<f64> => $crate::checks::FRACTION;
                /// DropConnect on each layer's recurrent matrix: one mask per batch for all time
                /// steps (AWD-LSTM's weight drop; training only) [default: 0]
                #[arg(long, value_parser = fraction, allow_negative_numbers = true, value_name = "P")]
                #[serde(default, skip_serializing_if = "is_zero")]
                value weight_drop: f64 as Option<f64> => $crate::checks::FRACTION;
                /// Variational (locked) dropout of each layer's input and output: one mask per
                /// sequence for all time steps (training only) [default: 0]
                #[arg(long, value_parser = fraction, allow_negative_numbers = true, value_name = "P")]
                #[serde(default, skip_serializing_if = "is_zero")]
                value locked_dropout: f64 as Option<f64> => $crate::checks::FRACTION;
                /// Drop whole characters: rows of the embedding, one mask per batch (training
                /// only) [default: 0]
                #[arg(long, value_parser = fraction, allow_negative_numbers = true, value_name = "P")]
                #[serde(default, skip_serializing_if = "is_zero")]
                value embedding_dropout: f64 as Option<f64> => $crate::checks::FRACTION;
            }
        }

        $callback! {
            /// How long the run goes and what it keeps: the settings a resumed run may change.
            RunControl / RunControlArgs {
                /// Passes over the training data [tutorial: 10]
                #[arg(long, value_parser = positive)]
                value epochs: usize as Option<usize> => $crate::checks::AT_LEAST_ONE;
                /// Save a checkpoint every N epochs (and after the last) [default: 5]
                #[arg(long, value_parser = positive)]
                value save_every: usize as Option<usize> => $crate::checks::AT_LEAST_ONE;
                /// Keep only the newest N periodic checkpoints
                #[arg(long, value_parser = positive)]
                optional keep: Option<usize> as Option<usize> => $crate::checks::AT_LEAST_ONE;
                /// Fit the run into M minutes: at the end of its first whole epoch, --epochs
                /// becomes the number of epochs of that one's length (validation included, plus
                /// 3% for drift) that fit into what loading and saving have left of M, at most
                /// the --epochs given, and the learning-rate schedule ends with them
                /// [default: none; hour: 60]
                #[arg(long, value_parser = positive_f64, allow_negative_numbers = true, value_name = "M")]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                optional fit_minutes: Option<f64> as Option<f64> => $crate::checks::POSITIVE;
            }
        }
    };
}

/// The core's expansion of a settings group: the settings, the overrides and their rules.
macro_rules! settings_group {
    (
        $(#[doc = $sdoc:literal])*
        $name:ident / $args:ident {
            $(
                $(#[doc = $doc:literal])*
                #[arg($($arg:tt)*)]
                $(#[serde($($serde:tt)*)])?
                $kind:ident $field:ident: $ty:ty as $arg_ty:ty $(=> $rule:expr)?;
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                $(#[serde($($serde)*)])?
                pub $field: $ty,
            )*
        }

        $(#[doc = $sdoc])*
        ///
        /// The overrides: what a user typed (`None`, `false` or empty where nothing was).
        #[derive(Clone, Debug, Default)]
        pub struct $args {
            $(
                $(#[doc = $doc])*
                pub $field: $arg_ty,
            )*
        }

        impl $name {
            /// These settings with the typed overrides laid over them.
            pub fn overlay(&self, typed: &$args) -> Self {
                $name { $($field: overlay!($kind self.$field, typed.$field),)* }
            }

            /// The first setting that differs in `other`.
            pub fn first_difference(&self, other: &Self) -> Option<Difference> {
                $(
                    if self.$field != other.$field {
                        return Some(Difference {
                            flag: flag(stringify!($field)),
                            was: shown(&self.$field),
                            now: shown(&other.$field),
                        });
                    }
                )*
                None
            }

            /// The first value that breaks its rule, as "--flag must be …, got v".
            pub fn problem(&self) -> Option<String> {
                None $($(.or_else(|| check_rule!($kind $rule, $field, self.$field)))?)*
            }
        }
    };
}

with_settings_groups!(settings_group);

/// A setting that differs between two sets of settings: its flag and both values as the
/// command line spells them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The setting's flag (`--rnn-units`).
    pub flag: String,
    /// Its value in the first set.
    pub was: String,
    /// Its value in the second.
    pub now: String,
}

/// A setting's value as the command line spells it: its saved form (the enums' lowercase
/// names, paths as text), `none` for an absent one.
pub fn shown(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) => "none".to_string(),
        Ok(v) => v.to_string(),
        Err(e) => format!("({e})"),
    }
}

/// How the learning rate moves after the warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The same rate throughout (after any warm-up).
    #[default]
    Constant,
    /// Cosine decay from the learning rate to the minimum over the run.
    Cosine,
}

impl Choice for LrSchedule {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (LrSchedule::Constant, "constant", "The same rate throughout (after any warm-up)"),
        (LrSchedule::Cosine, "cosine", "Cosine decay from --learning-rate to --min-lr over the run"),
    ];
}

impl std::fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn one() -> usize {
    1
}

fn blank_line() -> String {
    "\n\n".to_string()
}

/// Settings at their defaults are left out of the saved form, which therefore stays what
/// runs saved before they existed.
fn is_blank_line(s: &str) -> bool {
    s == "\n\n"
}

impl OptimizerSettings {
    /// What a training step drops.
    pub fn dropouts(&self) -> crate::model::Dropout {
        crate::model::Dropout {
            output: self.dropout as f32,
            weight: self.weight_drop as f32,
            locked: self.locked_dropout as f32,
            embedding: self.embedding_dropout as f32,
        }
    }
}

impl ModelSettings {
    /// The model these settings make for a vocabulary of `vocab_size` characters.
    pub fn config(&self, vocab_size: usize) -> Config {
        Config::gru(vocab_size, self.embedding_dim, self.rnn_units)
            .with_layers(self.layers)
            .with_cell(self.cell)
    }
}

/// Everything that defines a training run; saved with each resumable checkpoint (as one flat
/// JSON object, the groups' fields side by side).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The model's shape.
    #[serde(flatten)]
    pub model: ModelSettings,
    /// The text and its batches.
    #[serde(flatten)]
    pub data: DataSettings,
    /// The optimizer, its schedule and the regularisation.
    #[serde(flatten)]
    pub optimizer: OptimizerSettings,
    /// The run's length and saving.
    #[serde(flatten)]
    pub control: RunControl,
    /// Seeds the initialisation, the shuffling and the dropout masks.
    pub seed: u64,
    /// The products' arithmetic; a resumed run may change it. Saved only when not f32, so
    /// files from before it existed and f32 runs read the same.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// The overrides of every setting a preset or a resumed run may also supply: what the user
/// typed.
#[derive(Clone, Debug, Default)]
pub struct SettingsArgs {
    /// The model's shape.
    pub model: ModelArgs,
    /// The text and its batches.
    pub data: DataArgs,
    /// The optimizer.
    pub optimizer: OptimizerArgs,
    /// The run's length and saving.
    pub control: RunControlArgs,
    /// Seed for initialisation and shuffling.
    pub seed: Option<u64>,
    /// Arithmetic of the matrix products.
    pub precision: Option<Precision>,
}

impl Settings {
    /// These settings with the typed flags laid over them; the seed, when neither has one,
    /// drawn at random.
    pub fn overlay(&self, typed: &SettingsArgs) -> Settings {
        Settings {
            model: self.model.overlay(&typed.model),
            data: self.data.overlay(&typed.data),
            optimizer: self.optimizer.overlay(&typed.optimizer),
            control: self.control.overlay(&typed.control),
            seed: typed.seed.unwrap_or(self.seed),
            precision: typed.precision.unwrap_or(self.precision),
        }
    }

    /// A fresh run: the preset's settings with the typed flags over them.
    pub fn fresh(base: Settings, typed: &SettingsArgs) -> Result<Settings> {
        let settings = base.overlay(typed);
        settings.validate()?;
        Ok(settings)
    }

    /// A resumed run: the saved settings, of which the typed flags may change only the run
    /// control (more epochs, another save schedule) and the precision; anything else that
    /// differs is refused.
    pub fn resumed(saved: &Settings, typed: &SettingsArgs, epochs_done: usize) -> Result<Settings> {
        let wanted = saved.overlay(typed);
        let differences = [
            saved.model.first_difference(&wanted.model),
            saved.data.first_difference(&wanted.data),
            saved.optimizer.first_difference(&wanted.optimizer),
            (saved.seed != wanted.seed).then(|| Difference {
                flag: flag("seed"),
                was: saved.seed.to_string(),
                now: wanted.seed.to_string(),
            }),
        ];
        if let Some(Difference { flag, was, now }) = differences.into_iter().flatten().next() {
            bail!(
                "{flag} {now} differs from the resumed run's {was}; a resumed run keeps its settings (start a new run in another --checkpoint-dir to change it)"
            );
        }
        if wanted.control.epochs < epochs_done {
            bail!(
                "--epochs {} is fewer than the {epochs_done} epochs already trained",
                wanted.control.epochs
            );
        }
        Ok(wanted)
    }

    /// The command line's rules, for settings from any source: flags, a preset, or a resumed
    /// run's optimizer file (which may be damaged or crafted). Also checks that the sizes the
    /// run multiplies together fit in memory arithmetic.
    pub fn validate(&self) -> Result<()> {
        let problem = (self.model.problem())
            .or_else(|| self.data.problem())
            .or_else(|| self.optimizer.problem())
            .or_else(|| self.control.problem());
        if let Some(p) = problem {
            bail!(p);
        }
        let m = &self.model;
        if m.tie_weights && m.embedding_dim != m.rnn_units {
            bail!(
                "--tie-weights needs --embedding-dim equal to --rnn-units (the output layer's width); got {} and {}",
                m.embedding_dim,
                m.rnn_units
            );
        }
        // One batch's characters, and a step's activations (batch × steps × width), are
        // computed in usize; refuse settings whose products overflow it.
        let (m, d) = (&self.model, &self.data);
        let widest = m.rnn_units.max(m.embedding_dim).saturating_mul(4);
        let fits = d
            .batch_size
            .checked_mul(d.seq_len.saturating_add(1))
            .and_then(|chars| chars.checked_mul(widest))
            .is_some();
        if !fits {
            bail!(
                "--batch-size {} × --seq-len {} × --rnn-units {} is too large to compute with",
                d.batch_size,
                d.seq_len,
                m.rnn_units
            );
        }
        Ok(())
    }
}
