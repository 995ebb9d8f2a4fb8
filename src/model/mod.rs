//! The network: Embedding(V, E) -> GRU or LSTM (H) × layers over all steps -> Dense(V)
//! logits, with parameters in PyTorch's names and layouts and the tutorial's Keras
//! initialisation.

pub mod job;
pub mod sample;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{distr::Uniform, Rng};
use serde::{Deserialize, Serialize};

pub use crate::ops::cells::Cell;
use crate::ops::head::dense_cross_entropy;
use crate::ops::recurrent::rnn_sequence;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub embedding_dim: usize,
    pub rnn_units: usize,
    pub layers: usize,
    pub cell: Cell,
}

impl Config {
    pub fn gru(vocab_size: usize, embedding_dim: usize, rnn_units: usize) -> Self {
        Config { vocab_size, embedding_dim, rnn_units, layers: 1, cell: Cell::Gru }
    }

    pub fn with_layers(self, layers: usize) -> Self {
        Config { layers, ..self }
    }

    pub fn with_cell(self, cell: Cell) -> Self {
        Config { cell, ..self }
    }

    /// The width of the input of recurrent layer `l`.
    fn input_width(&self, l: usize) -> usize {
        if l == 0 {
            self.embedding_dim
        } else {
            self.rnn_units
        }
    }

    /// Every parameter's PyTorch state_dict name and shape, in a fixed order.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (v, e, h) = (self.vocab_size, self.embedding_dim, self.rnn_units);
        let (cell, g) = (self.cell.name(), self.cell.gates() * h);
        let mut shapes = vec![("embedding.weight".to_string(), vec![v, e])];
        for l in 0..self.layers {
            shapes.push((format!("{cell}.weight_ih_l{l}"), vec![g, self.input_width(l)]));
            shapes.push((format!("{cell}.weight_hh_l{l}"), vec![g, h]));
            shapes.push((format!("{cell}.bias_ih_l{l}"), vec![g]));
            shapes.push((format!("{cell}.bias_hh_l{l}"), vec![g]));
        }
        shapes.push(("dense.weight".to_string(), vec![v, h]));
        shapes.push(("dense.bias".to_string(), vec![v]));
        shapes
    }

    /// Parameter counts per layer, as Keras' `model.summary()` lists them.
    pub fn layer_sizes(&self) -> Vec<(String, usize)> {
        let (v, e, h) = (self.vocab_size, self.embedding_dim, self.rnn_units);
        let mut sizes = vec![("embedding".to_string(), v * e)];
        let cell = self.cell.name();
        for l in 0..self.layers {
            let name = if self.layers == 1 { cell.to_string() } else { format!("{cell}_{l}") };
            sizes.push((name, self.cell.gates() * h * (self.input_width(l) + h + 2)));
        }
        sizes.push(("dense".to_string(), v * h + v));
        sizes
    }

    pub fn parameter_count(&self) -> usize {
        self.layer_sizes().iter().map(|(_, n)| n).sum()
    }

    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 || self.embedding_dim == 0 || self.rnn_units == 0 || self.layers == 0 {
            bail!("model dimensions must be positive: {self:?}");
        }
        Ok(())
    }
}

/// One recurrent layer's parameters, in PyTorch's layout: W_ih [G·H, in], W_hh [G·H, H],
/// b_ih and b_hh [G·H].
pub struct Layer {
    pub w_ih: Var,
    pub w_hh: Var,
    pub b_ih: Var,
    pub b_hh: Var,
}

/// The output layer: logits = h · Wᵀ + b, W [V, H], b [V].
pub struct Dense {
    pub weight: Var,
    pub bias: Var,
}

pub struct Model {
    pub config: Config,
    /// [V, E]
    pub embedding: Var,
    pub layers: Vec<Layer>,
    pub dense: Dense,
}

