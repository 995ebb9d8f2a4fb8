//! A recurrent layer (GRU or LSTM) over a whole sequence as one fused operation, with its own
//! backward.
//!
//! GRU: PyTorch's / cuDNN's formulation (Keras `reset_after=True`), gate order r, z, n:
//!
//! ```text
//! r = σ(x_r + W_hr h + b_hr)        z = σ(x_z + W_hz h + b_hz)
//! n = tanh(x_n + r ⊙ (W_hn h + b_hn))
//! h' = (1 − z) ⊙ n + z ⊙ h
//! ```
//!
//! LSTM: PyTorch's, gate order i, f, g, o, with a pre-activation a = x + W_hh h + b_hh:
//!
//! ```text
//! i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)
//! c' = f ⊙ c + i ⊙ g        h' = o ⊙ tanh(c')
//! ```
//!
//! `x` is the input projection `W_ih e + b_ih`; for an embedding input it is a row of the V×GH
//! table `E·W_ihᵀ + b_ih` (G gates: 3 or 4), so the layer takes that table and the token ids and
//! looks rows up. Per time step the forward pass does one [B×H]·[H×GH] product and one fused,
//! multi-threaded pass over the gates; the backward pass does one [B×GH]·[GH×H] product per
//! step and, after the sweep, dW_hh as one [GH × T·B]·[T·B × H] product. Only the two gate
//! passes differ between the cells.
//!
//! Internal buffers are time-major ([T, B, ·]) so that each step's rows are contiguous; the
//! tensors the operation exchanges with candle are batch-major ([B, T, ·]). A layer's state is
//! one row per sequence: h ([B, H]) for a GRU, h then c ([B, 2H]) for an LSTM.

use std::sync::Mutex;

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

use crate::blas::{matmul, View};
use crate::float::{give_buffer, storage_slice, take_buffer, Float};
use crate::kernel::{self, per_kernel};

/// The recurrent cell.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    #[default]
    Gru,
    Lstm,
}

impl Cell {
    /// Gates per unit: W_ih and W_hh have this many blocks of H rows.
    pub fn gates(self) -> usize {
        match self {
            Cell::Gru => 3,
            Cell::Lstm => 4,
        }
    }

    /// Vectors of H per sequence in the state: h, or h and c.
    pub fn state_parts(self) -> usize {
        match self {
            Cell::Gru => 1,
            Cell::Lstm => 2,
        }
    }

