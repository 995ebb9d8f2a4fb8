//! The GRU over a whole sequence as one fused operation, with its own backward.
//!
//! Formulation: PyTorch's / cuDNN's (Keras `reset_after=True`), gate order r, z, n:
//!
//! ```text
//! r = σ(x_r + W_hr h + b_hr)        z = σ(x_z + W_hz h + b_hz)
//! n = tanh(x_n + r ⊙ (W_hn h + b_hn))
//! h' = (1 − z) ⊙ n + z ⊙ h
//! ```
//!
//! `x` is the input projection `W_ih e + b_ih`; for an embedding input it is a row of the V×3H
//! table `E·W_ihᵀ + b_ih`, so the layer takes that table and the token ids and looks rows up.
//! Per time step the forward pass does one [B×H]·[H×3H] product and one fused,
//! multi-threaded pass over the gates; the backward pass does one [B×3H]·[3H×H]
//! product per step and, after the sweep, dW_hh as one [3H × T·B]·[T·B × H] product.
//!
//! Internal buffers are time-major ([T, B, ·]) so that each step's rows are contiguous; the
//! tensors the operation exchanges with candle are batch-major ([B, T, ·]).

use std::sync::Mutex;

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor,
};
use multiversion::multiversion;
use rayon::prelude::*;

use crate::blas::{matmul, View};
use crate::float::{give_buffer, storage_slice, take_buffer, Float};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub steps: usize,
    pub hidden: usize,
}

/// What the forward pass keeps for the backward pass: h for every step ([T, B, H]) and, per
/// step and row, the activations r, z, n and the recurrent n-term W_hn h + b_hn ([T, B, 4H]).
pub struct Tape<T: Float> {
    pub dims: Dims,
    /// Rows of the input table: V.
    vocab: usize,
    /// The initial state [B, H], when not zero.
    h0: Option<Vec<T>>,
    pub hs: Vec<T>,
    pub gates: Vec<T>,
}

/// Gradients of the fused layer with respect to its three inputs.
pub struct Grads<T> {
    /// [V, 3H], the gradient of the input table.
    pub table: Vec<T>,
    /// [3H, H]
    pub w_hh: Vec<T>,
    /// [3H]
    pub b_hh: Vec<T>,
}

/// One step of gate arithmetic for one batch row. `gh` is W_hh·h_prev without bias; writes the
/// new state to `h_out` and (r, z, n, W_hn h + b_hn) to `gates`.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn gate_forward<T: Float>(h_out: &mut [T], gates: &mut [T], x: &[T], gh: &[T], b_hh: &[T], h_prev: &[T]) {
    let h = h_out.len();
    let (xr, xz, xn) = (&x[..h], &x[h..2 * h], &x[2 * h..3 * h]);
    let (gr, gz, gn) = (&gh[..h], &gh[h..2 * h], &gh[2 * h..3 * h]);
    let (br, bz, bn) = (&b_hh[..h], &b_hh[h..2 * h], &b_hh[2 * h..3 * h]);
    let h_prev = &h_prev[..h];
    let (r_out, rest) = gates[..4 * h].split_at_mut(h);
    let (z_out, rest) = rest.split_at_mut(h);
    let (n_out, ghn_out) = rest.split_at_mut(h);
    for j in 0..h {
        let r = T::sigmoid(xr[j] + gr[j] + br[j]);
        let z = T::sigmoid(xz[j] + gz[j] + bz[j]);
        let ghn = gn[j] + bn[j];
        let n = T::tanh_(xn[j] + r * ghn);
        h_out[j] = n + z * (h_prev[j] - n);
        r_out[j] = r;
        z_out[j] = z;
        n_out[j] = n;
        ghn_out[j] = ghn;
    }
}

