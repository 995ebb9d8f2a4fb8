//! One optimisation step (forward, loss, backward, clipping, Adam) and the learning-rate
//! schedule.

use anyhow::{bail, Result};
use candle_core::{backprop::GradStore, DType, Tensor, Var};

use crate::collective::{Alone, Collective};
use crate::data::Batch;
use crate::model::{ids_tensor, Dropout, Model, Pass};
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
    /// What this step drops, with which probabilities.
    pub dropout: Dropout,
    /// Seeds this step's dropout masks.
    pub seed: u64,
}

impl StepOptions {
    /// The tutorial's step: constant rate, no clipping, no dropout.
    pub fn plain(learning_rate: f64) -> Self {
        StepOptions { learning_rate, clip_grad_norm: None, dropout: Dropout::NONE, seed: 0 }
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
    let alone = Share { world: &Alone, first_row: 0, global_rows: batch.batch_size };
    train_step_shared(model, adam, batch, o, state, &alone)
}

/// Where one process's batch lies in a global batch that several train together.
#[derive(Clone, Copy)]
pub struct Share<'a> {
    /// The ranks that share the batch.
    pub world: &'a dyn Collective,
    /// The global batch's row this process's batch starts at.
    pub first_row: usize,
    /// Rows of the global batch.
    pub global_rows: usize,
}

/// [`train_step_from`] on this process's share of a global batch: the gradients and the loss
/// are those of the global batch (each rank's weighted by its share of the rows, then summed
/// over the ranks), so every rank takes the same step, the one a single process would take on
/// the whole batch up to the order of the sums.
pub fn train_step_shared(
    model: &Model,
    adam: &mut Adam,
    batch: &Batch,
    o: &StepOptions,
    state: Option<&[Tensor]>,
    share: &Share,
) -> Result<(f32, Option<f64>, Vec<Tensor>)> {
    crate::compute::on_compute_thread(model.device(), || {
        let dev = model.device();
        let inputs = ids_tensor(&batch.inputs, batch.batch_size, batch.seq_len, dev)?;
        let pass = Pass::Train { dropout: o.dropout, seed: o.seed, first_row: share.first_row };
        let (loss, finals) = model.loss_from(&inputs, &batch.targets, &pass, state)?;
        let mut value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let alone = share.world.size() == 1;
        // Together, every rank must go on to the sum, so that all of them see the same loss.
        if alone && !value.is_finite() {
            bail!(non_finite(value));
        }
        // A share's loss is the mean over its rows; weighted by its part of the global batch
        // before the backward pass, its gradients come out weighted with no pass of their own.
        let weight = batch.batch_size as f64 / share.global_rows as f64;
        let mut grads = if alone { loss.backward()? } else { (&loss * weight)?.backward()? };
        if !alone {
            value = sum_over_ranks(model, &mut grads, (value as f64 * weight) as f32, share)?;
            if !value.is_finite() {
                bail!(non_finite(value));
            }
        }
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

fn non_finite(loss: f32) -> String {
    format!("the loss became {loss}; training stopped with the last checkpoint kept. Try a lower --learning-rate or --clip-grad-norm 1")
}

/// Replaces each (weighted) gradient by the sum over the ranks, the global batch's, and returns
/// the sum of the weighted losses, the global batch's loss. Every gradient and the loss travel
/// in one buffer, so a step costs one all-reduce.
fn sum_over_ranks(model: &Model, grads: &mut GradStore, weighted_loss: f32, share: &Share) -> Result<f32> {
    let vars: Vec<&Var> = model.vars().collect();
    let mut parts = Vec::with_capacity(vars.len() + 1);
    for v in &vars {
        let g = match grads.get(v.as_tensor()) {
            Some(g) => g.flatten_all()?,
            None => v.as_tensor().zeros_like()?.flatten_all()?,
        };
        parts.push(g);
    }
    parts.push(Tensor::new(&[weighted_loss], model.device())?.to_dtype(parts[0].dtype())?);
    let summed = share.world.sum_tensor(&Tensor::cat(&parts, 0)?)?;
    let mut at = 0;
    for v in &vars {
        let n = v.elem_count();
        grads.insert(v.as_tensor(), summed.narrow(0, at, n)?.reshape(v.shape())?);
        at += n;
    }
    Ok(summed.narrow(0, at, 1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?[0])
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
