//! A recurrent layer over a whole sequence as one fused operation, with its own backward,
//! generic over the cell (`crate::ops::cells`).
//!
//! `x` is the input projection `W_ih e + b_ih`; for an embedding input it is a row of the V×GH
//! table `E·W_ihᵀ + b_ih` (G gates), so the layer takes that table and the token ids and looks
//! rows up. Per time step the forward pass does one [B×H]·[H×GH] product and one fused,
//! multi-threaded pass of the cell's gate arithmetic; the backward pass does one [B×GH]·[GH×H]
//! product per step and, after the sweep, dW_hh as one [GH × T·B]·[T·B × H] product.
//!
//! Internal buffers are time-major ([T, B, ·]) so that each step's rows are contiguous; the
//! tensors the operation exchanges with candle are batch-major ([B, T, ·]). A layer's state is
//! one row per sequence: h, then the cell's other state parts (an LSTM's c): [B, P·H].

use std::sync::Mutex;

use candle_core::{backend::BackendStorage, bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::compute::{Compute, CpuMath};
use crate::kernels::cpu::blas::View;
use crate::kernels::cpu::float::{give_buffer, storage_slice, take_buffer, with_cpu_slice, Float};
use crate::ops::cells::{with_cell, Cell, RecurrentCell, StepBackward, StepForward};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    pub batch: usize,
    pub steps: usize,
    pub hidden: usize,
}

/// What the forward pass keeps for the backward pass, time-major: h for every step
/// ([T, B, H]), the cell's other state parts ([T, B, E·H]; empty when it has none) and its
/// tape ([T, B, TAPE·H]).
pub(crate) struct Tape<T: Float> {
    pub cell: Cell,
    pub dims: Dims,
    /// The kernel and precision of the forward pass, which the backward pass uses too.
    math: CpuMath,
    /// Rows of the input table: V.
    vocab: usize,
    /// The initial h [B, H] and other state parts [B, E·H], when not zero.
    h0: Option<Vec<T>>,
    extra0: Option<Vec<T>>,
    pub hs: Vec<T>,
    pub extras: Vec<T>,
    pub tapes: Vec<T>,
}

/// Gradients of the fused layer with respect to its three inputs.
pub(crate) struct Grads<T> {
    /// [V, GH], the gradient of the input table.
    pub table: Vec<T>,
    /// [GH, H]
    pub w_hh: Vec<T>,
    /// [GH]
    pub b_hh: Vec<T>,
}

/// The forward pass, its products and gate passes in `math`. The input projection of token
/// `ids[b·T + t]` is row `ids[b·T + t]` of `table` ([V, GH]); `w_hh` is [GH, H], `b_hh` [GH].
/// Returns the tape; its `hs` holds the outputs (time-major). `state0` ([B, P·H]: h, then the
/// other parts) is the initial state (zero when `None`); it is a constant: no gradient flows
/// into it (truncated backpropagation).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T: Float>(
    math: CpuMath,
    cell: Cell,
    dims: Dims,
    table: &[T],
    ids: &[u32],
    w_hh: &[T],
    b_hh: &[T],
    state0: Option<&[T]>,
) -> Tape<T> {
    with_cell!(cell, C => forward_cell::<C, T>(math, cell, dims, table, ids, w_hh, b_hh, state0))
}