/// The backward of [`gate_forward`] for one row. On entry `dh` holds the gradient reaching
/// h_t through the recurrence; `dh_out` is the gradient from the layer's output. Writes the
/// pre-activation gradients for the input projection (`dx`) and for W_hh·h_prev + b_hh
/// (`dgh`), and leaves in `dh` the part of dL/dh_prev that bypasses W_hh (dh_t ⊙ z).
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn gate_backward<T: Float>(
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

/// The forward pass. The input projection of token `ids[b·T + t]`
/// is row `ids[b·T + t]` of `table` ([V, 3H]); `w_hh` is [3H, H], `b_hh` [3H]. Returns the
/// tape; its `hs` holds the outputs (time-major). `h0` ([B, H]) is the initial state (zero
/// when `None`); it is a constant: no gradient flows into it (truncated backpropagation).
pub fn forward<T: Float>(
    dims: Dims,
    table: &[T],
    ids: &[u32],
    w_hh: &[T],
    b_hh: &[T],
    h0: Option<&[T]>,
) -> Tape<T> {
    let Dims { batch, steps, hidden: h } = dims;
    let vocab = table.len() / (3 * h);
    assert_eq!(table.len(), vocab * 3 * h);
    assert_eq!(ids.len(), batch * steps);
    assert!(ids.iter().all(|&i| (i as usize) < vocab), "token id outside the table");
    assert_eq!(w_hh.len(), 3 * h * h);
    assert_eq!(b_hh.len(), 3 * h);
    assert!(h0.is_none_or(|s| s.len() == batch * h), "initial state has the wrong size");
    let w_t = T::pack(View::rows(w_hh, 3 * h, h).t()); // W_hhᵀ [H, 3H], packed once for all steps
    let zeros = vec![T::zero(); h];
    // Both are written in full, step by step, before anything reads them.
    let mut hs = take_buffer(steps * batch * h);
    let mut gates = take_buffer(steps * batch * 4 * h);
    let mut gh = vec![T::zero(); batch * 3 * h];
    for t in 0..steps {
        let (done, rest) = hs.split_at_mut(t * batch * h);
        let h_now = &mut rest[..batch * h];
        let h_prev = if t > 0 { Some(&done[(t - 1) * batch * h..]) } else { h0 };
        if let Some(prev) = h_prev {
            T::matmul_packed(&mut gh, false, View::rows(prev, batch, h), &w_t);
        }
        let g_now = &mut gates[t * batch * 4 * h..(t + 1) * batch * 4 * h];
        h_now.par_chunks_mut(h).zip(g_now.par_chunks_mut(4 * h)).enumerate().for_each(
            |(b, (h_row, g_row))| {
                let id = ids[b * steps + t] as usize;
                let x = &table[id * 3 * h..(id + 1) * 3 * h];
                let prev = h_prev.map_or(&zeros[..], |p| &p[b * h..(b + 1) * h]);
                gate_forward(h_row, g_row, x, &gh[b * 3 * h..(b + 1) * 3 * h], b_hh, prev);
            },
        );
    }
    Tape { dims, vocab, h0: h0.map(<[T]>::to_vec), hs, gates }
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
        assert_eq!(grad_out.len(), batch * steps * h);
        let w_hh = T::pack(View::rows(w_hh, 3 * h, h)); // the right operand of dh = dgh · W_hh
        let zeros = vec![T::zero(); h];
        let mut dx = vec![T::zero(); batch * 3 * h]; // this step's input gradients
        let mut dgh = take_buffer(steps * batch * 3 * h); // written in full by the sweep
        let mut d_table = vec![T::zero(); self.vocab * 3 * h];
        let mut db = vec![T::zero(); 3 * h];
        let mut dh = vec![T::zero(); batch * h];
        for t in (0..steps).rev() {
            let rows = t * batch * 3 * h..(t + 1) * batch * 3 * h;
            let h_prev =
                if t > 0 { Some(&self.hs[(t - 1) * batch * h..t * batch * h]) } else { self.h0.as_deref() };
            let g_now = &self.gates[t * batch * 4 * h..(t + 1) * batch * 4 * h];
            dx.par_chunks_mut(3 * h)
                .zip(dgh[rows.clone()].par_chunks_mut(3 * h))
                .zip(dh.par_chunks_mut(h))
                .enumerate()
                .for_each(|(b, ((dx_row, dgh_row), dh_row))| {
                    gate_backward(
                        dx_row,
                        dgh_row,
                        dh_row,
                        &grad_out[(b * steps + t) * h..(b * steps + t + 1) * h],
                        &g_now[b * 4 * h..(b + 1) * 4 * h],
                        h_prev.map_or(&zeros[..], |p| &p[b * h..(b + 1) * h]),
                    );
                });
            let dgh_now = &dgh[rows];
            // Row sums that several batch rows may share a target of (same token id), so
            // each runs in one thread; the two run side by side.
            rayon::join(
                || {
                    for row in dgh_now.chunks_exact(3 * h) {
                        add_assign(&mut db, row);
                    }
                },
                || {
                    for (b, row) in dx.chunks_exact(3 * h).enumerate() {
                        let id = ids[b * steps + t] as usize;
                        add_assign(&mut d_table[id * 3 * h..(id + 1) * 3 * h], row);
                    }
                },
            );
            if t > 0 {
                // dL/dh_prev += dgh · W_hh
                T::matmul_packed(&mut dh, true, View::rows(dgh_now, batch, 3 * h), &w_hh);
            }
        }
        // dW_hh = Σ_t dgh_tᵀ · h_{t-1}: one product over steps 1.. and, from a non-zero
        // initial state, one for step 0.
        let mut dw = vec![T::zero(); 3 * h * h];
        if steps > 1 {
            let rows = (steps - 1) * batch;
            let dgh_rest = View::rows(&dgh[batch * 3 * h..], rows, 3 * h).t();
            matmul(&mut dw, false, dgh_rest, View::rows(&self.hs[..rows * h], rows, h));
        }
        if let Some(h0) = &self.h0 {
            let dgh_first = View::rows(&dgh[..batch * 3 * h], batch, 3 * h).t();
            matmul(&mut dw, true, dgh_first, View::rows(h0, batch, h));
        }
        give_buffer(dgh);
        Grads { table: d_table, w_hh: dw, b_hh: db }
    }
}

