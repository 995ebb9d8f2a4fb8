//! Adam exactly as Keras runs it (the tutorial's optimizer), with state that can be saved.
//!
//! Keras folds the bias corrections into the step size and adds ε to √v̂ without correcting
//! it: `w -= lr·√(1−β2ᵗ)/(1−β1ᵗ) · m / (√v + ε)`, with defaults lr 1e-3, β1 0.9, β2 0.999,
//! ε 1e-7 and no weight decay.

use anyhow::Result;
use candle_core::{backprop::GradStore, Tensor, Var};

pub struct Adam {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// Updates applied so far.
    pub step: u64,
    /// First and second moments, one per parameter, in the parameters' order.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl Adam {
    pub fn new(params: &[Var], learning_rate: f64) -> Result<Self> {
        let zeros = |p: &Var| p.as_tensor().zeros_like();
        Ok(Adam {
            learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            step: 0,
            m: params
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            v: params
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
        })
    }

    /// One update of every parameter that has a gradient.
    pub fn update(&mut self, params: &[Var], grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let alpha = self.learning_rate * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        for (i, p) in params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let delta = (m.clone() / (v.sqrt()? + self.epsilon)?)?;
            p.set(&(p.as_tensor() - (delta * alpha)?)?)?;
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
        let mut adam = Adam::new(std::slice::from_ref(&w), 0.1).unwrap();
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for step in 1..=2 {
            // loss = sum(w^3) so the gradient 3 w^2 changes between steps
            let loss = w.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            adam.update(std::slice::from_ref(&w), &grads).unwrap();
            let alpha = 0.1 * (1.0 - 0.999f64.powi(step)).sqrt() / (1.0 - 0.9f64.powi(step));
            for k in 0..2 {
                let g = 3.0 * expect[k] * expect[k];
                m[k] = 0.9 * m[k] + 0.1 * g;
                v[k] = 0.999 * v[k] + 0.001 * g * g;
                expect[k] -= alpha * m[k] / (v[k].sqrt() + 1e-7);
            }
        }
        let got = w
            .as_tensor()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for k in 0..2 {
            assert!((got[k] - expect[k]).abs() < 1e-12, "{got:?} vs {expect:?}");
        }
        assert_eq!(adam.step, 2);
    }
}