/// How a parameter starts, by its role.
enum Init {
    /// U(−0.05, 0.05), Keras' embedding default.
    Embedding,
    /// Glorot-uniform over the kernel's fans.
    Glorot,
    /// Zero, then whatever the cell sets (an input bias) or zero.
    Zero,
}

impl Model {
    /// The tutorial's initialisation: embedding U(-0.05, 0.05); recurrent kernels and the dense
    /// kernel Glorot-uniform (Keras' fans: fan_in + fan_out of the [in, out] kernel); biases 0,
    /// except where the cell sets its input bias otherwise (an LSTM's forget gate starts at 1).
    /// Values are drawn in the order of [`Config::parameter_shapes`].
    pub fn new_random(config: Config, dtype: DType, device: &Device, rng: &mut impl Rng) -> Result<Self> {
        config.validate()?;
        let shapes = config.parameter_shapes();
        let mut shapes = shapes.into_iter().map(|(_, shape)| shape);
        let mut draw = |init: Init, input_bias: bool| -> Result<Var> {
            let shape = shapes.next().expect("one shape per parameter");
            let n: usize = shape.iter().product();
            // Kernels are stored [out, in] (PyTorch); Glorot's fans are symmetric in the two.
            let limit = match init {
                Init::Embedding => Some(0.05),
                Init::Glorot => Some(glorot(shape[1], shape[0])),
                Init::Zero => None,
            };
            let mut values: Vec<f32> = match limit {
                Some(l) => rng.sample_iter(Uniform::new(-l, l)?).take(n).collect(),
                None => vec![0.0; n],
            };
            if input_bias {
                config.cell.init_bias_ih(&mut values, config.rnn_units);
            }
            let t = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
            Ok(Var::from_tensor(&t)?)
        };
        let embedding = draw(Init::Embedding, false)?;
        let mut layers = Vec::with_capacity(config.layers);
        for _ in 0..config.layers {
            layers.push(Layer {
                w_ih: draw(Init::Glorot, false)?,
                w_hh: draw(Init::Glorot, false)?,
                b_ih: draw(Init::Zero, true)?,
                b_hh: draw(Init::Zero, false)?,
            });
        }
        let dense = Dense { weight: draw(Init::Glorot, false)?, bias: draw(Init::Zero, false)? };
        Ok(Model { config, embedding, layers, dense })
    }

    /// A model from named tensors whose names and shapes the caller has checked.
    pub fn from_tensors(config: Config, mut tensors: Vec<(String, Tensor)>) -> Result<Self> {
        config.validate()?;
        let mut params = Vec::new();
        for (name, shape) in config.parameter_shapes() {
            let Some(i) = tensors.iter().position(|(n, _)| *n == name) else {
                bail!("tensor {name} is missing");
            };
            let (_, t) = tensors.swap_remove(i);
            if t.dims() != shape.as_slice() {
                bail!("tensor {name} has shape {:?}, expected {shape:?}", t.dims());
            }
            params.push(Var::from_tensor(&t)?);
        }
        // In the order of `parameter_shapes`: the embedding, four per layer, the dense pair.
        let mut params = params.into_iter();
        let mut next = || params.next().expect("one tensor per parameter");
        let embedding = next();
        let layers = (0..config.layers)
            .map(|_| Layer { w_ih: next(), w_hh: next(), b_ih: next(), b_hh: next() })
            .collect();
        let dense = Dense { weight: next(), bias: next() };
        Ok(Model { config, embedding, layers, dense })
    }

