//! An input projection y = x·Wᵀ + b as one operation, its products in the model's CPU
//! arithmetic (bf16 with f32 sums where the compute says so), with its own backward.
//!
//! candle's own product runs in f32 whatever the model's precision; deeper layers' input
//! projections ([B·T, H]·[H, G·H], as large as the recurrent products) and a projection of
//! per-sequence-masked embeddings would otherwise be the f32 part of a bf16 step. f32 models
//! keep candle's composition (`Model::project`), so their arithmetic is what it was.

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

use crate::compute::{Compute, CpuMath};
use crate::kernels::cpu::blas::View;
use crate::kernels::cpu::float::{storage_slice, Float};

struct Linear {
    math: CpuMath,
}

impl Linear {
    /// Checks that x [N, I], W [O, I] and b [O] fit; returns (N, I, O).
    fn dims(x: &Shape, w: &Shape, b: &Shape) -> Result<(usize, usize, usize)> {
        let ((n, i), (o, wi)) = (x.dims2()?, w.dims2()?);
        if wi != i || b.dims() != [o] {
            bail!("input projection: shapes x {x:?}, W {w:?} and b {b:?} do not fit");
        }
        Ok((n, i, o))
    }

    fn forward<T: Float>(&self, x: &[T], w: &[T], b: &[T], (n, i, o): (usize, usize, usize)) -> Vec<T> {
        let mut y = vec![T::zero(); n * o];
        T::matmul_once(self.math, &mut y, false, View::rows(x, n, i), View::rows(w, o, i).t());
        y.par_chunks_mut(o).for_each(|row| row.iter_mut().zip(b).for_each(|(y, b)| *y += *b));
        y
    }

    /// dx = dy·W, dW = dyᵀ·x, db = the column sums of dy.
    fn grads<T: Float>(&self, x: &[T], w: &[T], dy: &[T], (n, i, o): (usize, usize, usize)) -> [Vec<T>; 3] {
        let mut dx = vec![T::zero(); n * i];
        T::matmul_once(self.math, &mut dx, false, View::rows(dy, n, o), View::rows(w, o, i));
        let mut dw = vec![T::zero(); o * i];
        T::matmul_once(self.math, &mut dw, false, View::rows(dy, n, o).t(), View::rows(x, n, i));
        let mut db = vec![T::zero(); o];
        for row in dy.chunks_exact(o) {
            db.iter_mut().zip(row).for_each(|(s, g)| *s += *g);
        }
        [dx, dw, db]
    }
}

/// The CPU slice of a contiguous tensor, for the backward pass.
fn with_slice<T: Float, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let (guard, layout) = t.storage_and_layout();
    let Storage::Cpu(s) = &*guard else { bail!("input projection: CPU tensors expected") };
    f(storage_slice::<T>(s, layout)?)
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "input-projection"
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
        let dims = Self::dims(l1.shape(), l2.shape(), l3.shape())?;
        let shape = Shape::from((dims.0, dims.2));
        match s1 {
            CpuStorage::F32(_) => {
                let (x, w, b) = (storage_slice(s1, l1)?, storage_slice(s2, l2)?, storage_slice(s3, l3)?);
                Ok((CpuStorage::F32(self.forward::<f32>(x, w, b, dims)), shape))
            }
            CpuStorage::F64(_) => {
                let (x, w, b) = (storage_slice(s1, l1)?, storage_slice(s2, l2)?, storage_slice(s3, l3)?);
                Ok((CpuStorage::F64(self.forward::<f64>(x, w, b, dims)), shape))
            }
            other => bail!("input projection: unsupported dtype {:?}", other.dtype()),
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
        let dims = Self::dims(x.shape(), w.shape(), b.shape())?;
        let (x, w, dy) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let (n, i, o) = dims;
        let dev = x.device();
        let tensors = |[dx, dw, db]: [Tensor; 3]| (Some(dx), Some(dw), Some(db));
        macro_rules! run {
            ($t:ty) => {
                with_slice::<$t, _>(&x, |xs| {
                    with_slice::<$t, _>(&w, |ws| {
                        with_slice::<$t, _>(&dy, |dys| {
                            let [dx, dw, db] = self.grads::<$t>(xs, ws, dys, dims);
                            Ok([
                                Tensor::from_vec(dx, (n, i), dev)?,
                                Tensor::from_vec(dw, (o, i), dev)?,
                                Tensor::from_vec(db, o, dev)?,
                            ])
                        })
                    })
                })
            };
        }
        match x.dtype() {
            candle_core::DType::F32 => Ok(tensors(run!(f32)?)),
            candle_core::DType::F64 => Ok(tensors(run!(f64)?)),
            other => bail!("input projection: unsupported dtype {other:?}"),
        }
    }
}

/// x [N, I] · Wᵀ + b for W [O, I], b [O], on the CPU in `compute`'s arithmetic.
pub fn linear(compute: &Compute, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = Linear { math: compute.cpu_math() };
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize, salt: usize) -> Vec<f64> {
        (0..n).map(|i| (((i + salt) * 7919 % 1000) as f64 / 1000.0 - 0.5) * 2.0).collect()
    }

    /// The op's value and its three gradients are candle's composition's (x·Wᵀ + b through
    /// matmul, transpose and broadcast_add), in f64, for a loss that weights every output.
    #[test]
    fn matches_candles_composition_and_its_gradients() {
        let dev = Device::Cpu;
        let (n, i, o) = (7, 5, 9);
        let var = |len, salt, shape: &[usize]| {
            Var::from_tensor(&Tensor::from_vec(values(len, salt), shape, &dev).unwrap()).unwrap()
        };
        let (x, w, b) = (var(n * i, 1, &[n, i]), var(o * i, 2, &[o, i]), var(o, 3, &[o]));
        let weights = Tensor::from_vec(values(n * o, 4), (n, o), &dev).unwrap();
        let ours = linear(&Compute::cpu(), &x, &w, &b).unwrap();
        let reference = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        let close = |a: &Tensor, b: &Tensor| {
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            );
            assert_eq!(a.len(), b.len());
            a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-12)
        };
        assert!(close(&ours, &reference));
        let (g1, g2) = (
            (ours * &weights).unwrap().sum_all().unwrap().backward().unwrap(),
            (reference * &weights).unwrap().sum_all().unwrap().backward().unwrap(),
        );
        for v in [&x, &w, &b] {
            assert!(close(g1.get(v).unwrap(), g2.get(v).unwrap()));
        }
    }

    /// In bf16 (where the CPU has it) the products stay within bf16's rounding of f32's.
    #[test]
    fn bf16_products_stay_near_f32() {
        if !crate::kernels::cpu::bf16::supported() {
            return;
        }
        let dev = Device::Cpu;
        let (n, i, o) = (33, 70, 45);
        let t = |len, salt, shape: &[usize]| {
            let v: Vec<f32> = values(len, salt).into_iter().map(|x| x as f32).collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let (x, w, b) = (t(n * i, 1, &[n, i]), t(o * i, 2, &[o, i]), t(o, 3, &[o]));
        let compute =
            Compute::new(dev.clone(), Compute::cpu().kernel(), crate::compute::Precision::Bf16).unwrap();
        let ours = linear(&compute, &x, &w, &b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let f32s =
            linear(&Compute::cpu(), &x, &w, &b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Each input rounds by at most 2⁻⁹ relative; |x|, |w| ≤ 1 over 70 terms.
        let bound = 2.0 * 70.0 * 2f32.powi(-8);
        let worst = ours.iter().zip(&f32s).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst > 0.0 && worst < bound, "worst {worst}, bound {bound}");
    }
}
