//! The network: Embedding(V, E) -> a recurrent cell (GRU, LSTM or Elman RNN) of H units ×
//! layers over all steps -> Dense(V) logits, with parameters in PyTorch's names and layouts
//! and the tutorial's Keras initialisation. A model carries the [`Compute`] its products run
//! in.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{distr::Uniform, Rng};
use serde::{Deserialize, Serialize};

use crate::compute::Compute;
use crate::kernels::cpu::float::Float;
use crate::kernels::cpu::{per_kernel, Kernel};
pub use crate::ops::cells::Cell;
use crate::ops::head::dense_cross_entropy;
use crate::ops::linear::linear;
use crate::ops::recurrent::rnn_sequence;

/// A model's shape, as the checkpoint's metadata records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Characters in the vocabulary: rows of the embedding, outputs of the dense layer.
    pub vocab_size: usize,
    /// Width of the character embedding.
    pub embedding_dim: usize,
    /// Width of each recurrent layer's state.
    pub rnn_units: usize,
    /// Stacked recurrent layers.
    pub layers: usize,
    /// The recurrent cell.
    pub cell: Cell,
}

impl Config {
    /// One GRU layer, as the tutorial has it.
    pub fn gru(vocab_size: usize, embedding_dim: usize, rnn_units: usize) -> Self {
        Config { vocab_size, embedding_dim, rnn_units, layers: 1, cell: Cell::Gru }
    }

    /// The same with `layers` recurrent layers.
    pub fn with_layers(self, layers: usize) -> Self {
        Config { layers, ..self }
    }

    /// The same with another cell.
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

    /// Parameter counts per layer, as Keras' `model.summary()` lists them, in checked
    /// arithmetic: None when a count overflows (sizes from a file or a flag can be anything).
    pub fn checked_layer_sizes(&self) -> Option<Vec<(String, u128)>> {
        let (v, e, h) = (self.vocab_size as u128, self.embedding_dim as u128, self.rnn_units as u128);
        let gates = self.cell.gates() as u128;
        let mut sizes = vec![("embedding".to_string(), v.checked_mul(e)?)];
        let cell = self.cell.name();
        for l in 0..self.layers {
            let name = if self.layers == 1 { cell.to_string() } else { format!("{cell}_{l}") };
            let per_unit = (self.input_width(l) as u128).checked_add(h)?.checked_add(2)?;
            sizes.push((name, gates.checked_mul(h)?.checked_mul(per_unit)?));
        }
        sizes.push(("dense".to_string(), v.checked_mul(h.checked_add(1)?)?));
        Some(sizes)
    }

    /// All parameters, in checked arithmetic (None when the count overflows).
    pub fn checked_parameter_count(&self) -> Option<u128> {
        self.checked_layer_sizes()?.iter().try_fold(0u128, |sum, (_, n)| sum.checked_add(*n))
    }

    /// Parameter counts per layer, as Keras' `model.summary()` lists them, for a model that
    /// exists (whose sizes therefore fit in memory).
    pub fn layer_sizes(&self) -> Vec<(String, usize)> {
        let sizes = self.checked_layer_sizes().unwrap_or_default();
        sizes.into_iter().map(|(name, n)| (name, usize::try_from(n).unwrap_or(usize::MAX))).collect()
    }

    /// All parameters of a model that exists.
    pub fn parameter_count(&self) -> usize {
        let n = self.checked_parameter_count().unwrap_or(u128::MAX);
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// Refuses a zero size.
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
    /// The input matrix.
    pub w_ih: Var,
    /// The recurrent matrix.
    pub w_hh: Var,
    /// The input bias.
    pub b_ih: Var,
    /// The recurrent bias.
    pub b_hh: Var,
}

/// The output layer: logits = h · Wᵀ + b, W \[V, H\], b \[V\].
pub struct Dense {
    /// W \[V, H\]
    pub weight: Var,
    /// b \[V\]
    pub bias: Var,
}

/// The network's parameters and the arithmetic they run in.
pub struct Model {
    /// Its shape.
    pub config: Config,
    /// [V, E]
    pub embedding: Var,
    /// The recurrent layers, bottom first.
    pub layers: Vec<Layer>,
    /// The output layer.
    pub dense: Dense,
    /// Whether the output layer's weight is the embedding itself (weight tying): then
    /// `dense.weight` and `embedding` are one variable, trained once and saved under both names.
    tied: bool,
    compute: Compute,
}

/// The output layer's weight's name.
const DENSE_WEIGHT: &str = "dense.weight";

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
    /// Values are drawn in the order of [`Config::parameter_shapes`]; the model lives on
    /// `compute`'s device and runs its products there.
    pub fn new_random(config: Config, dtype: DType, compute: &Compute, rng: &mut impl Rng) -> Result<Self> {
        config.validate()?;
        let device = compute.device();
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
        Ok(Model { config, embedding, layers, dense, tied: false, compute: compute.clone() })
    }