    /// Every parameter, in the order of [`Config::parameter_shapes`].
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        let recurrent = self.layers.iter().flat_map(|l| [&l.w_ih, &l.w_hh, &l.b_ih, &l.b_hh]);
        std::iter::once(&self.embedding).chain(recurrent).chain([&self.dense.weight, &self.dense.bias])
    }

    /// Every parameter with its PyTorch state_dict name.
    pub fn named(&self) -> impl Iterator<Item = (String, &Var)> {
        self.config.parameter_shapes().into_iter().map(|(n, _)| n).zip(self.vars())
    }

    /// Every parameter, named, as the optimizer takes them.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        self.named().map(|(n, v)| (n, v.clone())).collect()
    }

    /// The parameter with this PyTorch name.
    pub fn param(&self, name: &str) -> &Var {
        let found = self.named().find(|(n, _)| n == name).map(|(_, v)| v);
        found.unwrap_or_else(|| panic!("no parameter {name}"))
    }

    /// Recurrent layer `l`'s parameters.
    pub fn layer(&self, l: usize) -> &Layer {
        &self.layers[l]
    }

    pub fn device(&self) -> &Device {
        self.embedding.device()
    }

    /// The first layer's input projection of every vocabulary entry: embedding · W_ihᵀ + b_ih,
    /// [V, 3H]. An embedding input makes the per-token projection a lookup into this table.
    pub fn input_table(&self) -> Result<Tensor> {
        let l0 = self.layer(0);
        let table = self.embedding.matmul(&l0.w_ih.t()?)?;
        Ok(table.broadcast_add(&l0.b_ih)?)
    }

    /// The top layer's outputs [B, T, H] for input ids [B, T], every sequence starting from a
    /// zero state.
    pub fn hidden(&self, inputs: &Tensor, pass: &Pass) -> Result<Tensor> {
        Ok(self.hidden_from(inputs, pass, None)?.0)
    }

    /// As [`Model::hidden`], from the given initial state of each layer ([B, H] each; a
    /// constant, as in truncated backpropagation through time) or zero; also returns each
    /// layer's final state, detached.
    pub fn hidden_from(
        &self,
        inputs: &Tensor,
        pass: &Pass,
        state: Option<&[Tensor]>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (b, t) = inputs.dims2()?;
        let mut finals = Vec::with_capacity(self.config.layers);
        let h = self.config.rnn_units;
        let training = matches!(pass, Pass::Train { .. });
        // Layer 0 looks its input projections up in the V-row table; deeper layers project
        // the layer below ([B·T, H] · W_ihᵀ) and look up row b·T + t of that.
        let mut table = self.input_table()?;
        let mut ids = inputs.clone();
        let mut hs: Option<Tensor> = None;
        for l in 0..self.config.layers {
            let layer = self.layer(l);
            if let Some(below) = &hs {
                table = below.reshape((b * t, h))?.matmul(&layer.w_ih.t()?)?.broadcast_add(&layer.b_ih)?;
                ids = Tensor::arange(0u32, (b * t) as u32, inputs.device())?.reshape((b, t))?;
            }
            let cell = self.config.cell;
            let (out, last) =
                rnn_sequence(cell, &table, &ids, &layer.w_hh, &layer.b_hh, state.map(|s| &s[l]), training)?;
            finals.push(last);
            // Dropout between layers and before the output layer.
            hs = Some(match *pass {
                Pass::Train { dropout, seed } if dropout > 0.0 => {
                    let mask = dropout_mask(out.dims(), dropout, seed.wrapping_add(l as u64), out.device())?
                        .to_dtype(out.dtype())?;
                    (out * mask)?
                }
                _ => out,
            });
        }
        Ok((hs.expect("at least one layer"), finals))
    }

    /// Logits [B, T, V] for input ids [B, T].
    pub fn forward(&self, inputs: &Tensor, pass: &Pass) -> Result<Tensor> {
        let (b, t) = inputs.dims2()?;
        let (h, v) = (self.config.rnn_units, self.config.vocab_size);
        let hs = self.hidden(inputs, pass)?.reshape((b * t, h))?;
        let logits = hs.matmul(&self.dense.weight.t()?)?.broadcast_add(&self.dense.bias)?;
        Ok(logits.reshape((b, t, v))?)
    }

    /// Mean cross-entropy (nats per character) of predicting `targets` ([B·T] ids, row-major
    /// like the inputs) from input ids [B, T]; the output layer and the loss run fused.
    pub fn loss(&self, inputs: &Tensor, targets: &[u32], pass: &Pass) -> Result<Tensor> {
        Ok(self.loss_from(inputs, targets, pass, None)?.0)
    }

    /// As [`Model::loss`], from the given initial states (see [`Model::hidden_from`]); also
    /// returns the final states.
    pub fn loss_from(
        &self,
        inputs: &Tensor,
        targets: &[u32],
        pass: &Pass,
        state: Option<&[Tensor]>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (b, t) = inputs.dims2()?;
        let (hs, finals) = self.hidden_from(inputs, pass, state)?;
        let hs = hs.reshape((b * t, self.config.rnn_units))?;
        Ok((dense_cross_entropy(&hs, &self.dense.weight, &self.dense.bias, targets)?, finals))
    }
}

