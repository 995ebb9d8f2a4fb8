//! The scalar type the fused kernels are generic over (f32 for work, f64 for gradient checks),
//! with activations that vectorise.
//!
//! `f32::exp` is a library call that LLVM cannot vectorise, and the GRU evaluates ~20 million
//! sigmoids and tanhs per tutorial batch, so f32 uses a branch-free polynomial exp (Cephes'
//! expf, accurate to a couple of ulp). f64 keeps the standard library functions: it exists only
//! to check gradients, where exactness matters more than speed.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, Layout, Storage, Tensor, WithDType};

use crate::kernels::cpu::blas::PackedMatmul;
use crate::kernels::cpu::Isa;

pub trait Float:
    num_traits::Float
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::ops::DivAssign
    + WithDType
    + PackedMatmul
    + Send
    + Sync
    + Default
    + 'static
{
    /// σ(x) and tanh(x), compiled for the instruction set `I` (see [`crate::kernels::cpu::Isa`]).
    fn sigmoid<I: Isa>(x: Self) -> Self;
    fn tanh_<I: Isa>(x: Self) -> Self;
    /// Large buffers of this type kept for reuse (see [`take_buffer`]).
    fn pool() -> &'static Mutex<Vec<Vec<Self>>>;
}

/// The part of a buffer that a contiguous tensor layout covers (custom operations are handed
/// whole storages and a layout).
pub fn layout_slice<'a, T>(data: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("a custom operation was handed a non-contiguous tensor"),
    }
}

pub fn layout_slice_mut<'a, T>(data: &'a mut [T], l: &Layout) -> candle_core::Result<&'a mut [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut data[a..b]),
        None => bail!("a custom operation was handed a non-contiguous tensor"),
    }
}

/// `f` of a contiguous CPU tensor's values (a custom operation's backward pass is handed
/// tensors, not storages).
pub fn with_cpu_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> candle_core::Result<R> {
    let (guard, layout) = t.storage_and_layout();
    let Storage::Cpu(s) = &*guard else { bail!("a custom operation's CPU pass was handed a device tensor") };
    Ok(f(storage_slice::<T>(s, layout)?))
}

/// [`layout_slice`] of a CPU storage of element type `T`.
pub fn storage_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    layout_slice(T::cpu_storage_as_slice(s)?, l)
}

/// A buffer of `len` values whose contents are unspecified (stale values of an earlier use):
/// for buffers that are written in full before they are read. Fresh allocations of the
/// tutorial's sizes (tens of MB) come from the kernel a page at a time, and those page faults
/// cost about a tenth of a training batch, so the fused layer recycles its buffers.
pub fn take_buffer<T: Float>(len: usize) -> Vec<T> {
    let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
    let best = pool.iter().enumerate().filter(|(_, v)| v.capacity() >= len).min_by_key(|(_, v)| v.capacity());
    match best.map(|(i, _)| i) {
        Some(i) => {
            let mut v = pool.swap_remove(i);
            v.resize(len, T::zero());
            v
        }
        None => vec![T::zero(); len],
    }
}

/// Returns a buffer for reuse; the pool keeps a few of the largest.
pub fn give_buffer<T: Float>(v: Vec<T>) {
    const KEEP: usize = 8;
    if v.capacity() == 0 {
        return;
    }
    let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
    pool.push(v);
    if pool.len() > KEEP {
        pool.sort_by_key(|v| std::cmp::Reverse(v.capacity()));
        pool.truncate(KEEP);
    }
}

impl Float for f64 {
    fn pool() -> &'static Mutex<Vec<Vec<f64>>> {
        static POOL: Mutex<Vec<Vec<f64>>> = Mutex::new(Vec::new());
        &POOL
    }
    #[inline(always)]
    fn sigmoid<I: Isa>(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }
    #[inline(always)]
    fn tanh_<I: Isa>(x: f64) -> f64 {
        x.tanh()
    }
}