    /// A model from named tensors (on `compute`'s device); a missing or misshapen one is an
    /// error naming it.
    pub fn from_tensors(
        config: Config,
        mut tensors: Vec<(String, Tensor)>,
        compute: &Compute,
    ) -> Result<Self> {
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
            params.push(Var::from_tensor(&t.to_device(compute.device())?)?);
        }
        // In the order of `parameter_shapes`: the embedding, four per layer, the dense pair.
        let mut params = params.into_iter();
        let mut next = || params.next().expect("one tensor per parameter");
        let embedding = next();
        let layers = (0..config.layers)
            .map(|_| Layer { w_ih: next(), w_hh: next(), b_ih: next(), b_hh: next() })
            .collect();
        let dense = Dense { weight: next(), bias: next() };
        Ok(Model { config, embedding, layers, dense, tied: false, compute: compute.clone() })
    }

    /// Every stored tensor's variable, in the order of [`Config::parameter_shapes`]: the
    /// embedding, four per layer, the output weight and bias (a tied model's embedding twice).
    fn stored(&self) -> impl Iterator<Item = &Var> {
        let recurrent = self.layers.iter().flat_map(|l| [&l.w_ih, &l.w_hh, &l.b_ih, &l.b_hh]);
        std::iter::once(&self.embedding).chain(recurrent).chain([&self.dense.weight, &self.dense.bias])
    }

    /// Every stored tensor with its PyTorch state_dict name (what a checkpoint holds: a tied
    /// model's output weight under its own name too, so that PyTorch loads it as it is).
    pub fn named(&self) -> impl Iterator<Item = (String, &Var)> {
        self.config.parameter_shapes().into_iter().map(|(n, _)| n).zip(self.stored())
    }

    /// Every trained parameter once, named: what the optimizer updates and the gradient norm
    /// and the ranks' sums cover (a tied model's output weight is its embedding).
    pub fn trained(&self) -> impl Iterator<Item = (String, &Var)> {
        let skipped = self.skipped();
        self.named().enumerate().filter(move |(i, _)| Some(*i) != skipped).map(|(_, nv)| nv)
    }

    /// Every trained parameter once, in the order of [`Config::parameter_shapes`].
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        let skipped = self.skipped();
        self.stored().enumerate().filter(move |(i, _)| Some(*i) != skipped).map(|(_, v)| v)
    }

    /// Where a tied model's output weight stands among the stored tensors (the embedding is
    /// trained in its place).
    fn skipped(&self) -> Option<usize> {
        self.tied.then_some(1 + 4 * self.layers.len())
    }

    /// Every trained parameter, named, as the optimizer takes them.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        self.trained().map(|(n, v)| (n, v.clone())).collect()
    }

    /// Ties the output layer's weight to the embedding (one variable from now on), which needs
    /// the embedding as wide as the recurrent state.
    pub fn tie(&mut self) -> Result<()> {
        let (e, h) = (self.config.embedding_dim, self.config.rnn_units);
        if e != h {
            bail!("weight tying needs --embedding-dim equal to --rnn-units (the output layer's width), not {e} and {h}");
        }
        self.dense.weight = self.embedding.clone();
        self.tied = true;
        Ok(())
    }

    /// [`Model::tie`] for a model read from a file: refused unless its output weight already is
    /// its embedding, value for value (as every checkpoint of a tied run holds it).
    pub fn tie_loaded(&mut self) -> Result<()> {
        let same = self.output_is_embedding()?;
        self.tie()?;
        if !same {
            bail!("its {DENSE_WEIGHT} differs from embedding.weight: it was not trained with tied weights");
        }
        Ok(())
    }

    /// Whether the output weight holds the embedding's values (as a tied model's does).
    pub fn output_is_embedding(&self) -> Result<bool> {
        let (e, w) = (self.embedding.as_tensor(), self.dense.weight.as_tensor());
        Ok(e.dims() == w.dims() && to_host(e)? == to_host(w)?)
    }

    /// Whether the output weight is the embedding.
    pub fn is_tied(&self) -> bool {
        self.tied
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

    /// Where the parameters live.
    pub fn device(&self) -> &Device {
        self.compute.device()
    }

    /// The device, CPU kernel and precision the model's products run in.
    pub fn compute(&self) -> &Compute {
        &self.compute
    }

    /// Runs the products in `compute` from now on: another CPU kernel or precision on the same
    /// device.
    pub fn set_compute(&mut self, compute: Compute) -> Result<()> {
        if !compute.device().same_device(self.device()) {
            bail!(
                "the model's weights are on {}, not on {}",
                crate::compute::device_name(self.device()),
                crate::compute::device_name(compute.device())
            );
        }
        self.compute = compute;
        Ok(())
    }

    /// The same weights — shared, not copied — running their products in `compute` (on the
    /// same device): to sample a model in another precision or on another kernel beside it.
    pub fn with_compute(&self, compute: Compute) -> Result<Model> {
        let mut other = Model {
            config: self.config.clone(),
            embedding: self.embedding.clone(),
            layers: (self.layers.iter())
                .map(|l| Layer {
                    w_ih: l.w_ih.clone(),
                    w_hh: l.w_hh.clone(),
                    b_ih: l.b_ih.clone(),
                    b_hh: l.b_hh.clone(),
                })
                .collect(),
            dense: Dense { weight: self.dense.weight.clone(), bias: self.dense.bias.clone() },
            tied: self.tied,
            compute: self.compute.clone(),
        };
        other.set_compute(compute)?;
        Ok(other)
    }

    /// a · b through candle (the input projections, and the logits of [`Model::forward`]).
    /// candle's TF32 switch on a GPU is a process-wide one of candle's: it is set from this
    /// model's compute right before each product, so each model's products run in its own
    /// precision.
    fn product(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.device().is_cuda() {
            candle_core::cuda::set_gemm_reduced_precision_f32(self.compute.tf32());
        }
        Ok(a.matmul(b)?)
    }

    /// An input projection x · Wᵀ + b ([N, I] · [I, O]): in bf16 on a CPU that computes in
    /// bf16 (`ops::linear`), else candle's product, as it always was.
    fn project(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        if self.device().is_cpu() && self.compute.cpu_math().bf16 {
            return Ok(linear(&self.compute, x, w, b)?);
        }
        Ok(self.product(x, &w.t()?)?.broadcast_add(b)?)
    }

    /// The first layer's input projection of every vocabulary entry: embedding · W_ihᵀ + b_ih,
    /// [V, G·H]. An embedding input makes the per-token projection a lookup into this table.
    pub fn input_table(&self) -> Result<Tensor> {
        let l0 = self.layer(0);
        self.project(&self.embedding, &l0.w_ih, &l0.b_ih)
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
        let kernel = self.compute.cpu_math().kernel;
        let (training, masks) = match *pass {
            Pass::Train { dropout, seed, first_row } => (true, Masks { p: dropout, seed, first_row, kernel }),
            Pass::Eval => (false, Masks { p: Dropout::NONE, seed: 0, first_row: 0, kernel }),
        };
        // Layer 0 looks its input projections up in the V-row table; deeper layers (and a first
        // layer whose inputs are masked per sequence) project their inputs ([B·T, in] · W_ihᵀ)
        // and look up row b·T + t of that.
        let rows = || -> Result<Tensor> {
            Ok(Tensor::arange(0u32, (b * t) as u32, inputs.device())?.reshape((b, t))?)
        };
        let l0 = self.layer(0);
        let embedding = masks.embedding(self.embedding.as_tensor())?;
        let (mut table, mut ids) = match masks.p.locked > 0.0 {
            false => (self.project(&embedding, &l0.w_ih, &l0.b_ih)?, inputs.clone()),
            true => {
                let e = self.config.embedding_dim;
                let x = embedding.index_select(&inputs.flatten_all()?, 0)?.reshape((b, t, e))?;
                let x = masks.locked(&x, 0)?.reshape((b * t, e))?;
                (self.project(&x, &l0.w_ih, &l0.b_ih)?, rows()?)
            }
        };
        let mut hs: Option<Tensor> = None;
        for l in 0..self.config.layers {
            let layer = self.layer(l);
            if let Some(below) = &hs {
                let below = below.reshape((b * t, h))?;
                table = self.project(&below, &layer.w_ih, &layer.b_ih)?;
                ids = rows()?;
            }
            let cell = self.config.cell;
            let state0 = state.map(|s| &s[l]);
            let w_hh = masks.recurrent(layer.w_hh.as_tensor(), l)?;
            let (out, last) =
                rnn_sequence(&self.compute, cell, &table, &ids, &w_hh, &layer.b_hh, state0, training)?;
            finals.push(last);
            // Dropout between layers and before the output layer: per element and time step,
            // then the same mask for every time step of a sequence.
            let out = masks.output(out, l)?;
            hs = Some(masks.locked(&out, l + 1)?);
        }
        Ok((hs.expect("at least one layer"), finals))
    }

    /// Logits [B, T, V] for input ids [B, T].
    pub fn forward(&self, inputs: &Tensor, pass: &Pass) -> Result<Tensor> {
        let (b, t) = inputs.dims2()?;
        let (h, v) = (self.config.rnn_units, self.config.vocab_size);
        let hs = self.hidden(inputs, pass)?.reshape((b * t, h))?;
        let logits = self.product(&hs, &self.dense.weight.t()?)?.broadcast_add(&self.dense.bias)?;
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
        let loss = dense_cross_entropy(&self.compute, &hs, &self.dense.weight, &self.dense.bias, targets)?;
        Ok((loss, finals))
    }
}

