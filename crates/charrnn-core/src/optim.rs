//! Adam exactly as Keras runs it (the tutorial's optimizer), with state that can be saved.
//!
//! Keras folds the bias corrections into the step size and adds ε to √v̂ without correcting
//! it: `w -= lr·√(1−β2ᵗ)/(1−β1ᵗ) · m / (√v + ε)`, with defaults lr 1e-3, β1 0.9, β2 0.999,
//! ε 1e-7 and no weight decay. Optional decoupled weight decay (AdamW: `w -= lr·λ·w` before the
//! Adam step, as PyTorch does it).

use anyhow::Result;
use candle_core::{backprop::GradStore, Tensor, Var};

use crate::kernels::cpu::Kernel;
use crate::ops::adam::{Moment, Step};

/// One parameter and its two moments.
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// Adam owning the parameters it updates and their moments.
pub struct Adam {
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to √v.
    pub epsilon: f64,
    /// Decoupled weight decay λ (0: plain Adam).
    pub weight_decay: f64,
    /// The instruction set of the updates on a CPU (every kernel takes the same step; the
    /// model's compute sets it so that `portable` runs baseline code throughout).
    pub kernel: Kernel,
    /// Updates applied so far: t in the bias corrections.
    updates: u64,
    slots: Vec<Slot>,
}

/// What Adam saves and restores: its update count and each parameter's moments, named
/// `m.NAME` and `v.NAME` after the parameter.
pub struct AdamState {
    /// Updates applied.
    pub updates: u64,
    /// Each moment, named `m.NAME` or `v.NAME`.
    pub moments: Vec<(String, Tensor)>,
}

impl Adam {
    /// Adam over these named parameters, moments zero, no update yet.
    pub fn new(params: Vec<(String, Var)>) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                // Two tensors, not one cloned: a clone shares its storage, and both are updated
                // in place.
                let (m, v) = (var.as_tensor().zeros_like()?, var.as_tensor().zeros_like()?);
                Ok(Slot { name, m, v, var })
            })
            .collect::<Result<_>>()?;
        Ok(Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.0,
            kernel: Kernel::best(),
            updates: 0,
            slots,
        })
    }

    /// Updates applied so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Each parameter's name with its first and second moments.
    pub fn moments(&self) -> impl Iterator<Item = (&str, &Tensor, &Tensor)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.m, &s.v))
    }

    /// The state to save.
    pub fn export(&self) -> AdamState {
        let moments = self
            .slots
            .iter()
            .flat_map(|s| [(format!("m.{}", s.name), s.m.clone()), (format!("v.{}", s.name), s.v.clone())])
            .collect();
        AdamState { updates: self.updates, moments }
    }

    /// Every moment [`Adam::import`] needs, by name, with the parameter it must match (shape,
    /// device and dtype).
    pub fn expected(&self) -> impl Iterator<Item = (String, &Var)> {
        self.slots.iter().flat_map(|s| [(format!("m.{}", s.name), &s.var), (format!("v.{}", s.name), &s.var)])
    }

    /// Restores a saved state: every moment named and shaped as its parameter.
    pub fn import(&mut self, state: AdamState) -> Result<()> {
        let mut moments: std::collections::HashMap<String, Tensor> = state.moments.into_iter().collect();
        for slot in &mut self.slots {
            for (prefix, target) in [("m", &mut slot.m), ("v", &mut slot.v)] {
                let key = format!("{prefix}.{}", slot.name);
                let Some(t) = moments.remove(&key) else { anyhow::bail!("{key} is missing") };
                if t.dims() != slot.var.dims() {
                    anyhow::bail!("{key} has shape {:?}, its parameter {:?}", t.dims(), slot.var.dims());
                }
                *target = t.to_device(slot.var.device())?.to_dtype(slot.var.dtype())?;
            }
        }
        self.updates = state.updates;
        Ok(())
    }

    /// One update of every parameter that has a gradient, with step size `learning_rate` (the
    /// schedule's value for this step) and each gradient multiplied by `grad_scale` (below 1
    /// when clipping). Moments and weights are updated in place, in one pass each.
    pub fn update(&mut self, grads: &GradStore, learning_rate: f64, grad_scale: f64) -> Result<()> {
        self.updates += 1;
        let t = self.updates as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let alpha = learning_rate * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else { continue };
            let g = g.contiguous()?;
            let kernel = self.kernel;
            slot.m.inplace_op2(&g, &Moment { beta: b1, scale: grad_scale, square: false, kernel })?;
            slot.v.inplace_op2(&g, &Moment { beta: b2, scale: grad_scale, square: true, kernel })?;
            let decay = 1.0 - learning_rate * self.weight_decay;
            let step = Step { alpha, decay, epsilon: self.epsilon, kernel };
            slot.var.as_tensor().inplace_op3(&slot.m, &slot.v, &step)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Two steps by hand against the Keras formula for a single weight.
    #[test]
    fn matches_the_keras_update_rule() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &dev).unwrap()).unwrap();
        let mut adam = Adam::new(vec![("w".into(), w.clone())]).unwrap();
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for step in 1..=2 {
            // loss = sum(w^3) so the gradient 3 w^2 changes between steps
            let loss = w.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            adam.update(&grads, 0.1, 1.0).unwrap();
            let alpha = 0.1 * (1.0 - 0.999f64.powi(step)).sqrt() / (1.0 - 0.9f64.powi(step));
            for k in 0..2 {
                let g = 3.0 * expect[k] * expect[k];
                m[k] = 0.9 * m[k] + 0.1 * g;
                v[k] = 0.999 * v[k] + 0.001 * g * g;
                expect[k] -= alpha * m[k] / (v[k].sqrt() + 1e-7);
            }
        }
        let got = w.as_tensor().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        for k in 0..2 {
            assert!((got[k] - expect[k]).abs() < 1e-12, "{got:?} vs {expect:?}");
        }
        assert_eq!(adam.updates(), 2);
    }

    /// Weight decay shrinks the weight by lr·λ before the Adam step (decoupled, AdamW).
    #[test]
    fn decoupled_weight_decay_shrinks_before_the_step() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[2.0f64], &dev).unwrap()).unwrap();
        let mut adam = Adam::new(vec![("w".into(), w.clone())]).unwrap();
        adam.weight_decay = 0.5;
        // loss = w, gradient 1: the first Adam step moves by lr·√0.001/(√0.001 + ε) ≈ lr
        let grads = w.as_tensor().sum_all().unwrap().backward().unwrap();
        adam.update(&grads, 0.1, 1.0).unwrap();
        let root = 0.001f64.sqrt();
        let want = 2.0 * (1.0 - 0.1 * 0.5) - 0.1 * root / (root + 1e-7);
        let got = w.as_tensor().to_vec1::<f64>().unwrap()[0];
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
}