impl Float for f32 {
    fn pool() -> &'static Mutex<Vec<Vec<f32>>> {
        static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
        &POOL
    }
    #[inline(always)]
    fn sigmoid<I: Isa>(x: f32) -> f32 {
        1.0 / (1.0 + exp_f32::<I>(-x))
    }
    #[inline(always)]
    fn tanh_<I: Isa>(x: f32) -> f32 {
        // tanh(x) = 1 - 2 / (exp(2x) + 1); exact limits at both ends, no NaN for large |x|.
        1.0 - 2.0 / (exp_f32::<I>(2.0 * x) + 1.0)
    }
}

/// e^x for f32 without a library call: x = n·ln2 + r with |r| ≤ ln2/2, e^r by a degree-6
/// polynomial, 2^n assembled in the exponent bits. Inputs are clamped to the finite range.
#[inline(always)]
pub fn exp_f32<I: Isa>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = floor::<I>(x * LOG2E + 0.5);
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * r2 + r + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    er * two_n
}

/// `y.floor()` for |y| < 2³¹. Where the instruction set has no rounding instruction (x86-64's
/// SSE2 baseline), `f32::floor` is a library call that keeps every loop using it scalar, so
/// there it truncates and corrects instead, which vectorises (and costs a few instructions
/// more than one `roundps`, which is why the wide kernels keep `floor`).
#[inline(always)]
fn floor<I: Isa>(y: f32) -> f32 {
    if I::ROUNDS {
        return y.floor();
    }
    let t = y as i32 as f32;
    if t > y {
        t - 1.0
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::{Baseline, Wide};

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let want = (x as f64).exp();
            let got = exp_f32::<Baseline>(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    #[test]
    fn floor_by_truncation_matches_std() {
        let mut y = -130.0f32;
        while y < 130.0 {
            for v in [y, y.floor(), y.ceil(), y.floor() - f32::EPSILON * y.abs()] {
                // Equal as numbers; only the sign of a zero may differ (−0 → +0).
                assert_eq!(floor::<Baseline>(v), v.floor(), "floor({v})");
                assert_eq!(floor::<Wide>(v), v.floor(), "floor({v})");
            }
            y += 0.0371;
        }
        assert_eq!(floor::<Baseline>(-0.5), -1.0);
        assert_eq!(floor::<Baseline>(-1.0), -1.0);
    }

    /// Both floors leave exp bit for bit what it is with `f32::floor`, so training results do not
    /// depend on the kernel.
    #[test]
    fn exp_is_bitwise_unchanged_by_the_vectorisable_floor() {
        let with_std_floor = |x: f32| {
            let x = x.clamp(-87.0, 88.0);
            let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
            let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
            let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
                + 1.666_666_5e-1)
                * r
                + 0.5;
            let r2 = r * r;
            (p * r2 + r + 1.0) * f32::from_bits(((n as i32 + 127) as u32) << 23)
        };
        let mut x = -100.0f32;
        while x < 100.0 {
            assert_eq!(exp_f32::<Baseline>(x).to_bits(), with_std_floor(x).to_bits(), "exp({x})");
            assert_eq!(exp_f32::<Wide>(x).to_bits(), with_std_floor(x).to_bits(), "exp({x})");
            x += 0.000_731;
        }
        for x in [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN] {
            assert_eq!(exp_f32::<Baseline>(x).to_bits(), with_std_floor(x).to_bits(), "exp({x})");
        }
    }

    #[test]
    fn activations_match_std_and_saturate() {
        for i in -2000..2000 {
            let x = i as f32 * 0.01;
            let s = <f32 as Float>::sigmoid::<Baseline>(x) as f64;
            let t = <f32 as Float>::tanh_::<Baseline>(x) as f64;
            let xd = x as f64;
            assert!((s - 1.0 / (1.0 + (-xd).exp())).abs() < 1e-6, "sigmoid({x})");
            assert!((t - xd.tanh()).abs() < 1e-6, "tanh({x})");
        }
        assert_eq!(<f32 as Float>::tanh_::<Baseline>(1e4), 1.0);
        assert_eq!(<f32 as Float>::tanh_::<Baseline>(-1e4), -1.0);
        assert!(<f32 as Float>::sigmoid::<Baseline>(-1e4) < 1e-37);
        assert_eq!(<f32 as Float>::sigmoid::<Baseline>(1e4), 1.0);
    }
}