/// How a forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pass {
    /// No dropout, nothing kept for a backward pass.
    Eval,
    /// Keeps what the backward pass needs; the dropouts `dropout` says, their masks drawn from
    /// `seed`.
    Train {
        /// What is dropped, with which probabilities.
        dropout: Dropout,
        /// Seeds the masks.
        seed: u64,
        /// Where these rows start in the global batch (0 but for a rank's share of one): the
        /// masks are the global batch's, so a share drops what one process would.
        first_row: usize,
    },
}

/// The regularisers a training pass applies, each a probability (0: off). Every mask is an
/// inverted-dropout mask ([`dropout_mask`]), so the expected values are those of the pass
/// without it; none of them changes what is saved or how a checkpoint samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Dropout {
    /// Each recurrent layer's outputs, every element of every time step on its own.
    pub output: f32,
    /// DropConnect on each layer's recurrent matrix W_hh: one mask per batch, the same for
    /// every time step and sequence (AWD-LSTM's weight drop).
    pub weight: f32,
    /// Variational (locked) dropout of each layer's input and output: one mask per sequence,
    /// the same for every time step.
    pub locked: f32,
    /// Whole characters: rows of the embedding, one mask per batch.
    pub embedding: f32,
}

impl Dropout {
    /// Nothing dropped.
    pub const NONE: Dropout = Dropout { output: 0.0, weight: 0.0, locked: 0.0, embedding: 0.0 };

