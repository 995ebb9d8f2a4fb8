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
        View { data, rows, cols, row_stride: cols, col_stride: 1 }
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
pub fn matmul<T: 'static + Copy + num_traits::One>(out: &mut [T], accumulate: bool, a: View<T>, b: View<T>) {
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

/// Columns per packed panel: two 16-lane AVX-512 registers.
pub const PANEL: usize = 32;

/// A right-hand operand [k × n] stored as column panels of [`PANEL`] (the last one zero-padded),
/// each panel k contiguous rows of PANEL values. Packed once per batch, it lets the per-step
/// products of the recurrence skip the repacking a general GEMM does on every call — at 64
/// rows that repacking costs about as much as the arithmetic.
pub struct Packed {
    data: Vec<f32>,
    k: usize,
    n: usize,
}

impl Packed {
    pub fn new(b: View<f32>) -> Self {
        b.assert_in_bounds();
        let (k, n) = (b.rows, b.cols);
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0.0f32; panels * k * PANEL];
        data.par_chunks_mut(k * PANEL).enumerate().for_each(|(p, panel)| {
            for (kk, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                for (c, v) in row.iter_mut().enumerate().take(n.saturating_sub(p * PANEL)) {
                    *v = b.data[kk * b.row_stride + (p * PANEL + c) * b.col_stride];
                }
            }
        });
        Packed { data, k, n }
    }

    pub fn rows(&self) -> usize {
        self.k
    }

    pub fn cols(&self) -> usize {
        self.n
    }
}

/// A right operand prepared once and multiplied many times: packed panels for f32 (the fast
/// path), a plain row-major copy through `gemm` for f64 (used to check gradients).
pub trait PackedMatmul: Sized + 'static {
    type Packed: Send + Sync;
    fn pack(b: View<Self>) -> Self::Packed;
    fn matmul_packed(out: &mut [Self], accumulate: bool, a: View<Self>, b: &Self::Packed);
}

impl PackedMatmul for f32 {
    type Packed = Packed;
    fn pack(b: View<f32>) -> Packed {
        Packed::new(b)
    }
    fn matmul_packed(out: &mut [f32], accumulate: bool, a: View<f32>, b: &Packed) {
        matmul_packed(out, accumulate, a, b)
    }
}

impl PackedMatmul for f64 {
    type Packed = (Vec<f64>, usize, usize);
    fn pack(b: View<f64>) -> Self::Packed {
        let data = (0..b.rows)
            .flat_map(|i| (0..b.cols).map(move |j| b.data[i * b.row_stride + j * b.col_stride]))
            .collect();
        (data, b.rows, b.cols)
    }
    fn matmul_packed(out: &mut [f64], accumulate: bool, a: View<f64>, b: &Self::Packed) {
        matmul(out, accumulate, a, View::rows(&b.0, b.1, b.2))
    }
}

/// A raw output pointer shared by threads that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each thread writes only the columns of its own panels.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `offset` must stay inside the output buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// `out = a · b` (or `out += a · b`), `out` contiguous row-major [a.rows × b.cols]; the panels
/// are shared out among threads.
pub fn matmul_packed(out: &mut [f32], accumulate: bool, a: View<f32>, b: &Packed) {
    assert_eq!(a.cols, b.k, "inner dimensions differ");
    assert_eq!(out.len(), a.rows * b.n, "output has the wrong size");
    a.assert_in_bounds();
    let (m, n, k) = (a.rows, b.n, b.k);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let panels = n.div_ceil(PANEL);
    let one_panel = |p: usize| {
        let cols = PANEL.min(n - p * PANEL);
        let panel = &b.data[p * k * PANEL..(p + 1) * k * PANEL];
        let mut r = 0;
        while r < m {
            let rows = if m - r >= 8 { 8 } else { 1 };
            let a_rows = &a.data[r * a.row_stride..];
            // SAFETY: rows r..r+rows and columns p·PANEL..+cols lie inside `out`, and no other
            // task writes these columns.
            let c = unsafe { out_ptr.at(r * n + p * PANEL) };
            let tile = Tile {
                a: a_rows,
                a_rs: a.row_stride,
                a_cs: a.col_stride,
                panel,
                k,
                c,
                ldc: n,
                cols,
                accumulate,
            };
            if rows == 8 {
                unsafe { tile.run::<8>() }
            } else {
                unsafe { tile.run::<1>() }
            }
            r += rows;
        }
    };
    // Each worker takes the same share of panels every call, so across the steps of a
    // sequence each keeps its part of the operand in its own caches (the two cores of a
    // virtual machine may not share a last-level cache).
    rayon::broadcast(|ctx| {
        let (i, workers) = (ctx.index(), ctx.num_threads());
        (panels * i / workers..panels * (i + 1) / workers).for_each(one_panel);
    });
}

