//! The output layer and the loss as one operation: logits = h·Wᵀ + b, then the mean softmax
//! cross-entropy against the targets, with the gradient (softmax − one-hot)/N formed directly.
//!
//! Composed from candle ops (matmul with a transposed view, log-softmax, gather and their
//! backward passes) the same work costs about twice as long; at small hidden sizes it is a
//! fifth of a training step.

use std::sync::Mutex;

use candle_core::{backend::BackendStorage, bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::compute::{Compute, CpuMath};
use crate::kernels::cpu::blas::{transpose, View};
use crate::kernels::cpu::float::{storage_slice, with_cpu_slice, Float};

/// The softmax probabilities of every row, kept for the backward pass.
enum Saved {
    F32(Vec<f32>),
    F64(Vec<f64>),
    #[cfg(feature = "cuda")]
    Cuda(crate::kernels::cuda::HeadTape),
}

struct DenseCrossEntropy {
    targets: Vec<u32>,
    math: CpuMath,
    /// GPU products on TF32 tensor cores.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    tf32: bool,
    saved: Mutex<Option<Saved>>,
}

/// Logits, then each row turned into probabilities in place; returns the summed loss.
///
/// The rows run in parallel but their losses are added in row order: a parallel reduction
/// associates the sum by however the work was split, so the same weights could report a
/// (slightly) different loss from run to run.
fn forward<T: Float>(math: CpuMath, hs: &[T], w: &[T], b: &[T], targets: &[u32], probs: &mut [T]) -> T {
    let (v, h) = (b.len(), w.len() / b.len());
    let n = targets.len();
    let w_t = transpose(w, v, h);
    T::matmul_once(math, probs, false, View::rows(hs, n, h), View::rows(&w_t, h, v));
    let losses: Vec<T> = probs
        .par_chunks_mut(v)
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            let mut max = T::neg_infinity();
            for (l, bias) in row.iter_mut().zip(b) {
                *l += *bias;
                max = num_traits::Float::max(max, *l);
            }
            let target_logit = row[target as usize];
            let mut sum = T::zero();
            for l in row.iter_mut() {
                *l = (*l - max).exp();
                sum += *l;
            }
            for p in row.iter_mut() {
                *p /= sum;
            }
            // (max − target) first: for logits near ±3e38, max + ln(sum) would round ln(sum)
            // away and report a loss of 0.
            (max - target_logit) + sum.ln()
        })
        .collect();
    losses.into_iter().fold(T::zero(), |a, b| a + b)
}

impl DenseCrossEntropy {
    /// Checks that h [N, H], W [V, H], b [V] and the targets fit; returns (N, H, V).
    fn dims(&self, hs: &Shape, w: &Shape, b: &Shape) -> Result<(usize, usize, usize)> {
        let (n, h) = hs.dims2()?;
        let (v, hw) = w.dims2()?;
        if hw != h || b.dims() != [v] || n != self.targets.len() {
            bail!(
                "output layer: shapes h {hs:?}, W {w:?}, b {b:?} and {} targets do not fit",
                self.targets.len()
            );
        }
        if let Some(t) = self.targets.iter().find(|&&t| t as usize >= v) {
            bail!("output layer: target id {t} is outside the {v} classes");
        }
        Ok((n, h, v))
    }

    fn run<T: Float>(
        &self,
        hs: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: (&CpuStorage, &Layout),
        wrap: fn(Vec<T>) -> Saved,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, _, v) = self.dims(hs.1.shape(), w.1.shape(), b.1.shape())?;
        let mut probs = vec![T::zero(); n * v];
        let total = forward(
            self.math,
            storage_slice(hs.0, hs.1)?,
            storage_slice(w.0, w.1)?,
            storage_slice(b.0, b.1)?,
            &self.targets,
            &mut probs,
        );
        *self.saved.lock().expect("saved lock") = Some(wrap(probs));
        Ok((T::to_cpu_storage_owned(vec![total / T::from(n).expect("row count")]), Shape::from(())))
    }

    fn grads<T: Float>(
        &self,
        probs: Vec<T>,
        hs: &Tensor,
        w: &Tensor,
        g: T,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (n, h) = hs.dims2()?;
        let v = w.dim(0)?;
        // dL/dlogits = (softmax − one-hot) · g / N
        let mut d = probs;
        let scale = g / T::from(n).expect("row count");
        d.par_chunks_mut(v).zip(self.targets.par_iter()).for_each(|(row, &t)| {
            row[t as usize] -= T::one();
            for x in row.iter_mut() {
                *x *= scale;
            }
        });
        let mut d_hs = vec![T::zero(); n * h];
        with_cpu_slice::<T, _>(w, |w| {
            T::matmul_once(self.math, &mut d_hs, false, View::rows(&d, n, v), View::rows(w, v, h))
        })?;
        let d_t = transpose(&d, n, v);
        let mut d_w = vec![T::zero(); v * h];
        with_cpu_slice::<T, _>(hs, |hs| {
            T::matmul_once(self.math, &mut d_w, false, View::rows(&d_t, v, n), View::rows(hs, n, h))
        })?;
        let d_b: Vec<T> = d_t.chunks_exact(n).map(|col| col.iter().fold(T::zero(), |a, &x| a + x)).collect();
        let dev = hs.device();
        Ok((
            Tensor::from_vec(d_hs, (n, h), dev)?,
            Tensor::from_vec(d_w, (v, h), dev)?,
            Tensor::from_vec(d_b, v, dev)?,
        ))
    }
}