    /// Only each layer's outputs, with probability `p`.
    pub fn output(p: f32) -> Dropout {
        Dropout { output: p, ..Dropout::NONE }
    }
}

/// The masks of one training pass over rows of the global batch starting at `first_row`.
struct Masks {
    p: Dropout,
    seed: u64,
    first_row: usize,
    /// The instruction set the masks are hashed on.
    kernel: Kernel,
}

/// Salts that give each kind of mask its own stream of the pass's seed (the output dropout's
/// is the seed itself, as it always was).
const WEIGHT_SALT: u64 = 0x5745_4947_4854_0001;
const LOCKED_SALT: u64 = 0x4c4f_434b_4544_0002;
const EMBEDDING_SALT: u64 = 0x454d_4245_4444_0003;

impl Masks {
    fn seed(&self, salt: u64, index: usize) -> u64 {
        splitmix64(self.seed ^ salt).wrapping_add(index as u64)
    }

    /// Layer `l`'s outputs [B, T, H], per element.
    fn output(&self, out: Tensor, l: usize) -> Result<Tensor> {
        if self.p.output <= 0.0 {
            return Ok(out);
        }
        let per_row = out.elem_count() / out.dim(0)?;
        let first = self.first_row * per_row;
        let seed = self.seed.wrapping_add(l as u64);
        let mask = dropout_mask(self.kernel, out.dims(), self.p.output, seed, first, out.device())?
            .to_dtype(out.dtype())?;
        Ok((out * mask)?)
    }

    /// `x` [B, T, W] with one mask [B, W] for all its time steps: the input of layer `at` (0:
    /// the embedded characters) or, past the last layer, the input of the output layer.
    fn locked(&self, x: &Tensor, at: usize) -> Result<Tensor> {
        if self.p.locked <= 0.0 {
            return Ok(x.clone());
        }
        let (b, _, w) = x.dims3()?;
        let seed = self.seed(LOCKED_SALT, at);
        let mask = dropout_mask(self.kernel, &[b, w], self.p.locked, seed, self.first_row * w, x.device())?;
        Ok(x.broadcast_mul(&mask.to_dtype(x.dtype())?.unsqueeze(1)?)?)
    }

