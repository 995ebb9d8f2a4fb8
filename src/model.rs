//! The network: Embedding(V, E) -> GRU(H) over all steps -> Dense(V) logits, with parameters
//! in PyTorch's names and layouts and the tutorial's Keras initialisation.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{distr::Uniform, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::gru::gru_sequence;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub embedding_dim: usize,
    pub rnn_units: usize,
    pub layers: usize,
    pub cell: String,
}

impl Config {
    pub fn gru(vocab_size: usize, embedding_dim: usize, rnn_units: usize) -> Self {
        Config { vocab_size, embedding_dim, rnn_units, layers: 1, cell: "gru".into() }
    }

    /// Every parameter's PyTorch state_dict name and shape, in a fixed order.
    pub fn parameter_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        let (v, e, h) = (self.vocab_size, self.embedding_dim, self.rnn_units);
        vec![
            ("embedding.weight", vec![v, e]),
            ("gru.weight_ih_l0", vec![3 * h, e]),
            ("gru.weight_hh_l0", vec![3 * h, h]),
            ("gru.bias_ih_l0", vec![3 * h]),
            ("gru.bias_hh_l0", vec![3 * h]),
            ("dense.weight", vec![v, h]),
            ("dense.bias", vec![v]),
        ]
    }

    /// Parameter counts per layer, as Keras' `model.summary()` lists them.
    pub fn layer_sizes(&self) -> [(&'static str, usize); 3] {
        let (v, e, h) = (self.vocab_size, self.embedding_dim, self.rnn_units);
        [("embedding", v * e), ("gru", 3 * h * (e + h + 2)), ("dense", v * h + v)]
    }

    pub fn parameter_count(&self) -> usize {
        self.layer_sizes().iter().map(|(_, n)| n).sum()
    }

    pub fn validate(&self) -> Result<()> {
        if self.cell != "gru" || self.layers != 1 {
            bail!(
                "unsupported model: {} layer(s) of {} (this version has one GRU layer)",
                self.layers,
                self.cell
            );
        }
        if self.vocab_size == 0 || self.embedding_dim == 0 || self.rnn_units == 0 {
            bail!("model dimensions must be positive: {self:?}");
        }
        Ok(())
    }
}

pub struct Model {
    pub config: Config,
    /// In the order of [`Config::parameter_shapes`].
    params: Vec<Var>,
}

impl Model {
    /// The tutorial's initialisation: embedding U(-0.05, 0.05); GRU kernels and the dense
    /// kernel Glorot-uniform (Keras' fans: fan_in + fan_out of the [in, out] kernel); biases 0.
    pub fn new_random(config: Config, dtype: DType, device: &Device, rng: &mut impl Rng) -> Result<Self> {
        config.validate()?;
        let (e, h, v) = (config.embedding_dim, config.rnn_units, config.vocab_size);
        let mut params = Vec::new();
        for (name, shape) in config.parameter_shapes() {
            let n: usize = shape.iter().product();
            let limit = match name {
                "embedding.weight" => Some(0.05),
                "gru.weight_ih_l0" => Some(glorot(e, 3 * h)),
                "gru.weight_hh_l0" => Some(glorot(h, 3 * h)),
                "dense.weight" => Some(glorot(h, v)),
                _ => None,
            };
            let values: Vec<f32> = match limit {
                Some(l) => rng.sample_iter(Uniform::new(-l, l)?).take(n).collect(),
                None => vec![0.0; n],
            };
            let t = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
            params.push(Var::from_tensor(&t)?);
        }
        Ok(Model { config, params })
    }

    /// A model from named tensors whose names and shapes the caller has checked.
    pub fn from_tensors(config: Config, mut tensors: Vec<(String, Tensor)>) -> Result<Self> {
        config.validate()?;
        let mut params = Vec::new();
        for (name, shape) in config.parameter_shapes() {
            let Some(i) = tensors.iter().position(|(n, _)| n == name) else {
                bail!("tensor {name} is missing");
            };
            let (_, t) = tensors.swap_remove(i);
            if t.dims() != shape.as_slice() {
                bail!("tensor {name} has shape {:?}, expected {shape:?}", t.dims());
            }
            params.push(Var::from_tensor(&t)?);
        }
        Ok(Model { config, params })
    }

    pub fn vars(&self) -> &[Var] {
        &self.params
    }

    pub fn named(&self) -> impl Iterator<Item = (&'static str, &Var)> {
        self.config.parameter_shapes().into_iter().map(|(n, _)| n).zip(self.params.iter())
    }

    pub fn param(&self, name: &str) -> &Var {
        let i = self.config.parameter_shapes().iter().position(|(n, _)| *n == name);
        &self.params[i.unwrap_or_else(|| panic!("no parameter {name}"))]
    }

    pub fn device(&self) -> &Device {
        self.params[0].device()
    }

    /// The input projection of every vocabulary entry: embedding · W_ihᵀ + b_ih, [V, 3H].
    /// An embedding input makes the per-token projection a lookup into this table.
    pub fn input_table(&self) -> Result<Tensor> {
        let w_ih = self.param("gru.weight_ih_l0");
        let table = self.param("embedding.weight").matmul(&w_ih.t()?)?;
        Ok(table.broadcast_add(self.param("gru.bias_ih_l0"))?)
    }

    /// Logits [B, T, V] for input ids [B, T], every sequence starting from a zero state.
    pub fn forward(&self, inputs: &Tensor, pass: &Pass) -> Result<Tensor> {
        let (b, t) = inputs.dims2()?;
        let (h, v) = (self.config.rnn_units, self.config.vocab_size);
        let training = matches!(pass, Pass::Train { .. });
        let mut hs = gru_sequence(
            &self.input_table()?,
            inputs,
            self.param("gru.weight_hh_l0"),
            self.param("gru.bias_hh_l0"),
            training,
        )?;
        if let Pass::Train { dropout, seed } = *pass {
            if dropout > 0.0 {
                let mask = dropout_mask(hs.dims(), dropout, seed, hs.device())?;
                hs = (hs * mask)?;
            }
        }
        let logits = hs
            .reshape((b * t, h))?
            .matmul(&self.param("dense.weight").t()?)?
            .broadcast_add(self.param("dense.bias"))?;
        Ok(logits.reshape((b, t, v))?)
    }
}

/// How a forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pass {
    /// No dropout, nothing kept for a backward pass.
    Eval,
    /// Keeps what the backward pass needs; inverted dropout with probability `dropout` before
    /// the output layer, its mask drawn from `seed`.
    Train { dropout: f32, seed: u64 },
}

/// Inverted dropout: each value kept with probability 1 − p and then scaled by 1/(1 − p).
fn dropout_mask(shape: &[usize], p: f32, seed: u64, device: &Device) -> Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - p);
    let n: usize = shape.iter().product();
    let mask: Vec<f32> = (0..n).map(|_| if rng.random::<f32>() < p { 0.0 } else { keep }).collect();
    Ok(Tensor::from_vec(mask, shape, device)?)
}

fn glorot(fan_in: usize, fan_out: usize) -> f32 {
    (6.0 / (fan_in + fan_out) as f32).sqrt()
}

/// Mean cross-entropy of logits [B, T, V] against target ids [B, T], in nats.
pub fn loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(2)?;
    let flat = logits.reshape(((), v))?;
    Ok(candle_nn::loss::cross_entropy(&flat, &targets.flatten_all()?)?)
}

/// Ids as a [B, T] tensor.
pub fn ids_tensor(ids: &[u32], batch: usize, steps: usize, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(ids, (batch, steps), device)?)
}