    /// The prefix of the parameter names, as PyTorch's `nn.GRU` / `nn.LSTM` module would have it.
    pub fn name(self) -> &'static str {
        match self {
            Cell::Gru => "gru",
            Cell::Lstm => "lstm",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub steps: usize,
    pub hidden: usize,
}

/// What the forward pass keeps for the backward pass: h (and, for an LSTM, c) for every step
/// ([T, B, H]) and, per step and row, 4H gate values ([T, B, 4H]): the GRU's activations r, z,
/// n and its recurrent n-term W_hn h + b_hn, or the LSTM's activations i, f, g, o.
pub struct Tape<T: Float> {
    pub cell: Cell,
    pub dims: Dims,
    /// Rows of the input table: V.
    vocab: usize,
    /// The initial h and c [B, H], when not zero.
    h0: Option<Vec<T>>,
    c0: Option<Vec<T>>,
    pub hs: Vec<T>,
    /// LSTM only (empty for a GRU).
    pub cs: Vec<T>,
    pub gates: Vec<T>,
}

/// Gradients of the fused layer with respect to its three inputs.
pub struct Grads<T> {
    /// [V, GH], the gradient of the input table.
    pub table: Vec<T>,
    /// [GH, H]
    pub w_hh: Vec<T>,
    /// [GH]
    pub b_hh: Vec<T>,
}

per_kernel! {
/// One step of gate arithmetic for one batch row. `gh` is W_hh·h_prev without bias; writes the
/// new state to `h_out` and (r, z, n, W_hn h + b_hn) to `gates`.
pub fn gate_forward<T: Float, I: Isa>(h_out: &mut [T], gates: &mut [T], x: &[T], gh: &[T], b_hh: &[T], h_prev: &[T]) {
    let h = h_out.len();
    let (xr, xz, xn) = (&x[..h], &x[h..2 * h], &x[2 * h..3 * h]);
    let (gr, gz, gn) = (&gh[..h], &gh[h..2 * h], &gh[2 * h..3 * h]);
    let (br, bz, bn) = (&b_hh[..h], &b_hh[h..2 * h], &b_hh[2 * h..3 * h]);
    let h_prev = &h_prev[..h];
    let (r_out, rest) = gates[..4 * h].split_at_mut(h);
    let (z_out, rest) = rest.split_at_mut(h);
    let (n_out, ghn_out) = rest.split_at_mut(h);
    for j in 0..h {
        let r = T::sigmoid::<I>(xr[j] + gr[j] + br[j]);
        let z = T::sigmoid::<I>(xz[j] + gz[j] + bz[j]);
        let ghn = gn[j] + bn[j];
        let n = T::tanh_::<I>(xn[j] + r * ghn);
        h_out[j] = n + z * (h_prev[j] - n);
        r_out[j] = r;
        z_out[j] = z;
        n_out[j] = n;
        ghn_out[j] = ghn;
    }
}
}

per_kernel! {
/// The backward of [`gate_forward`] for one row. On entry `dh` holds the gradient reaching
/// h_t through the recurrence; `dh_out` is the gradient from the layer's output. Writes the
/// pre-activation gradients for the input projection (`dx`) and for W_hh·h_prev + b_hh
/// (`dgh`), and leaves in `dh` the part of dL/dh_prev that bypasses W_hh (dh_t ⊙ z).
pub fn gate_backward<T: Float, I: Isa>(
    dx: &mut [T],
    dgh: &mut [T],
    dh: &mut [T],
    dh_out: &[T],
    gates: &[T],
    h_prev: &[T],
) {
    let h = dh.len();
    let one = T::one();
    let (r, z, n, ghn) = (&gates[..h], &gates[h..2 * h], &gates[2 * h..3 * h], &gates[3 * h..4 * h]);
    let (dxr, rest) = dx[..3 * h].split_at_mut(h);
    let (dxz, dxn) = rest.split_at_mut(h);
    let (dgr, rest) = dgh[..3 * h].split_at_mut(h);
    let (dgz, dgn) = rest.split_at_mut(h);
    let (dh_out, h_prev) = (&dh_out[..h], &h_prev[..h]);
    for j in 0..h {
        let d = dh[j] + dh_out[j];
        let dn_pre = d * (one - z[j]) * (one - n[j] * n[j]);
        let dz_pre = d * (h_prev[j] - n[j]) * z[j] * (one - z[j]);
        let dr_pre = dn_pre * ghn[j] * r[j] * (one - r[j]);
        dxr[j] = dr_pre;
        dxz[j] = dz_pre;
        dxn[j] = dn_pre;
        dgr[j] = dr_pre;
        dgz[j] = dz_pre;
        dgn[j] = dn_pre * r[j];
        dh[j] = d * z[j];
    }
}
}

per_kernel! {
/// One LSTM step for one batch row. `gh` is W_hh·h_prev without bias; writes h and c to
/// `h_out` and `c_out` and the activations (i, f, g, o) to `gates`.
pub fn lstm_gate_forward<T: Float, I: Isa>(
    h_out: &mut [T],
    c_out: &mut [T],
    gates: &mut [T],
    x: &[T],
    gh: &[T],
    b_hh: &[T],
    c_prev: &[T],
) {
    let h = h_out.len();
    let (c_out, c_prev) = (&mut c_out[..h], &c_prev[..h]);
    let (x, gh, b_hh, gates) = (&x[..4 * h], &gh[..4 * h], &b_hh[..4 * h], &mut gates[..4 * h]);
    for j in 0..h {
        let pre = |k: usize| x[k * h + j] + gh[k * h + j] + b_hh[k * h + j];
        let (i, f, g, o) = (T::sigmoid::<I>(pre(0)), T::sigmoid::<I>(pre(1)), T::tanh_::<I>(pre(2)), T::sigmoid::<I>(pre(3)));
        let c = f * c_prev[j] + i * g;
        c_out[j] = c;
        h_out[j] = o * T::tanh_::<I>(c);
        gates[j] = i;
        gates[h + j] = f;
        gates[2 * h + j] = g;
        gates[3 * h + j] = o;
    }
}
}

per_kernel! {
/// The backward of [`lstm_gate_forward`] for one row. On entry `dh` and `dc` hold the
/// gradients reaching h_t and c_t through the recurrence; `dh_out` is the gradient from the
/// layer's output. Writes the pre-activation gradients, which are the same for the input
/// projection (`dx`) and for W_hh·h_prev + b_hh (`dgh`); leaves dL/dc_prev in `dc` and zero in
/// `dh` (all of dL/dh_prev goes through W_hh; the caller adds dgh · W_hh).
pub fn lstm_gate_backward<T: Float, I: Isa>(
    dx: &mut [T],
    dgh: &mut [T],
    dh: &mut [T],
    dc: &mut [T],
    dh_out: &[T],
    gates: &[T],
    c_prev: &[T],
    c_now: &[T],
) {
    let h = dh.len();
    let one = T::one();
    let (dc, dh_out, c_prev, c_now) = (&mut dc[..h], &dh_out[..h], &c_prev[..h], &c_now[..h]);
    let (dx, dgh, gates) = (&mut dx[..4 * h], &mut dgh[..4 * h], &gates[..4 * h]);
    for j in 0..h {
        let (i, f, g, o) = (gates[j], gates[h + j], gates[2 * h + j], gates[3 * h + j]);
        let tc = T::tanh_::<I>(c_now[j]);
        let d = dh[j] + dh_out[j];
        let dct = dc[j] + d * o * (one - tc * tc);
        let pre = [
            dct * g * i * (one - i),
            dct * c_prev[j] * f * (one - f),
            dct * i * (one - g * g),
            d * tc * o * (one - o),
        ];
        for (k, v) in pre.into_iter().enumerate() {
            dx[k * h + j] = v;
            dgh[k * h + j] = v;
        }
        dc[j] = dct * f;
        dh[j] = T::zero();
    }
}
}

/// The forward pass. The input projection of token `ids[b·T + t]` is row `ids[b·T + t]` of
/// `table` ([V, GH]); `w_hh` is [GH, H], `b_hh` [GH]. Returns the tape; its `hs` holds the
/// outputs (time-major). `state0` ([B, H] or, for an LSTM, [B, 2H]: h then c) is the initial
/// state (zero when `None`); it is a constant: no gradient flows into it (truncated
/// backpropagation).
pub fn forward<T: Float>(
    cell: Cell,
    dims: Dims,
    table: &[T],
    ids: &[u32],
    w_hh: &[T],
    b_hh: &[T],
    state0: Option<&[T]>,
) -> Tape<T> {
    let Dims { batch, steps, hidden: h } = dims;
    let gh_width = cell.gates() * h;
    let vocab = table.len() / gh_width;
    assert_eq!(table.len(), vocab * gh_width);
    assert_eq!(ids.len(), batch * steps);
    assert!(ids.iter().all(|&i| (i as usize) < vocab), "token id outside the table");
    assert_eq!(w_hh.len(), gh_width * h);
    assert_eq!(b_hh.len(), gh_width);
    assert!(
        state0.is_none_or(|s| s.len() == batch * cell.state_parts() * h),
        "initial state has the wrong size"
    );
    // h0 and c0 as [B, H] each.
    let part = |k: usize| -> Option<Vec<T>> {
        let s = state0?;
        let width = cell.state_parts() * h;
        Some(s.chunks_exact(width).flat_map(|row| &row[k * h..(k + 1) * h]).copied().collect())
    };
    let (h0, c0) = (part(0), if cell == Cell::Lstm { part(1) } else { None });
    let w_t = T::pack(View::rows(w_hh, gh_width, h).t()); // W_hhᵀ [H, GH], packed once for all steps
    let kernel = kernel::active(); // the gate passes' instruction set, read once for the sweep
    let zeros = vec![T::zero(); h];
    // Written in full, step by step, before anything reads them.
    let mut hs = take_buffer(steps * batch * h);
    let mut cs = if cell == Cell::Lstm { take_buffer(steps * batch * h) } else { Vec::new() };
    let mut gates = take_buffer(steps * batch * 4 * h);
    let mut gh = vec![T::zero(); batch * gh_width];
    for t in 0..steps {
        let (done, rest) = hs.split_at_mut(t * batch * h);
        let h_now = &mut rest[..batch * h];
        let h_prev = if t > 0 { Some(&done[(t - 1) * batch * h..]) } else { h0.as_deref() };
        if let Some(prev) = h_prev {
            T::matmul_packed(&mut gh, false, View::rows(prev, batch, h), &w_t);
        }
        let g_now = &mut gates[t * batch * 4 * h..(t + 1) * batch * 4 * h];
        let rows = h_now.par_chunks_mut(h).zip(g_now.par_chunks_mut(4 * h)).enumerate();
        let x_of = |b: usize| {
            let id = ids[b * steps + t] as usize;
            &table[id * gh_width..(id + 1) * gh_width]
        };
        let gh_of = |b: usize| &gh[b * gh_width..(b + 1) * gh_width];
        match cell {
            Cell::Gru => rows.for_each(|(b, (h_row, g_row))| {
                let prev = h_prev.map_or(&zeros[..], |p| &p[b * h..(b + 1) * h]);
                gate_forward(kernel, h_row, g_row, x_of(b), gh_of(b), b_hh, prev);
            }),
            Cell::Lstm => {
                let (c_done, c_rest) = cs.split_at_mut(t * batch * h);
                let c_prev = if t > 0 { Some(&c_done[(t - 1) * batch * h..]) } else { c0.as_deref() };
                rows.zip(c_rest[..batch * h].par_chunks_mut(h)).for_each(|((b, (h_row, g_row)), c_row)| {
                    let prev = c_prev.map_or(&zeros[..], |p| &p[b * h..(b + 1) * h]);
                    lstm_gate_forward(kernel, h_row, c_row, g_row, x_of(b), gh_of(b), b_hh, prev);
                });
            }
        }
    }
    Tape { cell, dims, vocab, h0, c0, hs, cs, gates }
}

impl<T: Float> Tape<T> {
    /// The outputs h_1..h_T, batch-major [B, T, H].
    pub fn outputs(&self) -> Vec<T> {
        let Dims { batch, steps, hidden: h } = self.dims;
        let mut out = vec![T::zero(); batch * steps * h];
        out.par_chunks_mut(steps * h).enumerate().for_each(|(b, rows)| {
            for t in 0..steps {
                rows[t * h..(t + 1) * h]
                    .copy_from_slice(&self.hs[(t * batch + b) * h..(t * batch + b + 1) * h]);
            }
        });
        out
    }

