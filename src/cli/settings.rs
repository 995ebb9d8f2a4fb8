//! The training settings' flags: the core's declaration of each settings group
//! (`charrnn_core::with_settings_groups!`), expanded here into clap arguments, so a setting's
//! flag comes from the same line as its rule and saved form. Each group's flags turn into the
//! core's overrides of the same name.

use charrnn_core::compute::Precision;
use charrnn_core::train::settings as core;

use super::{choice, fraction, non_negative_f64, positive, positive_f64};

/// A settings group's flags, and their conversion into the core's overrides.
macro_rules! cli_group {
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
        #[derive(clap::Args, Clone, Debug, Default)]
        pub struct $args {
            $(
                $(#[doc = $doc])*
                #[arg($($arg)*)]
                pub $field: $arg_ty,
            )*
        }

        impl From<$args> for core::$args {
            fn from(a: $args) -> Self {
                core::$args { $($field: a.$field,)* }
            }
        }
    };
}

charrnn_core::with_settings_groups!(cli_group);

/// The flags of `train` that a preset or a resumed run may also supply.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SettingsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub optimizer: OptimizerArgs,
    #[command(flatten)]
    pub control: RunControlArgs,
    /// Seed for initialisation and shuffling (random if not given; printed either way)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Arithmetic of the matrix products: f32, bf16 (f32 sums) on a CPU with AVX512-BF16, or
    /// tf32 on a GPU's tensor cores (weights, optimizer and gate math stay f32); f32 when not
    /// given
    #[arg(long, value_parser = choice::<Precision>())]
    pub precision: Option<Precision>,
}

impl From<SettingsArgs> for core::SettingsArgs {
    fn from(a: SettingsArgs) -> Self {
        core::SettingsArgs {
            model: a.model.into(),
            data: a.data.into(),
            optimizer: a.optimizer.into(),
            control: a.control.into(),
            seed: a.seed,
            precision: a.precision,
        }
    }
}
