//! The CPU sampler: several sequences stepped together without autograd and without
//! allocation per character. Each step is a table lookup for the input projection, the
//! recurrent product (the packed product, in f32 or bf16, at any batch), the same gate kernel
//! training uses, and the dense layer.

use anyhow::{bail, Result};

use crate::compute::CpuMath;
use crate::kernels::cpu::bf16::{matmul_bf16, PackedBf16, Scratch};
use crate::kernels::cpu::blas::{matmul_packed, Packed, View};
use crate::kernels::cpu::Kernel;
use crate::model::{to_host, Model};
use crate::ops::cells::{with_cell, Cell, RecurrentCell, StepForward};

/// A weight matrix W [rows, cols], packed once and applied to each sequence's input. Each
/// output of the packed product is one chain of multiply-adds whatever the batch (see
/// `blas::matmul_packed`), so a sequence's result is the same, bit for bit, whichever other
/// sequences share the step: a sample depends only on its own start, seed and options, which
/// lets a server batch unrelated requests together.
enum Weights {
    /// f32 panels and the kernel that multiplies them.
    F32(Packed, Kernel),
    /// bf16 operands, f32 sums (`--precision bf16`): half the bytes to stream per step.
    Bf16(PackedBf16, Scratch),
}

impl Weights {
    fn new(w: Vec<f32>, rows: usize, cols: usize, math: CpuMath) -> Self {
        let view = View::rows(&w, rows, cols).t();
        match math.bf16 {
            true => Weights::Bf16(PackedBf16::new(view), Scratch::default()),
            false => Weights::F32(Packed::new(view), math.kernel),
        }
    }

    /// out[b] = W · x[b] (+ bias) for `batch` inputs.
    fn apply(&mut self, out: &mut [f32], x: &[f32], batch: usize, bias: Option<&[f32]>) {
        match self {
            Weights::F32(p, kernel) => {
                matmul_packed(*kernel, &mut out[..batch * p.cols()], false, View::rows(x, batch, p.rows()), p)
            }
            Weights::Bf16(p, scratch) => {
                matmul_bf16(&mut out[..batch * p.cols()], &x[..batch * p.rows()], batch, p, scratch)
            }
        }
        if let Some(bias) = bias {
            for row in out[..batch * bias.len()].chunks_exact_mut(bias.len()) {
                for (o, b) in row.iter_mut().zip(bias) {
                    *o += b;
                }
            }
        }
    }
}

/// One recurrent layer's weights and state for up to `capacity` sequences.
struct LayerState {
    /// Layer 0: none (its input projections are rows of the table); deeper: W_ih and b_ih.
    w_ih: Option<(Weights, Vec<f32>)>,
    w_hh: Weights,
    b_hh: Vec<f32>,
    /// Input projections of this step, [rows, GH] (deeper layers).
    x: Vec<f32>,
    h: Vec<f32>,
    h_next: Vec<f32>,
    /// The state's other parts (an LSTM's c), [rows, E·H]; empty when the cell has none.
    extra: Vec<f32>,
    extra_next: Vec<f32>,
    gh: Vec<f32>,
}

/// Steps up to `capacity` independent sequences together. Sequences can join (at the zero
/// state) and leave between steps; the ones present are rows 0..rows().
pub struct Sampler {
    cell: Cell,
    /// The gate passes' instruction set (the products' is in their weights).
    kernel: Kernel,
    capacity: usize,
    rows: usize,
    hidden: usize,
    vocab: usize,
    table: Vec<f32>,
    layers: Vec<LayerState>,
    dense: Weights,
    dense_b: Vec<f32>,
    /// One row's tape, which sampling does not keep.
    tape: Vec<f32>,
    logits: Vec<f32>,
}

/// Values per sequence of the state's parts beyond h (an LSTM's c).
fn extra_width(cell: Cell, hidden: usize) -> usize {
    (cell.state_parts() - 1) * hidden
}

/// The first layer's input projection of every vocabulary entry, embedding · W_ihᵀ + b_ih,
/// [V, G·H], by the f32 packed product of `kernel`: the same arithmetic on every machine for a
/// kernel (the portable one's in a browser too), where a library product's would depend on the
/// CPU it found.
fn input_table(model: &Model, kernel: Kernel) -> Result<Vec<f32>> {
    let l0 = model.layer(0);
    let (g, e, v) = (l0.w_ih.dims2()?.0, model.config.embedding_dim, model.config.vocab_size);
    let mut w_ih = Weights::new(to_host(&l0.w_ih)?, g, e, CpuMath { kernel, bf16: false });
    let mut table = vec![0.0; v * g];
    w_ih.apply(&mut table, &to_host(&model.embedding)?, v, Some(&to_host(&l0.b_ih)?));
    Ok(table)
}