    /// Backpropagation through time. `grad_out` is dL/dh for every output, [B, T, H]; `ids`
    /// and `w_hh` are the forward pass's.
    pub fn backward(&self, grad_out: &[T], ids: &[u32], w_hh: &[T]) -> Grads<T> {
        let Dims { batch, steps, hidden: h } = self.dims;
        let g = self.cell.gates() * h;
        assert_eq!(grad_out.len(), batch * steps * h);
        let w_hh = T::pack(View::rows(w_hh, g, h)); // the right operand of dh = dgh · W_hh
        let kernel = kernel::active();
        let zeros = vec![T::zero(); h];
        let mut dx = vec![T::zero(); batch * g]; // this step's input gradients
        let mut dgh = take_buffer(steps * batch * g); // written in full by the sweep
        let mut d_table = vec![T::zero(); self.vocab * g];
        let mut db = vec![T::zero(); g];
        let mut dh = vec![T::zero(); batch * h];
        let mut dc = vec![T::zero(); batch * h]; // LSTM only
        for t in (0..steps).rev() {
            let rows = t * batch * g..(t + 1) * batch * g;
            let h_prev =
                if t > 0 { Some(&self.hs[(t - 1) * batch * h..t * batch * h]) } else { self.h0.as_deref() };
            let lstm = self.cell == Cell::Lstm;
            let c_prev = if t > 0 && lstm {
                Some(&self.cs[(t - 1) * batch * h..t * batch * h])
            } else {
                self.c0.as_deref()
            };
            let g_now = &self.gates[t * batch * 4 * h..(t + 1) * batch * 4 * h];
            let cell = self.cell;
            dx.par_chunks_mut(g)
                .zip(dgh[rows.clone()].par_chunks_mut(g))
                .zip(dh.par_chunks_mut(h).zip(dc.par_chunks_mut(h)))
                .enumerate()
                .for_each(|(b, ((dx_row, dgh_row), (dh_row, dc_row)))| {
                    let row = b * h..(b + 1) * h;
                    let dh_out = &grad_out[(b * steps + t) * h..(b * steps + t + 1) * h];
                    let gates = &g_now[b * 4 * h..(b + 1) * 4 * h];
                    match cell {
                        Cell::Gru => {
                            let prev = h_prev.map_or(&zeros[..], |p| &p[row]);
                            gate_backward(kernel, dx_row, dgh_row, dh_row, dh_out, gates, prev);
                        }
                        Cell::Lstm => {
                            let prev = c_prev.map_or(&zeros[..], |p| &p[row.clone()]);
                            let now = &self.cs[t * batch * h..(t + 1) * batch * h][row];
                            lstm_gate_backward(
                                kernel, dx_row, dgh_row, dh_row, dc_row, dh_out, gates, prev, now,
                            );
                        }
                    }
                });
            let dgh_now = &dgh[rows];
            // Row sums that several batch rows may share a target of (same token id), so
            // each runs in one thread; the two run side by side.
            rayon::join(
                || {
                    for row in dgh_now.chunks_exact(g) {
                        add_assign(&mut db, row);
                    }
                },
                || {
                    for (b, row) in dx.chunks_exact(g).enumerate() {
                        let id = ids[b * steps + t] as usize;
                        add_assign(&mut d_table[id * g..(id + 1) * g], row);
                    }
                },
            );
            if t > 0 {
                // dL/dh_prev += dgh · W_hh
                T::matmul_packed(&mut dh, true, View::rows(dgh_now, batch, g), &w_hh);
            }
        }
        // dW_hh = Σ_t dgh_tᵀ · h_{t-1}: one product over steps 1.. and, from a non-zero
        // initial state, one for step 0.
        let mut dw = vec![T::zero(); g * h];
        if steps > 1 {
            let rows = (steps - 1) * batch;
            let dgh_rest = View::rows(&dgh[batch * g..], rows, g).t();
            matmul(&mut dw, false, dgh_rest, View::rows(&self.hs[..rows * h], rows, h));
        }
        if let Some(h0) = &self.h0 {
            let dgh_first = View::rows(&dgh[..batch * g], batch, g).t();
            matmul(&mut dw, true, dgh_first, View::rows(h0, batch, h));
        }
        give_buffer(dgh);
        Grads { table: d_table, w_hh: dw, b_hh: db }
    }
}

impl<T: Float> Drop for Tape<T> {
    fn drop(&mut self) {
        give_buffer(std::mem::take(&mut self.hs));
        give_buffer(std::mem::take(&mut self.cs));
        give_buffer(std::mem::take(&mut self.gates));
    }
}

fn add_assign<T: Float>(acc: &mut [T], x: &[T]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += *v;
    }
}

