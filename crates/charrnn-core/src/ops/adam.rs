//! Adam's two in-place updates as candle operations, one pass each over a parameter: the
//! moments' running averages and the weight's step (the optimizer is `crate::optim`).

use candle_core::{bail, CpuStorage, InplaceOp2, InplaceOp3, Layout};
use rayon::prelude::*;

use crate::kernels::cpu::float::{layout_slice, layout_slice_mut, Float};
use crate::kernels::cpu::{per_kernel, Kernel};

const CHUNK: usize = 1 << 14;

// The loops are compiled once per instruction set (`per_kernel!`), so that they run as wide as
// the machine: built for the baseline alone they were SSE2, four lanes. Each value is the same
// arithmetic in every width (no contraction into fused multiply-adds), so every kernel takes
// the same step, bit for bit.
per_kernel! {
    fn moment_chunk<T: Float, I: Isa>(m: &mut [T], g: &[T], beta: T, rest: T, scale: T, square: bool) {
        for (m, &g) in m.iter_mut().zip(g) {
            let x = g * scale;
            *m = beta * *m + rest * if square { x * x } else { x };
        }
    }
}

per_kernel! {
    fn step_chunk<T: Float, I: Isa>(w: &mut [T], m: &[T], v: &[T], alpha: T, decay: T, eps: T) {
        for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
            *w = decay * *w - alpha * m / (v.sqrt() + eps);
        }
    }
}

/// A moment's update in place: m ← β·m + (1 − β)·x, x = s·g (first) or (s·g)² (second).
pub(crate) struct Moment {
    pub beta: f64,
    pub scale: f64,
    pub square: bool,
    /// The instruction set the loop runs on.
    pub kernel: Kernel,
}

impl Moment {
    fn run<T: Float>(&self, m: &mut [T], g: &[T]) {
        let (beta, rest, scale) = (cast::<T>(self.beta), cast::<T>(1.0 - self.beta), cast::<T>(self.scale));
        let (square, kernel) = (self.square, self.kernel);
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| moment_chunk(kernel, m, g, beta, rest, scale, square));
    }
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adam-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        match (s1, s2) {
            (CpuStorage::F32(m), CpuStorage::F32(g)) => {
                self.run(layout_slice_mut(m, l1)?, layout_slice(g, l2)?)
            }
            (CpuStorage::F64(m), CpuStorage::F64(g)) => {
                self.run(layout_slice_mut(m, l1)?, layout_slice(g, l2)?)
            }
            _ => bail!("adam: moment and gradient must both be f32 or f64"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        m: &mut candle_core::CudaStorage,
        lm: &Layout,
        g: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> candle_core::Result<()> {
        use crate::kernels::cuda::{adam_moment, storage_addr};
        use candle_core::backend::BackendStorage;
        let n = lm.shape().elem_count();
        if lg.shape().elem_count() != n {
            bail!("adam: moment of {n} values, gradient of {}", lg.shape().elem_count());
        }
        let (mm, gg) = (storage_addr(m, lm)?, storage_addr(g, lg)?);
        // SAFETY: both storages are borrowed for the call, contiguous (storage_addr checks)
        // and hold the n values just compared.
        unsafe { adam_moment(m.device(), n, self.beta as f32, self.scale as f32, self.square, mm, gg) }
    }
}

/// The weight's update in place: w ← decay·w − α·m / (√v + ε).
pub(crate) struct Step {
    pub alpha: f64,
    pub decay: f64,
    pub epsilon: f64,
    /// The instruction set the loop runs on.
    pub kernel: Kernel,
}

impl Step {
    fn run<T: Float>(&self, w: &mut [T], m: &[T], v: &[T]) {
        let (alpha, decay, eps) = (cast::<T>(self.alpha), cast::<T>(self.decay), cast::<T>(self.epsilon));
        let kernel = self.kernel;
        w.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(w, (m, v))| step_chunk(kernel, w, m, v, alpha, decay, eps));
    }
}

impl InplaceOp3 for Step {
    fn name(&self) -> &'static str {
        "adam-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        match (s1, s2, s3) {
            (CpuStorage::F32(w), CpuStorage::F32(m), CpuStorage::F32(v)) => {
                self.run(layout_slice_mut(w, l1)?, layout_slice(m, l2)?, layout_slice(v, l3)?)
            }
            (CpuStorage::F64(w), CpuStorage::F64(m), CpuStorage::F64(v)) => {
                self.run(layout_slice_mut(w, l1)?, layout_slice(m, l2)?, layout_slice(v, l3)?)
            }
            _ => bail!("adam: weight and moments must all be f32 or f64"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        w: &mut candle_core::CudaStorage,
        lw: &Layout,
        m: &candle_core::CudaStorage,
        lm: &Layout,
        v: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> candle_core::Result<()> {
        use crate::kernels::cuda::{adam_step, storage_addr};
        use candle_core::backend::BackendStorage;
        let n = lw.shape().elem_count();
        if lm.shape().elem_count() != n || lv.shape().elem_count() != n {
            bail!("adam: weight, moments and second moments differ in size");
        }
        let (ww, mm, vv) = (storage_addr(w, lw)?, storage_addr(m, lm)?, storage_addr(v, lv)?);
        // SAFETY: the three storages are borrowed for the call, contiguous (storage_addr
        // checks) and hold the n values just compared.
        unsafe {
            adam_step(w.device(), n, self.alpha as f32, self.decay as f32, self.epsilon as f32, ww, mm, vv)
        }
    }
}

fn cast<T: Float>(x: f64) -> T {
    T::from(x).expect("a finite optimizer constant")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set takes the same step, bit for bit (the vectorised loops do the
    /// scalar arithmetic, lane by lane), on lengths around the vector widths and chunk size.
    #[test]
    fn every_kernel_takes_the_same_step() {
        for n in [1, 15, 17, 63, CHUNK + 5] {
            let value = |i: usize, salt: usize| ((i * 7919 + salt) % 1000) as f32 / 250.0 - 2.0;
            let g: Vec<f32> = (0..n).map(|i| value(i, 1)).collect();
            let run = |kernel: Kernel| {
                let (mut m, mut v): (Vec<f32>, Vec<f32>) =
                    ((0..n).map(|i| value(i, 2)).collect(), vec![0.5; n]);
                let mut w: Vec<f32> = (0..n).map(|i| value(i, 3)).collect();
                Moment { beta: 0.9, scale: 0.7, square: false, kernel }.run(&mut m, &g);
                Moment { beta: 0.999, scale: 0.7, square: true, kernel }.run(&mut v, &g);
                Step { alpha: 1e-3, decay: 0.99, epsilon: 1e-7, kernel }.run(&mut w, &m, &v);
                [m, v, w].map(|x| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
            };
            let reference = run(Kernel::Portable);
            for kernel in Kernel::available() {
                assert_eq!(run(kernel), reference, "{kernel} at length {n}");
            }
        }
    }
}
