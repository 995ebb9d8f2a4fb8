//! An input projection y = x·Wᵀ + b as one operation, its products in the model's CPU
//! arithmetic (bf16 with f32 sums where the compute says so), with its own backward.
//!
//! candle's own product runs in f32 whatever the model's precision; deeper layers' input
//! projections ([B·T, H]·[H, G·H], as large as the recurrent products) and a projection of
//! per-sequence-masked embeddings would otherwise be the f32 part of a bf16 step. f32 models
//! keep candle's composition (`Model::project`), so their arithmetic is what it was.

use candle_core::{backend::BackendStorage, bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::compute::{Compute, CpuMath};
use crate::kernels::cpu::blas::View;
use crate::kernels::cpu::float::{storage_slice, with_cpu_slice, Float};

struct Linear {
    math: CpuMath,
}

/// Columns of the bias gradient each thread sums (over every row, in row order).
const BIAS_COLUMNS: usize = 256;

impl Linear {
    /// Checks that x [N, I], W [O, I] and b [O] fit; returns (N, I, O).
    fn dims(x: &Shape, w: &Shape, b: &Shape) -> Result<(usize, usize, usize)> {
        let ((n, i), (o, wi)) = (x.dims2()?, w.dims2()?);
        if wi != i || b.dims() != [o] {
            bail!("input projection: shapes x {x:?}, W {w:?} and b {b:?} do not fit");
        }
        Ok((n, i, o))
    }

    /// y = b + x·Wᵀ: the bias rows first, the product accumulated onto them (one pass over y
    /// fewer than adding the bias after).
    fn forward<T: Float>(&self, x: &[T], w: &[T], b: &[T], (n, i, o): (usize, usize, usize)) -> Vec<T> {
        let mut y = vec![T::zero(); n * o];
        y.par_chunks_mut(o).for_each(|row| row.copy_from_slice(b));
        T::matmul_once(self.math, &mut y, true, View::rows(x, n, i), View::rows(w, o, i).t());
        y
    }

    fn run<T: Float>(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Self::dims(x.1.shape(), w.1.shape(), b.1.shape())?;
        let (xs, ws, bs) = (storage_slice(x.0, x.1)?, storage_slice(w.0, w.1)?, storage_slice(b.0, b.1)?);
        Ok((T::to_cpu_storage_owned(self.forward::<T>(xs, ws, bs, dims)), Shape::from((dims.0, dims.2))))
    }

    /// dx = dy·W, dW = dyᵀ·x, db = the column sums of dy (each column's in row order, so the
    /// sum does not depend on the threads).
    fn grads<T: Float>(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        (n, i, o): (usize, usize, usize),
    ) -> Result<[Tensor; 3]> {
        let (mut dx, mut dw, mut db) = (vec![T::zero(); n * i], vec![T::zero(); o * i], vec![T::zero(); o]);
        with_cpu_slice::<T, _>(dy, |dy| {
            with_cpu_slice::<T, _>(w, |w| {
                T::matmul_once(self.math, &mut dx, false, View::rows(dy, n, o), View::rows(w, o, i))
            })?;
            with_cpu_slice::<T, _>(x, |x| {
                T::matmul_once(self.math, &mut dw, false, View::rows(dy, n, o).t(), View::rows(x, n, i))
            })?;
            db.par_chunks_mut(BIAS_COLUMNS).enumerate().for_each(|(c, sums)| {
                for row in dy.chunks_exact(o) {
                    let part = &row[c * BIAS_COLUMNS..][..sums.len()];
                    sums.iter_mut().zip(part).for_each(|(s, g)| *s += *g);
                }
            });
            Ok::<(), candle_core::Error>(())
        })??;
        let dev = x.device();
        Ok([
            Tensor::from_vec(dx, (n, i), dev)?,
            Tensor::from_vec(dw, (o, i), dev)?,
            Tensor::from_vec(db, o, dev)?,
        ])
    }
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
        match s1 {
            CpuStorage::F32(_) => self.run::<f32>((s1, l1), (s2, l2), (s3, l3)),
            CpuStorage::F64(_) => self.run::<f64>((s1, l1), (s2, l2), (s3, l3)),
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
        let [dx, dw, db] = match x.dtype() {
            candle_core::DType::F32 => self.grads::<f32>(&x, &w, &dy, dims)?,
            candle_core::DType::F64 => self.grads::<f64>(&x, &w, &dy, dims)?,
            other => bail!("input projection: unsupported dtype {other:?}"),
        };
        Ok((Some(dx), Some(dw), Some(db)))
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
    /// matmul, transpose and broadcast_add), in f64, for a loss that weights every output; the
    /// second size spreads the bias gradient over several threads' columns.
    #[test]
    fn matches_candles_composition_and_its_gradients() {
        for dims in [(7, 5, 9), (6, 4, 2 * BIAS_COLUMNS + 3)] {
            matches_candle_at(dims);
        }
    }

    fn matches_candle_at((n, i, o): (usize, usize, usize)) {
        let dev = Device::Cpu;
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
