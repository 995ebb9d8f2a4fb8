//! One optimisation step (forward, loss, backward, clipping, Adam) and the learning-rate
//! schedule.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

use crate::data::Batch;
use crate::model::{ids_tensor, Model, Pass};
use crate::optim::Adam;
use crate::train::settings::{LrSchedule, Settings};

/// What one optimisation step needs beyond the weights, optimizer and batch.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    /// The step size.
    pub learning_rate: f64,
    /// Rescale the gradients when their global L2 norm exceeds this (PyTorch's
    /// `clip_grad_norm_`).
    pub clip_grad_norm: Option<f64>,
    /// Dropout probability after each recurrent layer.
    pub dropout: f32,
    /// Seeds this step's dropout mask.
    pub seed: u64,
}

impl StepOptions {
    /// The tutorial's step: constant rate, no clipping, no dropout.
    pub fn plain(learning_rate: f64) -> Self {
        StepOptions { learning_rate, clip_grad_norm: None, dropout: 0.0, seed: 0 }
    }
}

/// One optimisation step: forward, loss, backward, Adam. Returns the batch loss and, when
/// clipping, the global gradient norm before clipping. A non-finite loss is an error and
/// leaves the weights untouched.
pub fn train_step(
    model: &Model,
    adam: &mut Adam,
    batch: &Batch,
    o: &StepOptions,
) -> Result<(f32, Option<f64>)> {
    let (loss, norm, _) = train_step_from(model, adam, batch, o, None)?;
    Ok((loss, norm))
}

/// [`train_step`] from the given initial states (stateful training); also returns the final
/// states to carry into the next batch.
pub fn train_step_from(
    model: &Model,
    adam: &mut Adam,
    batch: &Batch,
    o: &StepOptions,
    state: Option<&[Tensor]>,
) -> Result<(f32, Option<f64>, Vec<Tensor>)> {
    crate::compute::on_compute_thread(model.device(), || {
        let dev = model.device();
        let inputs = ids_tensor(&batch.inputs, batch.batch_size, batch.seq_len, dev)?;
        let pass = Pass::Train { dropout: o.dropout, seed: o.seed };
        let (loss, finals) = model.loss_from(&inputs, &batch.targets, &pass, state)?;
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !value.is_finite() {
            bail!(
                "the loss became {value}; training stopped with the last checkpoint kept. Try a lower --learning-rate or --clip-grad-norm 1"
            );
        }
        let grads = loss.backward()?;
        let (norm, scale) = match o.clip_grad_norm {
            Some(max) => {
                let mut squares = 0.0;
                for v in model.vars() {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        squares += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                    }
                }
                let norm = squares.sqrt();
                (Some(norm), (max / (norm + 1e-6)).min(1.0))
            }
            None => (None, 1.0),
        };
        adam.update(&grads, o.learning_rate, scale)?;
        Ok((value, norm, finals))
    })
}

/// The step size for 0-based `step` of `total`: linear warm-up over `warmup_steps`, then
/// constant, or cosine decay to `min_lr` at the last step (nanoGPT's schedule).
pub fn learning_rate(s: &Settings, step: u64, total: u64) -> f64 {
    if step < s.optimizer.warmup_steps {
        // In f64: warmup_steps + 1 can overflow u64 (--warmup-steps 18446744073709551615).
        return s.optimizer.learning_rate * (step as f64 + 1.0) / (s.optimizer.warmup_steps as f64 + 1.0);
    }
    match s.optimizer.lr_schedule {
        LrSchedule::Constant => s.optimizer.learning_rate,
        LrSchedule::Cosine => {
            let span = total.saturating_sub(s.optimizer.warmup_steps).max(1) as f64;
            let ratio = ((step - s.optimizer.warmup_steps) as f64 / span).min(1.0);
            s.optimizer.min_lr
                + 0.5
                    * (1.0 + (std::f64::consts::PI * ratio).cos())
                    * (s.optimizer.learning_rate - s.optimizer.min_lr)
        }
    }
}
