//! Adam exactly as Keras runs it (the tutorial's optimizer), with state that can be saved.
//!
//! Keras folds the bias corrections into the step size and adds ε to √v̂ without correcting
//! it: `w -= lr·√(1−β2ᵗ)/(1−β1ᵗ) · m / (√v + ε)`, with defaults lr 1e-3, β1 0.9, β2 0.999,
//! ε 1e-7 and no weight decay. Optional decoupled weight decay (AdamW: `w -= lr·λ·w` before the
//! Adam step, as PyTorch does it).

use anyhow::Result;
use candle_core::{backprop::GradStore, Tensor, Var};

pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// Decoupled weight decay λ (0: plain Adam).
    pub weight_decay: f64,
    /// Updates applied so far.
    pub step: u64,
    /// First and second moments, one per parameter, in the parameters' order.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl Adam {
    pub fn new(params: &[Var]) -> Result<Self> {
        let zeros = |p: &Var| p.as_tensor().zeros_like();
        Ok(Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.0,
            step: 0,
            m: params.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: params.iter().map(zeros).collect::<candle_core::Result<_>>()?,
        })
    }

    /// One update of every parameter that has a gradient, with step size `learning_rate` (the
    /// schedule's value for this step) and each gradient multiplied by `grad_scale` (below 1
    /// when clipping).
    pub fn update(
        &mut self,
        params: &[Var],
        grads: &GradStore,
        learning_rate: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let alpha = learning_rate * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        for (i, p) in params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            let g = if grad_scale == 1.0 { g.clone() } else { (g * grad_scale)? };
            let w = match self.weight_decay {
                0.0 => p.as_tensor().clone(),
                wd => (p.as_tensor() * (1.0 - learning_rate * wd))?,
            };
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let delta = (&m / (v.sqrt()? + self.epsilon)?)?;
            p.set(&(w - (delta * alpha)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
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
        let mut adam = Adam::new(std::slice::from_ref(&w)).unwrap();
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for step in 1..=2 {
            // loss = sum(w^3) so the gradient 3 w^2 changes between steps
            let loss = w.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            adam.update(std::slice::from_ref(&w), &grads, 0.1, 1.0).unwrap();
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
        assert_eq!(adam.step, 2);
    }

    /// Weight decay shrinks the weight by lr·λ before the Adam step (decoupled, AdamW).
    #[test]
    fn decoupled_weight_decay_shrinks_before_the_step() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[2.0f64], &dev).unwrap()).unwrap();
        let mut adam = Adam::new(std::slice::from_ref(&w)).unwrap();
        adam.weight_decay = 0.5;
        // loss = w, gradient 1: the first Adam step moves by lr·√0.001/(√0.001 + ε) ≈ lr
        let grads = w.as_tensor().sum_all().unwrap().backward().unwrap();
        adam.update(std::slice::from_ref(&w), &grads, 0.1, 1.0).unwrap();
        let root = 0.001f64.sqrt();
        let want = 2.0 * (1.0 - 0.1 * 0.5) - 0.1 * root / (root + 1e-7);
        let got = w.as_tensor().to_vec1::<f64>().unwrap()[0];
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
}