    /// Layer `l`'s recurrent matrix, DropConnect-masked: one mask for the whole batch (the same
    /// on every rank, whatever its rows).
    fn recurrent(&self, w_hh: &Tensor, l: usize) -> Result<Tensor> {
        if self.p.weight <= 0.0 {
            return Ok(w_hh.clone());
        }
        let mask = dropout_mask(
            self.kernel,
            w_hh.dims(),
            self.p.weight,
            self.seed(WEIGHT_SALT, l),
            0,
            w_hh.device(),
        )?;
        Ok((w_hh * mask.to_dtype(w_hh.dtype())?)?)
    }

    /// The embedding [V, E] with whole rows (characters) dropped for this batch.
    fn embedding(&self, embedding: &Tensor) -> Result<Tensor> {
        if self.p.embedding <= 0.0 {
            return Ok(embedding.clone());
        }
        let v = embedding.dim(0)?;
        let mask = dropout_mask(
            self.kernel,
            &[v, 1],
            self.p.embedding,
            self.seed(EMBEDDING_SALT, 0),
            0,
            embedding.device(),
        )?;
        Ok(embedding.broadcast_mul(&mask.to_dtype(embedding.dtype())?)?)
    }
}

/// A tensor's values as f32 in host memory, row-major (a transposed view comes out transposed).
pub fn to_host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Inverted dropout: each value kept with probability 1 − p and then scaled by 1/(1 − p).
/// Element i (counted from `first`: a part of a larger tensor's mask) is dropped when a hash
/// of (seed, first + i) falls below p: every element is drawn on its
/// own, so the mask is made in parallel (a sequential generator took most of a 3-layer GPU
/// step at the tutorial's sizes), and it is the same on every device and thread count. On a
/// GPU it is made there, by the same hash (bit for bit; tests/cuda.rs); on the CPU it is hashed
/// on `kernel`'s instruction set, every one giving the same bits.
pub fn dropout_mask(
    kernel: Kernel,
    shape: &[usize],
    p: f32,
    seed: u64,
    first: usize,
    device: &Device,
) -> Result<Tensor> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    let keep = 1.0 / (1.0 - p);
    let threshold = (p as f64 * 2f64.powi(32)) as u64;
    let base = splitmix64(seed);
    let n: usize = shape.iter().product();
    #[cfg(feature = "cuda")]
    if let Ok(dev) = device.as_cuda_device() {
        let mask = crate::kernels::cuda::dropout_mask(dev, n, first as u64, base, threshold, keep)?;
        return Ok(crate::kernels::cuda::tensor(mask, dev, shape));
    }
    let mut mask = vec![0f32; n];
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        fill_mask::<f32>(kernel, chunk, (first + c * CHUNK) as u64, base, threshold, keep)
    });
    Ok(Tensor::from_vec(mask, shape, device)?)
}

per_kernel! {
/// Elements `first ..` of a mask into `chunk`. Compiled per instruction set: the hash's 64-bit
/// products vectorise only where the kernel's vectors are wide (SSE2 keeps them scalar, and
/// the masks of a weight-dropped 2-layer step were a twentieth of it).
fn fill_mask<T: Float, I: Isa>(chunk: &mut [f32], first: u64, base: u64, threshold: u64, keep: f32) {
    for (k, m) in chunk.iter_mut().enumerate() {
        let draw = splitmix64(base ^ (first + k as u64)) >> 32;
        *m = if draw < threshold { 0.0 } else { keep };
    }
}
}

/// SplitMix64's output function: a bijective mix of all 64 bits.
#[inline(always)]
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
                dropout_mask(Kernel::best(), &[200, 500], p, seed, 0, &Device::Cpu)
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

    /// Every instruction set hashes the same mask, bit for bit, from any first element (the
    /// wide kernels vectorise the hash; their loops have tails).
    #[test]
    fn every_kernel_hashes_the_same_mask() {
        let mask = |kernel, first| {
            let m = dropout_mask(kernel, &[3, 1001], 0.3, 11, first, &Device::Cpu).unwrap();
            m.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        for first in [0, 5, 1 << 20] {
            let portable = mask(Kernel::Portable, first);
            for kernel in Kernel::available() {
                assert_eq!(mask(kernel, first), portable, "{kernel} from element {first}");
            }
        }
    }
}