impl Sampler {
    /// A sampler for `batch` independent sequences, all present at the zero state, its
    /// products and passes in the model's compute (bf16 products where it says bf16, else
    /// f32).
    pub fn new(model: &Model, batch: usize) -> Result<Self> {
        let math = model.compute().cpu_math();
        let (h, v, cell) = (model.config.rnn_units, model.config.vocab_size, model.config.cell);
        let g = cell.gates() * h;
        let e = extra_width(cell, h);
        let weights = |t: &candle_core::Tensor, rows: usize| -> Result<Weights> {
            Ok(Weights::new(to_host(t)?, rows, h, math))
        };
        let mut layers = Vec::new();
        for l in 0..model.config.layers {
            let p = model.layer(l);
            let w_ih = match l {
                0 => None,
                _ => Some((weights(&p.w_ih, g)?, to_host(&p.b_ih)?)),
            };
            layers.push(LayerState {
                w_ih,
                w_hh: weights(&p.w_hh, g)?,
                b_hh: to_host(&p.b_hh)?,
                x: vec![0.0; batch * g],
                h: vec![0.0; batch * h],
                h_next: vec![0.0; batch * h],
                extra: vec![0.0; batch * e],
                extra_next: vec![0.0; batch * e],
                gh: vec![0.0; batch * g],
            });
        }
        Ok(Sampler {
            cell,
            kernel: math.kernel,
            capacity: batch,
            rows: batch,
            hidden: h,
            vocab: v,
            table: input_table(model, math.kernel)?,
            layers,
            dense: weights(model.param("dense.weight"), v)?,
            dense_b: to_host(model.param("dense.bias"))?,
            tape: vec![0.0; with_cell!(cell, C => C::TAPE) * h],
            logits: vec![0.0; batch * v],
        })
    }

    /// The sequences present.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The most sequences it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Logits per sequence.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Every sequence back to the zero state.
    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.h.fill(0.0);
            l.extra.fill(0.0);
        }
    }

    /// Keeps the sequences for which `keep(row)` is true, in their order, and drops the rest.
    /// The logits are stale until the next step.
    pub fn retain_rows(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let (h, e) = (self.hidden, extra_width(self.cell, self.hidden));
        let mut kept = 0;
        for row in 0..self.rows {
            if !keep(row) {
                continue;
            }
            if kept != row {
                for l in &mut self.layers {
                    l.h.copy_within(row * h..(row + 1) * h, kept * h);
                    l.extra.copy_within(row * e..(row + 1) * e, kept * e);
                }
            }
            kept += 1;
        }
        self.rows = kept;
    }

    /// Adds `n` sequences at the zero state after the present ones.
    pub fn add_rows(&mut self, n: usize) -> Result<()> {
        let total = self.rows.checked_add(n).filter(|&t| t <= self.capacity);
        let Some(total) = total else {
            bail!(
                "{} sequences are running and the sampler holds {}; cannot add {n}",
                self.rows,
                self.capacity
            )
        };
        let (h, e) = (self.hidden, extra_width(self.cell, self.hidden));
        for l in &mut self.layers {
            l.h[self.rows * h..total * h].fill(0.0);
            l.extra[self.rows * e..total * e].fill(0.0);
        }
        self.rows = total;
        Ok(())
    }

    /// The logits of the last step, [rows, V].
    pub fn logits(&self) -> &[f32] {
        &self.logits[..self.rows * self.vocab]
    }

    /// Feeds one character to each sequence present and returns the logits for the next,
    /// [rows, V].
    pub fn step(&mut self, ids: &[u32]) -> &[f32] {
        with_cell!(self.cell, C => self.step_cell::<C>(ids))
    }

    fn step_cell<C: RecurrentCell>(&mut self, ids: &[u32]) -> &[f32] {
        assert_eq!(ids.len(), self.rows, "one character per sequence");
        let (h, n) = (self.hidden, self.rows);
        let (g, e) = (C::GATES * h, C::EXTRA_STATE * h);
        let kernel = self.kernel;
        for l in 0..self.layers.len() {
            let (below, rest) = self.layers.split_at_mut(l);
            let layer = &mut rest[0];
            if let (Some((w_ih, b_ih)), Some(below)) = (&mut layer.w_ih, below.last()) {
                w_ih.apply(&mut layer.x, &below.h[..n * h], n, Some(b_ih));
            }
            layer.w_hh.apply(&mut layer.gh, &layer.h[..n * h], n, None);
            for (b, &id) in ids.iter().enumerate() {
                let x = match l {
                    0 => &self.table[id as usize * g..(id as usize + 1) * g],
                    _ => &layer.x[b * g..(b + 1) * g],
                };
                let step = StepForward {
                    x,
                    gh: &layer.gh[b * g..(b + 1) * g],
                    b_hh: &layer.b_hh,
                    h_prev: &layer.h[b * h..(b + 1) * h],
                    extra_prev: &layer.extra[b * e..(b + 1) * e],
                    h: &mut layer.h_next[b * h..(b + 1) * h],
                    extra: &mut layer.extra_next[b * e..(b + 1) * e],
                    tape: &mut self.tape,
                };
                C::forward(kernel, step);
            }
            std::mem::swap(&mut layer.h, &mut layer.h_next);
            std::mem::swap(&mut layer.extra, &mut layer.extra_next);
        }
        let top = &self.layers.last().expect("at least one layer").h[..n * h];
        self.dense.apply(&mut self.logits, top, n, Some(&self.dense_b));
        &self.logits[..n * self.vocab]
    }
}