/// One MR × PANEL block of the output.
struct Tile<'a> {
    a: &'a [f32],
    a_rs: usize,
    a_cs: usize,
    panel: &'a [f32],
    k: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    accumulate: bool,
}

impl Tile<'_> {
    /// # Safety
    /// `c` must address MR rows (stride `ldc`) of `cols` writable values.
    unsafe fn run<const MR: usize>(&self) {
        let mut acc = [[0.0f32; PANEL]; MR];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                self.accumulate_avx512::<MR>(&mut acc);
            } else {
                self.accumulate_portable::<MR>(&mut acc);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        self.accumulate_portable::<MR>(&mut acc);
        for (i, row) in acc.iter().enumerate() {
            let c = self.c.add(i * self.ldc);
            for (j, v) in row.iter().enumerate().take(self.cols) {
                let dst = c.add(j);
                *dst = if self.accumulate { *dst + v } else { *v };
            }
        }
    }

    fn accumulate_portable<const MR: usize>(&self, acc: &mut [[f32; PANEL]; MR]) {
        for kk in 0..self.k {
            let w = &self.panel[kk * PANEL..(kk + 1) * PANEL];
            for (i, row) in acc.iter_mut().enumerate() {
                let x = self.a[i * self.a_rs + kk * self.a_cs];
                for (r, wv) in row.iter_mut().zip(w) {
                    *r = x.mul_add(*wv, *r);
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn accumulate_avx512<const MR: usize>(&self, acc: &mut [[f32; PANEL]; MR]) {
        use std::arch::x86_64::*;
        assert!(self.panel.len() >= self.k * PANEL);
        assert!(MR == 0 || (MR - 1) * self.a_rs + self.k.saturating_sub(1) * self.a_cs < self.a.len());
        let mut lo = [_mm512_setzero_ps(); MR];
        let mut hi = [_mm512_setzero_ps(); MR];
        let a = self.a.as_ptr();
        let w = self.panel.as_ptr();
        for kk in 0..self.k {
            // SAFETY: bounds asserted above.
            unsafe {
                let w_lo = _mm512_loadu_ps(w.add(kk * PANEL));
                let w_hi = _mm512_loadu_ps(w.add(kk * PANEL + 16));
                for i in 0..MR {
                    let x = _mm512_set1_ps(*a.add(i * self.a_rs + kk * self.a_cs));
                    lo[i] = _mm512_fmadd_ps(x, w_lo, lo[i]);
                    hi[i] = _mm512_fmadd_ps(x, w_hi, hi[i]);
                }
            }
        }
        for i in 0..MR {
            // SAFETY: each accumulator row holds PANEL = 32 floats.
            unsafe {
                _mm512_storeu_ps(acc[i].as_mut_ptr(), lo[i]);
                _mm512_storeu_ps(acc[i].as_mut_ptr().add(16), hi[i]);
            }
        }
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
    out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(chunk, out)| {
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
        (0..n).map(|i| ((i * 7919 % 101) as f64 - 50.0) * scale).collect()
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
        matmul(&mut out, false, View::rows(&at, k, m).t(), View::rows(&bt, n, k).t());
        for (o, w) in out.iter().zip(&want) {
            assert!((o - w).abs() < 1e-12);
        }
        matmul(&mut out, true, View::rows(&a, m, k), View::rows(&b, k, n));
        for (o, w) in out.iter().zip(&want) {
            assert!((o - 2.0 * w).abs() < 1e-12);
        }
    }

    #[test]
    fn packed_product_matches_naive_for_ragged_sizes() {
        // 19 rows: two 8-row tiles and three single rows; 70 columns: a partial last panel.
        let (m, k, n) = (19, 13, 70);
        let a = seq(m * k, 0.1);
        let b = seq(k * n, 0.03);
        let want = naive(&a, &b, m, k, n);
        let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
        let b32: Vec<f32> = b.iter().map(|&x| x as f32).collect();
        let bt = transpose(&b32, k, n);
        for packed in [Packed::new(View::rows(&b32, k, n)), Packed::new(View::rows(&bt, n, k).t())] {
            let mut out = vec![1.0f32; m * n];
            matmul_packed(&mut out, false, View::rows(&a32, m, k), &packed);
            for (o, w) in out.iter().zip(&want) {
                assert!((*o as f64 - w).abs() < 1e-4, "{o} vs {w}");
            }
            matmul_packed(&mut out, true, View::rows(&a32, m, k), &packed);
            for (o, w) in out.iter().zip(&want) {
                assert!((*o as f64 - 2.0 * w).abs() < 1e-4, "{o} vs {w}");
            }
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
            let want: f64 =
                bias[i] as f64 + (0..cols).map(|j| w[i * cols + j] as f64 * x[j] as f64).sum::<f64>();
            assert!((out[i] as f64 - want).abs() < 1e-4 * want.abs().max(1.0), "row {i}");
        }
    }
}