impl<T: Float> Drop for Tape<T> {
    fn drop(&mut self) {
        give_buffer(std::mem::take(&mut self.hs));
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
struct FusedGru {
    ids: Vec<u32>,
    /// The initial state [B, H] (a constant), or zero.
    h0: Option<Tensor>,
    batch: usize,
    steps: usize,
    keep_tape: bool,
    tape: Mutex<Option<AnyTape>>,
}

enum AnyTape {
    F32(Tape<f32>),
    F64(Tape<f64>),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::GruTape),
}

impl FusedGru {
    /// Checks the operands' shapes (table [V, 3H], W_hh [3H, H], b_hh [3H], ids < V, the
    /// initial state [B, H]); returns the dimensions and V.
    fn dims(&self, table: &Shape, w: &Shape, b: &Shape) -> Result<(Dims, usize)> {
        let (vocab, g3) = table.dims2()?;
        let hidden = g3 / 3;
        if g3 % 3 != 0 || w.dims() != [g3, hidden] || b.dims() != [g3] {
            bail!("fused GRU: shapes table {table:?}, w_hh {w:?}, b_hh {b:?} do not fit together");
        }
        if let Some(bad) = self.ids.iter().find(|&&i| i as usize >= vocab) {
            bail!("fused GRU: token id {bad} is outside the table of {vocab} rows");
        }
        if let Some(t) = self.h0.as_ref().filter(|t| t.dims() != [self.batch, hidden]) {
            bail!("fused GRU: initial state {:?}, expected [{}, {hidden}]", t.dims(), self.batch);
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
        let h0 = match &self.h0 {
            Some(t) => Some(t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?),
            None => None,
        };
        let tape = forward(
            dims,
            storage_slice(table.0, table.1)?,
            &self.ids,
            storage_slice(w.0, w.1)?,
            storage_slice(b.0, b.1)?,
            h0.as_deref(),
        );
        let out = tape.outputs();
        if self.keep_tape {
            *self.tape.lock().expect("tape lock") = Some(wrap(tape));
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from((self.batch, self.steps, dims.hidden))))
    }
}

impl FusedGru {
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
            let Storage::Cpu(cpu) = &*storage else { bail!("fused GRU: CPU tensors expected") };
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

impl CustomOp3 for FusedGru {
    fn name(&self) -> &'static str {
        "fused-gru"
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
            other => bail!("fused GRU: unsupported dtype {:?}", other.dtype()),
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
        let (dims, vocab) = self.dims(lt.shape(), lw.shape(), lb.shape())?;
        if table.dtype() != candle_core::DType::F32 {
            bail!("fused GRU: the GPU kernels are f32 only, not {:?}", table.dtype());
        }
        let dev = table.device();
        let h0 = self.h0.as_ref().map(|t| t.to_dtype(candle_core::DType::F32)?.contiguous()).transpose()?;
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
            bail!("fused GRU: backward without a recorded forward (or called twice)");
        };
        match tape {
            AnyTape::F32(t) => self.grads(&t, x, w, b, grad),
            AnyTape::F64(t) => self.grads(&t, x, w, b, grad),
            #[cfg(feature = "cuda")]
            AnyTape::Cuda(t) => {
                use crate::cuda::{tensor, tensor_addr};
                let candle_core::Device::Cuda(dev) = x.device() else {
                    bail!("fused GRU: GPU tensors expected")
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

/// Runs the GRU over the tokens `ids` ([B, T], u32), whose input projections are the rows of
/// `table` ([V, 3H]), from the state `h0` ([B, H], treated as a constant) or zero; returns
/// every h ([B, T, H]). With `for_training` the activations are kept so that `backward`
/// reaches table, W_hh and b_hh.
pub fn gru_sequence(
    table: &Tensor,
    ids: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    h0: Option<&Tensor>,
    for_training: bool,
) -> Result<Tensor> {
    let (batch, steps) = ids.dims2()?;
    let ids = ids.flatten_all()?.to_vec1::<u32>()?;
    let h0 = h0.map(Tensor::detach);
    let op = FusedGru { ids, h0, batch, steps, keep_tape: for_training, tape: Mutex::new(None) };
    let (x, w, b) = (table.contiguous()?, w_hh.contiguous()?, b_hh.contiguous()?);
    // Always registered with backward support: without a tape, a backward call fails loudly
    // instead of silently producing no gradient.
    x.apply_op3(&w, &b, op)
}
