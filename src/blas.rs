//! Safe wrappers around the matrix products the fused kernels need.
//!
//! Products go to the `gemm` crate (the same engine candle uses, here with its AVX-512 kernel),
//! spread over rayon's pool. The batch-1 sampling step is a matrix-vector product, which a GEMM
//! runs poorly, so it has its own multi-threaded row-dot kernel.

use gemm::{gemm, Parallelism};
use multiversion::multiversion;
use rayon::prelude::*;

/// A read-only matrix view: element (i, j) is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct View<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> View<'a, T> {
    /// A contiguous row-major matrix.
    pub fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn assert_in_bounds(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view runs past its buffer");
        }
    }
}

/// `out = a · b` (or `out += a · b` when `accumulate`), `out` contiguous row-major.
pub fn matmul<T: 'static + Copy + num_traits::One>(
    out: &mut [T],
    accumulate: bool,
    a: View<T>,
    b: View<T>,
) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    assert_eq!(out.len(), a.rows * b.cols, "output has the wrong size");
    a.assert_in_bounds();
    b.assert_in_bounds();
    if a.rows == 0 || b.cols == 0 {
        return;
    }
    let one = T::one();
    // SAFETY: every index the product touches was bounds-checked above; `out` is exclusively
    // borrowed and does not alias the inputs.
    unsafe {
        gemm(
            a.rows,
            b.cols,
            a.cols,
            out.as_mut_ptr(),
            1,
            b.cols as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            one,
            one,
            false,
            false,
            false,
            Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// A contiguous row-major copy of the transpose of a `rows × cols` matrix.
pub fn transpose<T: Copy + Default + Send + Sync>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); m.len()];
    out.par_chunks_mut(rows).enumerate().for_each(|(j, col)| {
        for (i, o) in col.iter_mut().enumerate() {
            *o = m[i * cols + j];
        }
    });
    out
}

/// `out[i] = bias[i] + dot(w[i, :], x)` for a row-major `w` of `out.len()` rows: a matrix-vector
/// product split over threads by rows.
pub fn gemv(out: &mut [f32], w: &[f32], x: &[f32], bias: Option<&[f32]>) {
    let cols = x.len();
    assert_eq!(w.len(), out.len() * cols, "matrix and vector sizes differ");
    const ROWS_PER_TASK: usize = 128;
    out.par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let first = chunk * ROWS_PER_TASK;
            for (k, o) in out.iter_mut().enumerate() {
                let row = &w[(first + k) * cols..(first + k + 1) * cols];
                *o = dot(row, x) + bias.map_or(0.0, |b| b[first + k]);
            }
        });
}

/// A dot product with independent accumulators so the compiler can vectorise it.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 32;
    let mut acc = [0.0f32; LANES];
    let (a_main, a_tail) = a.split_at(a.len() / LANES * LANES);
    let (b_main, b_tail) = b.split_at(a_main.len());
    for (ca, cb) in a_main.chunks_exact(LANES).zip(b_main.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = ca[l].mul_add(cb[l], acc[l]);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in a_tail.iter().zip(b_tail) {
        sum += x * y;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    fn seq(n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7919 % 101) as f64 - 50.0) * scale)
            .collect()
    }

    #[test]
    fn matmul_handles_transposed_views_and_accumulation() {
        let (m, k, n) = (5, 7, 3);
        let a = seq(m * k, 0.1);
        let b = seq(k * n, 0.03);
        let want = naive(&a, &b, m, k, n);
        let at = transpose(&a, m, k);
        let bt = transpose(&b, k, n);
        let mut out = vec![0.0; m * n];
        matmul(
            &mut out,
            false,
            View::rows(&at, k, m).t(),
            View::rows(&bt, n, k).t(),
        );
        for (o, w) in out.iter().zip(&want) {
            assert!((o - w).abs() < 1e-12);
        }
        matmul(&mut out, true, View::rows(&a, m, k), View::rows(&b, k, n));
        for (o, w) in out.iter().zip(&want) {
            assert!((o - 2.0 * w).abs() < 1e-12);
        }
    }

    #[test]
    fn gemv_matches_naive_rows_dot() {
        let (rows, cols) = (300, 77);
        let w: Vec<f32> = seq(rows * cols, 0.01).iter().map(|&x| x as f32).collect();
        let x: Vec<f32> = seq(cols, 0.02).iter().map(|&x| x as f32).collect();
        let bias: Vec<f32> = (0..rows).map(|i| i as f32 * 0.5).collect();
        let mut out = vec![0.0; rows];
        gemv(&mut out, &w, &x, Some(&bias));
        for i in 0..rows {
            let want: f64 = bias[i] as f64
                + (0..cols)
                    .map(|j| w[i * cols + j] as f64 * x[j] as f64)
                    .sum::<f64>();
            assert!(
                (out[i] as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
                "row {i}"
            );
        }
    }
}
