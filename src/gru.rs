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
//! `x` is the input projection `W_ih e + b_ih`, computed by the caller (for an embedding input
//! it is a row of a V×3H table). Per time step the forward pass does one [B×H]·[H×3H] product
//! and one fused, multi-threaded pass over the gates; the backward pass does one [B×3H]·[3H×H]
//! product per step and, after the sweep, dW_hh as one [3H × T·B]·[T·B × H] product.
//!
//! Internal buffers are time-major ([T, B, ·]) so that each step's rows are contiguous; the
//! tensors the operation exchanges with candle are batch-major ([B, T, ·]).

use std::sync::Mutex;

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType,
};
use multiversion::multiversion;
use rayon::prelude::*;

use crate::blas::{matmul, transpose, View};
use crate::float::Float;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub steps: usize,
    pub hidden: usize,
}

/// What the forward pass keeps for the backward pass: h for every step ([T, B, H]) and, per
/// step and row, the activations r, z, n and the recurrent n-term W_hn h + b_hn ([T, B, 4H]).
pub struct Tape<T> {
    pub dims: Dims,
    pub w_hh: Vec<T>,
    pub hs: Vec<T>,
    pub gates: Vec<T>,
}

/// Gradients of the fused layer with respect to its three inputs.
pub struct Grads<T> {
    /// [B, T, 3H], the gradient of the input projection.
    pub x_proj: Vec<T>,
    /// [3H, H]
    pub w_hh: Vec<T>,
    /// [3H]
    pub b_hh: Vec<T>,
}

/// One step of gate arithmetic for one batch row. `gh` is W_hh·h_prev without bias; writes the
/// new state to `h_out` and (r, z, n, W_hn h + b_hn) to `gates`.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn gate_forward<T: Float>(
    h_out: &mut [T],
    gates: &mut [T],
    x: &[T],
    gh: &[T],
    b_hh: &[T],
    h_prev: &[T],
) {
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
    let (r, z, n, ghn) = (
        &gates[..h],
        &gates[h..2 * h],
        &gates[2 * h..3 * h],
        &gates[3 * h..4 * h],
    );
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

/// The forward pass from a zero initial state. `x_proj` is [B, T, 3H], `w_hh` [3H, H],
/// `b_hh` [3H]. Returns the tape; its `hs` holds the outputs (time-major).
pub fn forward<T: Float>(dims: Dims, x_proj: &[T], w_hh: &[T], b_hh: &[T]) -> Tape<T> {
    let Dims {
        batch,
        steps,
        hidden: h,
    } = dims;
    assert_eq!(x_proj.len(), batch * steps * 3 * h);
    assert_eq!(w_hh.len(), 3 * h * h);
    assert_eq!(b_hh.len(), 3 * h);
    let w_t = transpose(w_hh, 3 * h, h); // [H, 3H]: a contiguous right operand is much faster
    let zeros = vec![T::zero(); h];
    let mut hs = vec![T::zero(); steps * batch * h];
    let mut gates = vec![T::zero(); steps * batch * 4 * h];
    let mut gh = vec![T::zero(); batch * 3 * h];
    for t in 0..steps {
        let (done, rest) = hs.split_at_mut(t * batch * h);
        let h_now = &mut rest[..batch * h];
        let h_prev = (t > 0).then(|| &done[(t - 1) * batch * h..]);
        if let Some(prev) = h_prev {
            matmul(
                &mut gh,
                false,
                View::rows(prev, batch, h),
                View::rows(&w_t, h, 3 * h),
            );
        }
        let g_now = &mut gates[t * batch * 4 * h..(t + 1) * batch * 4 * h];
        h_now
            .par_chunks_mut(h)
            .zip(g_now.par_chunks_mut(4 * h))
            .enumerate()
            .for_each(|(b, (h_row, g_row))| {
                let x = &x_proj[(b * steps + t) * 3 * h..][..3 * h];
                let prev = h_prev.map_or(&zeros[..], |p| &p[b * h..(b + 1) * h]);
                gate_forward(h_row, g_row, x, &gh[b * 3 * h..(b + 1) * 3 * h], b_hh, prev);
            });
    }
    Tape {
        dims,
        w_hh: w_hh.to_vec(),
        hs,
        gates,
    }
}

impl<T: Float> Tape<T> {
    /// The outputs h_1..h_T, batch-major [B, T, H].
    pub fn outputs(&self) -> Vec<T> {
        let Dims {
            batch,
            steps,
            hidden: h,
        } = self.dims;
        let mut out = vec![T::zero(); batch * steps * h];
        out.par_chunks_mut(steps * h)
            .enumerate()
            .for_each(|(b, rows)| {
                for t in 0..steps {
                    rows[t * h..(t + 1) * h]
                        .copy_from_slice(&self.hs[(t * batch + b) * h..(t * batch + b + 1) * h]);
                }
            });
        out
    }

    /// Backpropagation through time. `grad_out` is dL/dh for every output, [B, T, H].
    pub fn backward(&self, grad_out: &[T]) -> Grads<T> {
        let Dims {
            batch,
            steps,
            hidden: h,
        } = self.dims;
        assert_eq!(grad_out.len(), batch * steps * h);
        let zeros = vec![T::zero(); h];
        let mut dx = vec![T::zero(); batch * steps * 3 * h];
        let mut dgh = vec![T::zero(); steps * batch * 3 * h];
        let mut dh = vec![T::zero(); batch * h];
        for t in (0..steps).rev() {
            let dgh_now = &mut dgh[t * batch * 3 * h..(t + 1) * batch * 3 * h];
            let h_prev = (t > 0).then(|| &self.hs[(t - 1) * batch * h..t * batch * h]);
            let g_now = &self.gates[t * batch * 4 * h..(t + 1) * batch * 4 * h];
            dx.par_chunks_mut(steps * 3 * h)
                .zip(dgh_now.par_chunks_mut(3 * h))
                .zip(dh.par_chunks_mut(h))
                .enumerate()
                .for_each(|(b, ((dx_rows, dgh_row), dh_row))| {
                    gate_backward(
                        &mut dx_rows[t * 3 * h..(t + 1) * 3 * h],
                        dgh_row,
                        dh_row,
                        &grad_out[(b * steps + t) * h..(b * steps + t + 1) * h],
                        &g_now[b * 4 * h..(b + 1) * 4 * h],
                        h_prev.map_or(&zeros[..], |p| &p[b * h..(b + 1) * h]),
                    );
                });
            if t > 0 {
                // dL/dh_prev += dgh · W_hh
                let dgh_now = &dgh[t * batch * 3 * h..(t + 1) * batch * 3 * h];
                matmul(
                    &mut dh,
                    true,
                    View::rows(dgh_now, batch, 3 * h),
                    View::rows(&self.w_hh, 3 * h, h),
                );
            }
        }
        // dW_hh = Σ_t dgh_tᵀ · h_{t-1}: one product over all steps (step 0 has h_prev = 0).
        let mut dw = vec![T::zero(); 3 * h * h];
        if steps > 1 {
            let rows = (steps - 1) * batch;
            let dgh_rest = View::rows(&dgh[batch * 3 * h..], rows, 3 * h).t();
            matmul(
                &mut dw,
                false,
                dgh_rest,
                View::rows(&self.hs[..rows * h], rows, h),
            );
        }
        Grads {
            x_proj: dx,
            w_hh: dw,
            b_hh: column_sums(&dgh, 3 * h),
        }
    }
}

/// Sums of the columns of a row-major matrix with `cols` columns.
fn column_sums<T: Float>(m: &[T], cols: usize) -> Vec<T> {
    const BLOCK: usize = 256;
    let mut sums = vec![T::zero(); cols];
    sums.par_chunks_mut(BLOCK).enumerate().for_each(|(k, acc)| {
        for row in m.chunks_exact(cols) {
            for (a, v) in acc.iter_mut().zip(&row[k * BLOCK..]) {
                *a += *v;
            }
        }
    });
    sums
}

/// The fused layer as a candle operation, so that autograd reaches the input projection (and
/// through it the embedding and W_ih) as well as W_hh and b_hh.
struct FusedGru {
    keep_tape: bool,
    tape: Mutex<Option<AnyTape>>,
}

enum AnyTape {
    F32(Tape<f32>),
    F64(Tape<f64>),
}

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("fused GRU: inputs must be contiguous"),
    }
}