#[allow(clippy::too_many_arguments)]
fn forward_cell<C: RecurrentCell, T: Float>(
    math: CpuMath,
    cell: Cell,
    dims: Dims,
    table: &[T],
    ids: &[u32],
    w_hh: &[T],
    b_hh: &[T],
    state0: Option<&[T]>,
) -> Tape<T> {
    let Dims { batch, steps, hidden: h } = dims;
    let gh_width = C::GATES * h;
    let (e, tw) = (C::EXTRA_STATE * h, C::TAPE * h);
    let vocab = table.len() / gh_width;
    assert_eq!(table.len(), vocab * gh_width);
    assert_eq!(ids.len(), batch * steps);
    assert!(ids.iter().all(|&i| (i as usize) < vocab), "token id outside the table");
    assert_eq!(w_hh.len(), gh_width * h);
    assert_eq!(b_hh.len(), gh_width);
    assert!(state0.is_none_or(|s| s.len() == batch * (h + e)), "initial state has the wrong size");
    // h0 [B, H] and the other parts [B, E·H] of the initial state.
    let part = |range: std::ops::Range<usize>| -> Option<Vec<T>> {
        let s = state0?;
        Some(s.chunks_exact(h + e).flat_map(|row| &row[range.clone()]).copied().collect())
    };
    let (h0, extra0) = (part(0..h), if e > 0 { part(h..h + e) } else { None });
    let w_t = T::pack(math, View::rows(w_hh, gh_width, h).t()); // W_hhᵀ [H, GH], packed once for all steps
    let kernel = math.kernel; // the gate passes' instruction set
    let zeros = vec![T::zero(); h.max(e)];
    // Written in full, step by step, before anything reads them.
    let mut hs = take_buffer(steps * batch * h);
    let mut extras = if e > 0 { take_buffer(steps * batch * e) } else { Vec::new() };
    let mut tapes = take_buffer(steps * batch * tw);
    let mut gh = vec![T::zero(); batch * gh_width];
    for t in 0..steps {
        let (done, rest) = hs.split_at_mut(t * batch * h);
        let h_now = &mut rest[..batch * h];
        let h_prev = if t > 0 { Some(&done[(t - 1) * batch * h..]) } else { h0.as_deref() };
        if let Some(prev) = h_prev {
            T::matmul_packed(&mut gh, false, View::rows(prev, batch, h), &w_t);
        }
        let (e_done, e_rest) = extras.split_at_mut(t * batch * e);
        let e_prev = if t > 0 { Some(&e_done[(t - 1) * batch * e..]) } else { extra0.as_deref() };
        let tape_now = &mut tapes[t * batch * tw..(t + 1) * batch * tw];
        h_now
            .par_chunks_mut(h)
            .zip(tape_now.par_chunks_mut(tw.max(1)))
            .zip(rows_mut(e_rest, batch, e))
            .enumerate()
            .for_each(|(b, ((h_row, tape), extra))| {
                let id = ids[b * steps + t] as usize;
                C::forward(
                    kernel,
                    StepForward {
                        x: &table[id * gh_width..(id + 1) * gh_width],
                        gh: &gh[b * gh_width..(b + 1) * gh_width],
                        b_hh,
                        h_prev: h_prev.map_or(&zeros[..h], |p| &p[b * h..(b + 1) * h]),
                        extra_prev: e_prev.map_or(&zeros[..e], |p| &p[b * e..(b + 1) * e]),
                        h: h_row,
                        extra,
                        tape,
                    },
                );
            });
    }
    Tape { cell, dims, math, vocab, h0, extra0, hs, extras, tapes }
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

    /// The other state parts after the last step, [B, E·H] (empty when the cell has none).
    pub fn final_extra(&self) -> &[T] {
        let n = self.extras.len() / self.dims.steps.max(1);
        &self.extras[self.extras.len() - n..]
    }

    /// Backpropagation through time. `grad_out` is dL/dh for every output, [B, T, H]; `ids`
    /// and `w_hh` are the forward pass's.
    pub fn backward(&self, grad_out: &[T], ids: &[u32], w_hh: &[T]) -> Grads<T> {
        with_cell!(self.cell, C => self.backward_cell::<C>(grad_out, ids, w_hh))
    }

    fn backward_cell<C: RecurrentCell>(&self, grad_out: &[T], ids: &[u32], w_hh: &[T]) -> Grads<T> {
        let Dims { batch, steps, hidden: h } = self.dims;
        let g = C::GATES * h;
        let (e, tw) = (C::EXTRA_STATE * h, C::TAPE * h);
        assert_eq!(grad_out.len(), batch * steps * h);
        let w_hh = T::pack(self.math, View::rows(w_hh, g, h)); // the right operand of dh = dgh · W_hh
        let kernel = self.math.kernel;
        let zeros = vec![T::zero(); h.max(e)];
        let mut dx = vec![T::zero(); batch * g]; // this step's input gradients
        let mut dgh = take_buffer(steps * batch * g); // written in full by the sweep
        let mut d_table = vec![T::zero(); self.vocab * g];
        let mut db = vec![T::zero(); g];
        let mut dh = vec![T::zero(); batch * h];
        let mut d_extra = vec![T::zero(); batch * e];
        for t in (0..steps).rev() {
            let rows = t * batch * g..(t + 1) * batch * g;
            let h_prev =
                if t > 0 { Some(&self.hs[(t - 1) * batch * h..t * batch * h]) } else { self.h0.as_deref() };
            let e_prev = if t > 0 {
                Some(&self.extras[(t - 1) * batch * e..t * batch * e])
            } else {
                self.extra0.as_deref()
            };
            let e_now = &self.extras[t * batch * e..(t + 1) * batch * e];
            let tape_now = &self.tapes[t * batch * tw..(t + 1) * batch * tw];
            dx.par_chunks_mut(g)
                .zip(dgh[rows.clone()].par_chunks_mut(g))
                .zip(dh.par_chunks_mut(h))
                .zip(rows_mut(&mut d_extra, batch, e))
                .enumerate()
                .for_each(|(b, (((dx, dgh), dh), d_extra))| {
                    C::backward(
                        kernel,
                        StepBackward {
                            dh_out: &grad_out[(b * steps + t) * h..(b * steps + t + 1) * h],
                            tape: &tape_now[b * tw..(b + 1) * tw],
                            h_prev: h_prev.map_or(&zeros[..h], |p| &p[b * h..(b + 1) * h]),
                            extra_prev: e_prev.map_or(&zeros[..e], |p| &p[b * e..(b + 1) * e]),
                            extra: &e_now[b * e..(b + 1) * e],
                            dx,
                            dgh,
                            dh,
                            d_extra,
                        },
                    );
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
        let dw = self.weight_gradient(&dgh, g);
        give_buffer(dgh);
        Grads { table: d_table, w_hh: dw, b_hh: db }
    }

    /// dW_hh = Σ_t dgh_tᵀ · h_{t-1} from every step's gate gradients `dgh` ([T, B, G]): one
    /// product over steps 1.. and, from a non-zero initial state, one for step 0.
    fn weight_gradient(&self, dgh: &[T], g: usize) -> Vec<T> {
        let Dims { batch, steps, hidden: h } = self.dims;
        let mut dw = vec![T::zero(); g * h];
        if steps > 1 {
            let rows = (steps - 1) * batch;
            let dgh_rest = View::rows(&dgh[batch * g..], rows, g).t();
            T::matmul_once(self.math, &mut dw, false, dgh_rest, View::rows(&self.hs[..rows * h], rows, h));
        }
        if let Some(h0) = &self.h0 {
            let dgh_first = View::rows(&dgh[..batch * g], batch, g).t();
            T::matmul_once(self.math, &mut dw, true, dgh_first, View::rows(h0, batch, h));
        }
        dw
    }
}

impl<T: Float> Drop for Tape<T> {
    fn drop(&mut self) {
        give_buffer(std::mem::take(&mut self.hs));
        give_buffer(std::mem::take(&mut self.extras));
        give_buffer(std::mem::take(&mut self.tapes));
    }
}

/// The first `batch` rows of `width` values of `buf`, as slices to hand out one per batch row
/// (empty ones when the width is 0, as for a cell without extra state).
fn rows_mut<T: Send>(buf: &mut [T], batch: usize, width: usize) -> rayon::vec::IntoIter<&mut [T]> {
    let rows: Vec<&mut [T]> = match width {
        0 => (0..batch).map(|_| Default::default()).collect(),
        _ => buf[..batch * width].chunks_mut(width).collect(),
    };
    rows.into_par_iter()
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
    math: CpuMath,
    /// GPU products on TF32 tensor cores.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    tf32: bool,
    ids: Vec<u32>,
    /// The initial state [B, P·H] (a constant), or zero.
    state0: Option<Tensor>,
    batch: usize,
    steps: usize,
    keep_tape: bool,
    tape: Mutex<Option<AnyTape>>,
    /// The final state's parts after h (an LSTM's c), which are not among the outputs; shared
    /// with the caller.
    final_extra: std::sync::Arc<Mutex<Option<Tensor>>>,
}

enum AnyTape {
    F32(Tape<f32>),
    F64(Tape<f64>),
    #[cfg(feature = "cuda")]
    Cuda(crate::kernels::cuda::GruTape),
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
            self.math,
            self.cell,
            dims,
            storage_slice(table.0, table.1)?,
            &self.ids,
            storage_slice(w.0, w.1)?,
            storage_slice(b.0, b.1)?,
            state0.as_deref(),
        );
        let out = tape.outputs();
        let extra = tape.final_extra();
        if !extra.is_empty() {
            let extra =
                Tensor::from_slice(extra, (dims.batch, extra.len() / dims.batch), &candle_core::Device::Cpu)?;
            *self.final_extra.lock().expect("final state lock") = Some(extra);
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
        let g = with_cpu_slice::<T, _>(w, |w| tape.backward(&grad, &self.ids, w))?;
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
        use crate::kernels::cuda::{gru_forward, storage, storage_addr, tensor_addr};
        self.cell.require_gpu_kernels().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let (dims, vocab) = self.dims(lt.shape(), lw.shape(), lb.shape())?;
        if table.dtype() != candle_core::DType::F32 {
            bail!("fused recurrent layer: the GPU kernels are f32 only, not {:?}", table.dtype());
        }
        let dev = table.device();
        let h0 =
            self.state0.as_ref().map(|t| t.to_dtype(candle_core::DType::F32)?.contiguous()).transpose()?;
        let (table, w, b) = (storage_addr(table, lt)?, storage_addr(w, lw)?, storage_addr(b, lb)?);
        let h0_addr = h0.as_ref().map(tensor_addr).transpose()?;
        let sizes = (dims.batch, dims.steps, dims.hidden, vocab);
        // SAFETY: `dims` checked table [V, 3H], W_hh [3H, H], b_hh [3H], h0 [B, H] and every id
        // below V; the storages are borrowed for the call and h0 is held until it returns.
        let (out, tape) =
            unsafe { gru_forward(dev, self.tf32, sizes, table, &self.ids, w, b, h0_addr, self.keep_tape) }?;
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
                use crate::kernels::cuda::{tensor, tensor_addr};
                let candle_core::Device::Cuda(dev) = x.device() else {
                    bail!("fused recurrent layer: GPU tensors expected")
                };
                let (grad, w_hh) = (grad.contiguous()?, w.contiguous()?);
                let (hidden, steps) = (w_hh.dim(1)?, self.steps);
                if grad.dims() != [self.batch, steps, hidden] || w_hh.dims() != [3 * hidden, hidden] {
                    bail!("fused GRU: backward with gradient {:?} and W_hh {:?}", grad.dims(), w_hh.dims());
                }
                let (g, w_addr) = (tensor_addr(&grad)?, tensor_addr(&w_hh)?);
                // SAFETY: the gradient [B, T, H] and W_hh [3H, H], checked just above, are
                // contiguous f32 tensors held until this block ends.
                let (d_table, d_w, d_b) = unsafe { t.backward(dev, g, w_addr) }?;
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
/// rows of `table` ([V, GH]), from the state `state0` ([B, P·H]: h, then the cell's other parts;
/// treated as a constant) or zero, its products and passes as `compute` says. Returns every h
/// ([B, T, H]) and the final state (the shape of `state0`, detached). With `for_training` the
/// activations are kept so that `backward` reaches table, W_hh and b_hh.
#[allow(clippy::too_many_arguments)]
pub fn rnn_sequence(
    compute: &Compute,
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
    let final_extra = std::sync::Arc::new(Mutex::new(None));
    let op = FusedRnn {
        cell,
        math: compute.cpu_math(),
        tf32: compute.tf32(),
        ids,
        state0,
        batch,
        steps,
        keep_tape: for_training,
        tape: Mutex::new(None),
        final_extra: final_extra.clone(),
    };
    let (x, w, b) = (table.contiguous()?, w_hh.contiguous()?, b_hh.contiguous()?);
    // Always registered with backward support: without a tape, a backward call fails loudly
    // instead of silently producing no gradient.
    let out = x.apply_op3(&w, &b, op)?;
    let h_final = out.narrow(1, steps - 1, 1)?.squeeze(1)?.detach();
    let state = match final_extra.lock().expect("final state lock").take() {
        Some(c) => Tensor::cat(&[&h_final, &c.to_device(out.device())?.to_dtype(out.dtype())?], 1)?,
        None => h_final.contiguous()?,
    };
    Ok((out, state))
}