impl CustomOp3 for DenseCrossEntropy {
    fn name(&self) -> &'static str {
        "dense-cross-entropy"
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
            CpuStorage::F32(_) => self.run::<f32>((s1, l1), (s2, l2), (s3, l3), Saved::F32),
            CpuStorage::F64(_) => self.run::<f64>((s1, l1), (s2, l2), (s3, l3), Saved::F64),
            other => bail!("output layer: unsupported dtype {:?}", other.dtype()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        hs: &candle_core::CudaStorage,
        lh: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
        b: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::kernels::cuda::{head_forward, storage, storage_addr};
        let dims = self.dims(lh.shape(), lw.shape(), lb.shape())?;
        if hs.dtype() != candle_core::DType::F32 {
            bail!("output layer: the GPU kernels are f32 only, not {:?}", hs.dtype());
        }
        let dev = hs.device();
        let (hs, w, b) = (storage_addr(hs, lh)?, storage_addr(w, lw)?, storage_addr(b, lb)?);
        // SAFETY: `dims` checked that h is [N, H], W [V, H], b [V] and every target below V;
        // the three storages are borrowed for the whole call.
        let (loss, tape) = unsafe { head_forward(dev, self.tf32, dims, hs, w, b, &self.targets) }?;
        *self.saved.lock().expect("saved lock") = Some(Saved::Cuda(tape));
        Ok((storage(loss, dev), Shape::from(())))
    }

    fn bwd(
        &self,
        hs: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(saved) = self.saved.lock().expect("saved lock").take() else {
            bail!("output layer: backward without a recorded forward (or called twice)");
        };
        let (hs, w) = (hs.contiguous()?, w.contiguous()?);
        let (d_hs, d_w, d_b) = match saved {
            Saved::F32(p) => self.grads(p, &hs, &w, grad.to_scalar::<f32>()?)?,
            Saved::F64(p) => self.grads(p, &hs, &w, grad.to_scalar::<f64>()?)?,
            #[cfg(feature = "cuda")]
            Saved::Cuda(tape) => {
                use crate::kernels::cuda::{tensor, tensor_addr};
                let candle_core::Device::Cuda(dev) = hs.device() else {
                    bail!("output layer: GPU tensors expected")
                };
                let ((n, h), v) = (hs.dims2()?, w.dim(0)?);
                if w.dims() != [v, h] || grad.elem_count() != 1 {
                    bail!(
                        "output layer: backward with h {:?}, W {:?}, gradient {:?}",
                        hs.dims(),
                        w.dims(),
                        grad.dims()
                    );
                }
                let g = grad.to_dtype(candle_core::DType::F32)?.contiguous()?;
                let addrs = (tensor_addr(&hs)?, tensor_addr(&w)?, tensor_addr(&g)?);
                // SAFETY: h [N, H], W [V, H] and the one-element gradient, checked just above,
                // are contiguous f32 tensors held until this block ends.
                let (d_hs, d_w, d_b) = unsafe { tape.backward(dev, (n, h, v), addrs.0, addrs.1, addrs.2) }?;
                (tensor(d_hs, dev, (n, h)), tensor(d_w, dev, (v, h)), tensor(d_b, dev, v))
            }
        };
        Ok((Some(d_hs), Some(d_w), Some(d_b)))
    }
}

/// Mean cross-entropy of softmax(hs · Wᵀ + b) against `targets`, in nats: hs is [N, H], W
/// [V, H], b [V], one target id per row; the products as `compute` says.
pub fn dense_cross_entropy(
    compute: &Compute,
    hs: &Tensor,
    w: &Tensor,
    b: &Tensor,
    targets: &[u32],
) -> Result<Tensor> {
    let op = DenseCrossEntropy {
        targets: targets.to_vec(),
        math: compute.cpu_math(),
        tf32: compute.tf32(),
        saved: Mutex::new(None),
    };
    hs.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same weights report the same loss, bit for bit, however the rows were shared out
    /// among threads (a parallel reduction did not).
    #[test]
    fn the_summed_loss_does_not_depend_on_thread_scheduling() {
        let (n, h, v) = (4096, 8, 65);
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 4.0;
        let hs: Vec<f32> = (0..n * h).map(value).collect();
        let w: Vec<f32> = (0..v * h).map(|i| value(i + 13)).collect();
        let b: Vec<f32> = (0..v).map(|i| value(i + 29)).collect();
        let targets: Vec<u32> = (0..n).map(|i| (i * 31 % v) as u32).collect();
        let mut probs = vec![0f32; n * v];
        let math = Compute::cpu().cpu_math();
        let first = forward(math, &hs, &w, &b, &targets, &mut probs);
        for _ in 0..50 {
            assert_eq!(forward(math, &hs, &w, &b, &targets, &mut probs).to_bits(), first.to_bits());
        }
    }
}