/// How a forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pass {
    /// No dropout, nothing kept for a backward pass.
    Eval,
    /// Keeps what the backward pass needs; inverted dropout with probability `dropout` after
    /// each recurrent layer, its masks drawn from `seed`.
    Train { dropout: f32, seed: u64 },
}

/// Inverted dropout: each value kept with probability 1 − p and then scaled by 1/(1 − p).
/// Element i is dropped when a hash of (seed, i) falls below p: every element is drawn on its
/// own, so the mask is made in parallel (a sequential generator took most of a 3-layer GPU
/// step at the tutorial's sizes), and it is the same on every device and thread count. On a
/// GPU it is made there, by the same hash (bit for bit; tests/cuda.rs).
pub fn dropout_mask(shape: &[usize], p: f32, seed: u64, device: &Device) -> Result<Tensor> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    let keep = 1.0 / (1.0 - p);
    let threshold = (p as f64 * 2f64.powi(32)) as u64;
    let base = splitmix64(seed);
    let n: usize = shape.iter().product();
    #[cfg(feature = "cuda")]
    if let Ok(dev) = device.as_cuda_device() {
        let mask = crate::kernels::cuda::dropout_mask(dev, n, base, threshold, keep)?;
        return Ok(crate::kernels::cuda::tensor(mask, dev, shape));
    }
    let mut mask = vec![0f32; n];
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        for (k, m) in chunk.iter_mut().enumerate() {
            let draw = splitmix64(base ^ (c * CHUNK + k) as u64) >> 32;
            *m = if draw < threshold { 0.0 } else { keep };
        }
    });
    Ok(Tensor::from_vec(mask, shape, device)?)
}

/// SplitMix64's output function: a bijective mix of all 64 bits.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn glorot(fan_in: usize, fan_out: usize) -> f32 {
    (6.0 / (fan_in + fan_out) as f32).sqrt()
}

/// Mean cross-entropy of logits [B, T, V] against target ids [B, T], in nats, composed from
/// candle's ops (the reference for the fused [`Model::loss`]).
pub fn loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(2)?;
    let flat = logits.reshape(((), v))?;
    Ok(candle_nn::loss::cross_entropy(&flat, &targets.flatten_all()?)?)
}

/// Ids as a [B, T] tensor.
pub fn ids_tensor(ids: &[u32], batch: usize, steps: usize, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(ids, (batch, steps), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask drops a share p of the elements, scales the rest by 1/(1 − p), and depends on
    /// the seed only.
    #[test]
    fn dropout_mask_drops_p_and_keeps_the_mean() {
        for p in [0.1f32, 0.45] {
            let values = |seed| {
                dropout_mask(&[200, 500], p, seed, &Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let mask = values(7);
            let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / mask.len() as f64;
            assert!((dropped - p as f64).abs() < 0.01, "p {p}: dropped {dropped}");
            assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0 / (1.0 - p)));
            let mean = mask.iter().map(|&m| m as f64).sum::<f64>() / mask.len() as f64;
            assert!((mean - 1.0).abs() < 0.02, "p {p}: mean {mean}");
            assert_eq!(mask, values(7));
            assert_ne!(mask, values(8));
        }
    }
}