/// The fused layer as a candle operation, so that autograd reaches the input projection (and
/// through it the embedding and W_ih) as well as W_hh and b_hh.
struct FusedRnn {
    cell: Cell,
    ids: Vec<u32>,
    /// The initial state [B, H] or [B, 2H] (a constant), or zero.
    state0: Option<Tensor>,
    batch: usize,
    steps: usize,
    keep_tape: bool,
    tape: Mutex<Option<AnyTape>>,
    /// An LSTM's final c [B, H], which is not among the outputs; shared with the caller.
    final_c: std::sync::Arc<Mutex<Option<Tensor>>>,
}

enum AnyTape {
    F32(Tape<f32>),
    F64(Tape<f64>),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::GruTape),
}

impl FusedRnn {
    /// Checks the operands' shapes (table [V, GH], W_hh [GH, H], b_hh [GH], ids < V, the
    /// initial state [B, H] or [B, 2H]); returns the dimensions and V.
    fn dims(&self, table: &Shape, w: &Shape, b: &Shape) -> Result<(Dims, usize)> {
        let (vocab, width) = table.dims2()?;
        let gates = self.cell.gates();
        let hidden = width / gates;
        if width % gates != 0 || w.dims() != [width, hidden] || b.dims() != [width] {
            bail!(
                "fused {:?}: shapes table {table:?}, w_hh {w:?}, b_hh {b:?} do not fit together",
                self.cell
            );
        }
        if let Some(bad) = self.ids.iter().find(|&&i| i as usize >= vocab) {
            bail!("fused {:?}: token id {bad} is outside the table of {vocab} rows", self.cell);
        }
        let state_width = self.cell.state_parts() * hidden;
        if let Some(t) = self.state0.as_ref().filter(|t| t.dims() != [self.batch, state_width]) {
            bail!(
                "fused {:?}: initial state {:?}, expected [{}, {state_width}]",
                self.cell,
                t.dims(),
                self.batch
            );
        }
        Ok((Dims { batch: self.batch, steps: self.steps, hidden }, vocab))
    }