impl FusedGru {
    fn run<T: Float>(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: (&CpuStorage, &Layout),
        wrap: fn(Tape<T>) -> AnyTape,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, steps, g3) = x.1.shape().dims3()?;
        let hidden = g3 / 3;
        if g3 % 3 != 0 || w.1.shape().dims() != [g3, hidden] || b.1.shape().dims() != [g3] {
            bail!(
                "fused GRU: shapes x {:?}, w_hh {:?}, b_hh {:?} do not fit together",
                x.1.shape(),
                w.1.shape(),
                b.1.shape()
            );
        }
        let dims = Dims {
            batch,
            steps,
            hidden,
        };
        let tape = forward(
            dims,
            contiguous(x.0, x.1)?,
            contiguous(w.0, w.1)?,
            contiguous(b.0, b.1)?,
        );
        let out = tape.outputs();
        if self.keep_tape {
            *self.tape.lock().expect("tape lock") = Some(wrap(tape));
        }
        Ok((
            T::to_cpu_storage_owned(out),
            Shape::from((batch, steps, hidden)),
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
        let grad = grad.contiguous()?.flatten_all()?;
        let dev = grad.device();
        let (gx, gw, gb) = match tape {
            AnyTape::F32(t) => {
                let g = t.backward(&grad.to_vec1::<f32>()?);
                (
                    Tensor::new(g.x_proj, dev)?,
                    Tensor::new(g.w_hh, dev)?,
                    Tensor::new(g.b_hh, dev)?,
                )
            }
            AnyTape::F64(t) => {
                let g = t.backward(&grad.to_vec1::<f64>()?);
                (
                    Tensor::new(g.x_proj, dev)?,
                    Tensor::new(g.w_hh, dev)?,
                    Tensor::new(g.b_hh, dev)?,
                )
            }
        };
        Ok((
            Some(gx.reshape(x.shape())?),
            Some(gw.reshape(w.shape())?),
            Some(gb.reshape(b.shape())?),
        ))
    }
}

/// Runs the GRU over `x_proj` ([B, T, 3H]) from a zero state and returns every h ([B, T, H]).
/// With `for_training` the activations are kept so that `backward` can reach the inputs.
pub fn gru_sequence(
    x_proj: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    for_training: bool,
) -> Result<Tensor> {
    let op = FusedGru {
        keep_tape: for_training,
        tape: Mutex::new(None),
    };
    let (x, w, b) = (x_proj.contiguous()?, w_hh.contiguous()?, b_hh.contiguous()?);
    // Always registered with backward support: without a tape, a backward call fails loudly
    // instead of silently producing no gradient.
    x.apply_op3(&w, &b, op)
}