    fn run<T: Float>(
        &self,
        table: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: (&CpuStorage, &Layout),
        wrap: fn(Tape<T>) -> AnyTape,
    ) -> Result<(CpuStorage, Shape)> {
        let (dims, _) = self.dims(table.1.shape(), w.1.shape(), b.1.shape())?;
        let state0 = match &self.state0 {
            Some(t) => Some(t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?),
            None => None,
        };
        let tape = forward(
            self.cell,
            dims,
            storage_slice(table.0, table.1)?,
            &self.ids,
            storage_slice(w.0, w.1)?,
            storage_slice(b.0, b.1)?,
            state0.as_deref(),
        );
        let out = tape.outputs();
        if self.cell == Cell::Lstm {
            let (bh, last) = (dims.batch * dims.hidden, tape.cs.len());
            let c_final = Tensor::from_slice(
                &tape.cs[last - bh..],
                (dims.batch, dims.hidden),
                &candle_core::Device::Cpu,
            )?;
            *self.final_c.lock().expect("final state lock") = Some(c_final);
        }
        if self.keep_tape {
            *self.tape.lock().expect("tape lock") = Some(wrap(tape));
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from((self.batch, self.steps, dims.hidden))))
    }
}

impl FusedRnn {
    fn grads<T: Float>(
        &self,
        tape: &Tape<T>,
        table: &Tensor,
        w: &Tensor,
        b: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?.flatten_all()?.to_vec1::<T>()?;
        let g = {
            let (storage, layout) = w.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else { bail!("fused recurrent layer: CPU tensors expected") };
            tape.backward(&grad, &self.ids, storage_slice(cpu, layout)?)
        };
        let dev = table.device();
        Ok((
            Some(Tensor::from_vec(g.table, table.shape(), dev)?),
            Some(Tensor::from_vec(g.w_hh, w.shape(), dev)?),
            Some(Tensor::from_vec(g.b_hh, b.shape(), dev)?),
        ))
    }
}

impl CustomOp3 for FusedRnn {
    fn name(&self) -> &'static str {
        "fused-rnn"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        match s1 {
            CpuStorage::F32(_) => self.run::<f32>((s1, l1), (s2, l2), (s3, l3), AnyTape::F32),
            CpuStorage::F64(_) => self.run::<f64>((s1, l1), (s2, l2), (s3, l3), AnyTape::F64),
            other => bail!("fused recurrent layer: unsupported dtype {:?}", other.dtype()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        table: &candle_core::CudaStorage,
        lt: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
        b: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda::{gru_forward, storage, storage_addr, tensor_addr};
        if self.cell != Cell::Gru {
            bail!("--cell {} has no GPU kernels yet; train it with --device cpu", self.cell.name());
        }
        let (dims, vocab) = self.dims(lt.shape(), lw.shape(), lb.shape())?;
        if table.dtype() != candle_core::DType::F32 {
            bail!("fused recurrent layer: the GPU kernels are f32 only, not {:?}", table.dtype());
        }
        let dev = table.device();
        let h0 =
            self.state0.as_ref().map(|t| t.to_dtype(candle_core::DType::F32)?.contiguous()).transpose()?;
        let (out, tape) = gru_forward(
            dev,
            (dims.batch, dims.steps, dims.hidden, vocab),
            storage_addr(table, lt)?,
            &self.ids,
            storage_addr(w, lw)?,
            storage_addr(b, lb)?,
            h0.as_ref().map(tensor_addr).transpose()?,
            self.keep_tape,
        )?;
        if let Some(tape) = tape {
            *self.tape.lock().expect("tape lock") = Some(AnyTape::Cuda(tape));
        }
        Ok((storage(out, dev), Shape::from((dims.batch, dims.steps, dims.hidden))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(tape) = self.tape.lock().expect("tape lock").take() else {
            bail!("fused recurrent layer: backward without a recorded forward (or called twice)");
        };
        match tape {
            AnyTape::F32(t) => self.grads(&t, x, w, b, grad),
            AnyTape::F64(t) => self.grads(&t, x, w, b, grad),
            #[cfg(feature = "cuda")]
            AnyTape::Cuda(t) => {
                use crate::cuda::{tensor, tensor_addr};
                let candle_core::Device::Cuda(dev) = x.device() else {
                    bail!("fused recurrent layer: GPU tensors expected")
                };
                let (grad, w_hh) = (grad.contiguous()?, w.contiguous()?);
                let (d_table, d_w, d_b) = t.backward(dev, tensor_addr(&grad)?, tensor_addr(&w_hh)?)?;
                Ok((
                    Some(tensor(d_table, dev, x.shape())),
                    Some(tensor(d_w, dev, w.shape())),
                    Some(tensor(d_b, dev, b.shape())),
                ))
            }
        }
    }
}

/// Runs a recurrent layer over the tokens `ids` ([B, T], u32), whose input projections are the
/// rows of `table` ([V, GH]), from the state `state0` ([B, H], or [B, 2H] for an LSTM: h then
/// c; treated as a constant) or zero. Returns every h ([B, T, H]) and the final state (the
/// shape of `state0`, detached). With `for_training` the activations are kept so that
/// `backward` reaches table, W_hh and b_hh.
pub fn rnn_sequence(
    cell: Cell,
    table: &Tensor,
    ids: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    state0: Option<&Tensor>,
    for_training: bool,
) -> Result<(Tensor, Tensor)> {
    let (batch, steps) = ids.dims2()?;
    let ids = ids.flatten_all()?.to_vec1::<u32>()?;
    let state0 = state0.map(Tensor::detach);
    let final_c = std::sync::Arc::new(Mutex::new(None));
    let op = FusedRnn {
        cell,
        ids,
        state0,
        batch,
        steps,
        keep_tape: for_training,
        tape: Mutex::new(None),
        final_c: final_c.clone(),
    };
    let (x, w, b) = (table.contiguous()?, w_hh.contiguous()?, b_hh.contiguous()?);
    // Always registered with backward support: without a tape, a backward call fails loudly
    // instead of silently producing no gradient.
    let out = x.apply_op3(&w, &b, op)?;
    let h_final = out.narrow(1, steps - 1, 1)?.squeeze(1)?.detach();
    let state = match final_c.lock().expect("final state lock").take() {
        Some(c) => Tensor::cat(&[&h_final, &c.to_device(out.device())?.to_dtype(out.dtype())?], 1)?,
        None => h_final.contiguous()?,
    };
    Ok((out, state))
}
