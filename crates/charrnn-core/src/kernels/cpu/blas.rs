//! Safe wrappers around the matrix products the fused kernels need.
//!
//! General products go to the `gemm` crate (the same engine candle uses; it picks its own
//! AVX-512, AVX2 or NEON kernel at run time), spread over rayon's pool. The per-step products
//! of the recurrence and of sampling multiply by a matrix packed once, with register-tile
//! kernels of our own per instruction set ([`crate::kernels::cpu`]).

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use crate::compute::CpuMath;
use crate::kernels::cpu::bf16::{self, PackedBf16, Tiles};
use crate::kernels::cpu::Kernel;

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

    pub(crate) fn assert_in_bounds(&self) {
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
/// path), a plain row-major copy through `gemm` for f64 (used to check gradients). The packed
/// operand keeps the [`CpuMath`] it was packed for, so its products run as it was asked.
pub trait PackedMatmul: Sized + Copy + num_traits::One + 'static {
    /// The operand as the products read it.
    type Packed: Send + Sync;
    /// Packs `b` for products in `math`.
    fn pack(math: CpuMath, b: View<Self>) -> Self::Packed;
    /// `out = a · b` (or `+=` when `accumulate`) against a packed `b`.
    fn matmul_packed(out: &mut [Self], accumulate: bool, a: View<Self>, b: &Self::Packed);
    /// `out = a · b` (or `+=`) for operands used once, in the same arithmetic as
    /// [`PackedMatmul::matmul_packed`].
    fn matmul_once(_math: CpuMath, out: &mut [Self], accumulate: bool, a: View<Self>, b: View<Self>) {
        matmul(out, accumulate, a, b)
    }
}

/// An f32 right operand in the products' precision: f32 panels for a kernel, or bf16 pairs
/// multiplied on the best bf16 instructions.
pub enum PackedF32 {
    /// f32 panels and the kernel that multiplies them.
    F32(Packed, Kernel),
    /// bf16 pairs.
    Bf16(PackedBf16),
}

impl PackedMatmul for f32 {
    type Packed = PackedF32;
    fn pack(math: CpuMath, b: View<f32>) -> PackedF32 {
        match math.bf16 {
            true => PackedF32::Bf16(PackedBf16::new(b)),
            false => PackedF32::F32(Packed::new(b), math.kernel),
        }
    }
    fn matmul_packed(out: &mut [f32], accumulate: bool, a: View<f32>, b: &PackedF32) {
        match b {
            PackedF32::F32(b, kernel) => matmul_packed(*kernel, out, accumulate, a, b),
            PackedF32::Bf16(b) => with_bf16_scratch(|scratch| {
                bf16::matmul_bf16_on(Tiles::best(), out, accumulate, a, b, scratch)
            }),
        }
    }
    fn matmul_once(math: CpuMath, out: &mut [f32], accumulate: bool, a: View<f32>, b: View<f32>) {
        match math.bf16 {
            true => with_bf16_scratch(|scratch| {
                bf16::matmul_bf16_once(Tiles::best(), out, accumulate, a, b, scratch)
            }),
            false => matmul(out, accumulate, a, b),
        }
    }
}

/// Runs a bf16 product on the buffers this thread keeps for its operands' pairs: dW_hh's
/// alone are tens of megabytes, which fresh allocations would zero-fill every batch (and
/// fault in page by page in a process that returns freed memory to the system).
fn with_bf16_scratch(product: impl FnOnce(&mut bf16::Scratch)) {
    thread_local! {
        static SCRATCH: std::cell::RefCell<bf16::Scratch> = Default::default();
    }
    SCRATCH.with_borrow_mut(product)
}

impl PackedMatmul for f64 {
    type Packed = (Vec<f64>, usize, usize);
    fn pack(_math: CpuMath, b: View<f64>) -> Self::Packed {
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
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: each thread writes only the columns of its own panels.
unsafe impl Send for OutPtr {}
// SAFETY: as for Send: the threads sharing it write disjoint columns.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `offset` must stay inside the output buffer.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller keeps `offset` inside the buffer (this function's contract).
        unsafe { self.0.add(offset) }
    }
}

/// `out = a · b` (or `out += a · b`), `out` contiguous row-major [a.rows × b.cols]; the panels
/// are shared out among threads, and each is computed by `kernel` (see
/// [`crate::kernels::cpu`]), which this CPU must support.
pub fn matmul_packed(kernel: Kernel, out: &mut [f32], accumulate: bool, a: View<f32>, b: &Packed) {
    assert!(kernel.supported(), "the {kernel} kernel needs CPU features this CPU lacks");
    assert_eq!(a.cols, b.k, "inner dimensions differ");
    assert_eq!(out.len(), a.rows * b.n, "output has the wrong size");
    a.assert_in_bounds();
    let (n, k) = (b.n, b.k);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let panels = n.div_ceil(PANEL);
    let one_panel = |p: usize| {
        let job = PanelJob {
            a,
            panel: &b.data[p * k * PANEL..(p + 1) * k * PANEL],
            k,
            // SAFETY: column p·PANEL of row 0 lies inside `out` (p < panels).
            c: unsafe { out_ptr.at(p * PANEL) },
            ldc: n,
            cols: PANEL.min(n - p * PANEL),
            accumulate,
        };
        // SAFETY: rows 0..m and columns p·PANEL..+cols lie inside `out`, and no other task
        // writes these columns.
        unsafe { job.run(kernel) }
    };
    // Each worker takes the same share of panels every call, so across the steps of a
    // sequence each keeps its part of the operand in its own caches (the two cores of a
    // virtual machine may not share a last-level cache).
    rayon::broadcast(|ctx| {
        let (i, workers) = (ctx.index(), ctx.num_threads());
        (panels * i / workers..panels * (i + 1) / workers).for_each(one_panel);
    });
}

/// Calls `$job.$tile::<R>(args)` (or the function `$tile::<R>(args)`) with the row count
/// `$rows` (1 ..= 8) as a constant, so that each tile height gets its own fully unrolled code.
macro_rules! with_rows {
    ($rows:expr, $tile:ident ( $($arg:expr),* )) => {
        with_rows!(@each $rows, $tile, $($arg),*)
    };
    ($rows:expr, $job:ident . $tile:ident ( $($arg:expr),* )) => {
        with_rows!(@each $rows, $job.$tile, $($arg),*)
    };
    (@each $rows:expr, $($callee:ident).+, $($arg:expr),*) => {
        match $rows {
            1 => $($callee).+::<1>($($arg),*),
            2 => $($callee).+::<2>($($arg),*),
            3 => $($callee).+::<3>($($arg),*),
            4 => $($callee).+::<4>($($arg),*),
            5 => $($callee).+::<5>($($arg),*),
            6 => $($callee).+::<6>($($arg),*),
            7 => $($callee).+::<7>($($arg),*),
            8 => $($callee).+::<8>($($arg),*),
            _ => unreachable!("tiles are at most 8 rows high"),
        }
    };
}
// The bf16 kernels use it too; they exist on x86-64 only.
#[cfg(target_arch = "x86_64")]
pub(crate) use with_rows;

/// One column panel of a packed product: all rows of `a` times one PANEL-wide panel of the
/// right operand, into the matching columns of the output.
struct PanelJob<'a> {
    a: View<'a, f32>,
    /// k rows of PANEL values.
    panel: &'a [f32],
    k: usize,
    /// Row 0 of the output's columns for this panel; rows are `ldc` apart.
    c: *mut f32,
    ldc: usize,
    /// The panel's real columns (fewer than PANEL only in the last, zero-padded one).
    cols: usize,
    accumulate: bool,
}

impl PanelJob<'_> {
    /// Register-tile sizes per kernel (rows × columns), each chosen so its accumulators,
    /// the operand's loaded columns and one broadcast fit the register file: AVX-512 8 × 32
    /// (16 of 32 zmm accumulating), AVX2 6 × 16 (12 of 16 ymm), NEON 6 × 16 (24 of 32 q
    /// registers), portable 6 × 8 (12 of 16 xmm on x86's SSE2 baseline).
    ///
    /// # Safety
    /// `c` must address `a.rows` rows (stride `ldc`) of `cols` writable values that no other
    /// thread touches; `a` must lie in its buffer with `a.cols == k` and `panel` hold k rows
    /// (`matmul_packed` checks both once per product); `kernel` must be supported by this
    /// CPU.
    unsafe fn run(&self, kernel: Kernel) {
        let (tile_rows, tile_cols) = match kernel {
            Kernel::Avx512 => (8, 32),
            Kernel::Avx2 | Kernel::Neon => (6, 16),
            Kernel::Portable => (6, 8),
        };
        for col0 in (0..self.cols).step_by(tile_cols) {
            let mut row0 = 0;
            while row0 < self.a.rows {
                let rows = tile_rows.min(self.a.rows - row0);
                // SAFETY: this function's contract covers the tile's reads and writes (its rows
                // lie below a.rows, its columns below cols) and the kernel's CPU features.
                unsafe {
                    match kernel {
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx512 => with_rows!(rows, self.avx512(row0)),
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx2 => with_rows!(rows, self.avx2(row0, col0)),
                        #[cfg(target_arch = "aarch64")]
                        Kernel::Neon => with_rows!(rows, self.neon(row0, col0)),
                        _ => with_rows!(rows, self.portable(row0, col0)),
                    }
                }
                row0 += rows;
            }
        }
    }

    /// Element (row, kk) of `a`. The caller has checked `a`'s bounds. (Used by the SIMD
    /// kernels, which a wasm32 build has none of.)
    #[inline(always)]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    unsafe fn a_at(&self, row: usize, kk: usize) -> f32 {
        // SAFETY: the caller has checked `a`'s bounds (this function's contract).
        unsafe { *self.a.data.as_ptr().add(row * self.a.row_stride + kk * self.a.col_stride) }
    }

    /// Writes (or adds) an MR × NR block of results at (row0, col0), keeping to `cols`.
    #[inline(always)]
    unsafe fn store<const MR: usize, const NR: usize>(
        &self,
        acc: &[[f32; NR]; MR],
        row0: usize,
        col0: usize,
    ) {
        // SAFETY: rows row0.. and columns col0..+width lie in this job's block of the output (run's contract).
        unsafe {
            let width = NR.min(self.cols - col0);
            for (i, row) in acc.iter().enumerate() {
                let c = self.c.add((row0 + i) * self.ldc + col0);
                for (j, v) in row.iter().enumerate().take(width) {
                    let dst = c.add(j);
                    *dst = if self.accumulate { *dst + v } else { *v };
                }
            }
        }
    }

    /// Baseline code the compiler vectorises for whatever the target has (on x86-64, SSE2:
    /// twelve 4-lane accumulators, no spills).
    unsafe fn portable<const MR: usize>(&self, row0: usize, col0: usize) {
        // SAFETY: the tile's rows and columns lie in the operands and the output (run's contract).
        unsafe {
            let a = self.a.data.as_ptr().add(row0 * self.a.row_stride);
            let w = self.panel.as_ptr().add(col0);
            let acc = portable_tile::<MR>(a, self.a.row_stride, self.a.col_stride, w, self.k);
            self.store(&acc, row0, col0);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512<const MR: usize>(&self, row0: usize) {
        // SAFETY: the tile's rows and columns lie in the operands and the output, and the CPU has AVX-512 (run's contract).
        unsafe {
            use std::arch::x86_64::*;
            let mut lo = [_mm512_setzero_ps(); MR];
            let mut hi = [_mm512_setzero_ps(); MR];
            let w = self.panel.as_ptr();
            for kk in 0..self.k {
                let w_lo = _mm512_loadu_ps(w.add(kk * PANEL));
                let w_hi = _mm512_loadu_ps(w.add(kk * PANEL + 16));
                for i in 0..MR {
                    let x = _mm512_set1_ps(self.a_at(row0 + i, kk));
                    lo[i] = _mm512_fmadd_ps(x, w_lo, lo[i]);
                    hi[i] = _mm512_fmadd_ps(x, w_hi, hi[i]);
                }
            }
            let mut acc = [[0.0f32; PANEL]; MR];
            for i in 0..MR {
                _mm512_storeu_ps(acc[i].as_mut_ptr(), lo[i]);
                _mm512_storeu_ps(acc[i].as_mut_ptr().add(16), hi[i]);
            }
            self.store(&acc, row0, 0);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2<const MR: usize>(&self, row0: usize, col0: usize) {
        // SAFETY: the tile's rows and columns lie in the operands and the output, and the CPU has AVX2 and FMA (run's contract).
        unsafe {
            use std::arch::x86_64::*;
            let mut lo = [_mm256_setzero_ps(); MR];
            let mut hi = [_mm256_setzero_ps(); MR];
            let w = self.panel.as_ptr().add(col0);
            for kk in 0..self.k {
                let w_lo = _mm256_loadu_ps(w.add(kk * PANEL));
                let w_hi = _mm256_loadu_ps(w.add(kk * PANEL + 8));
                for i in 0..MR {
                    let x = _mm256_set1_ps(self.a_at(row0 + i, kk));
                    lo[i] = _mm256_fmadd_ps(x, w_lo, lo[i]);
                    hi[i] = _mm256_fmadd_ps(x, w_hi, hi[i]);
                }
            }
            let mut acc = [[0.0f32; 16]; MR];
            for i in 0..MR {
                _mm256_storeu_ps(acc[i].as_mut_ptr(), lo[i]);
                _mm256_storeu_ps(acc[i].as_mut_ptr().add(8), hi[i]);
            }
            self.store(&acc, row0, col0);
        }
    }

    #[cfg(target_arch = "aarch64")]
    #[inline(never)]
    unsafe fn neon<const MR: usize>(&self, row0: usize, col0: usize) {
        // SAFETY: the tile's rows and columns lie in the operands and the output (run's contract).
        unsafe {
            use std::arch::aarch64::*;
            let mut acc = [[vdupq_n_f32(0.0); 4]; MR];
            let w = self.panel.as_ptr().add(col0);
            for kk in 0..self.k {
                let wk = w.add(kk * PANEL);
                let ws = [vld1q_f32(wk), vld1q_f32(wk.add(4)), vld1q_f32(wk.add(8)), vld1q_f32(wk.add(12))];
                for (i, row) in acc.iter_mut().enumerate() {
                    let x = vdupq_n_f32(self.a_at(row0 + i, kk));
                    for (r, wv) in row.iter_mut().zip(ws) {
                        *r = vfmaq_f32(*r, wv, x);
                    }
                }
            }
            let mut out = [[0.0f32; 16]; MR];
            for (o, a) in out.iter_mut().zip(&acc) {
                for (q, v) in a.iter().enumerate() {
                    vst1q_f32(o.as_mut_ptr().add(4 * q), *v);
                }
            }
            self.store(&out, row0, col0);
        }
    }
}

/// An MR × 8 block of `a · panel` in plain Rust: `a` addresses element (0, 0) of MR rows
/// (strides `a_rs`, `a_cs`), `w` column 0 of k panel rows. Multiply and add stay separate:
/// without FMA in the baseline, `mul_add` would be a library call per element. On its own and
/// out of line, because inlined into a larger caller the compiler unrolls it past the
/// register file and spills.
///
/// # Safety
/// `a` must address MR rows × k columns and `w` k panel rows of at least 8 values.
#[inline(never)]
unsafe fn portable_tile<const MR: usize>(
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    w: *const f32,
    k: usize,
) -> [[f32; 8]; MR] {
    // SAFETY: `a` and `w` address what this function's contract says.
    unsafe {
        let mut acc = [[0.0f32; 8]; MR];
        for kk in 0..k {
            // A plain copy into a local array (not a checked slice) lets the loads vectorise.
            let mut wk = [0.0f32; 8];
            std::ptr::copy_nonoverlapping(w.add(kk * PANEL), wk.as_mut_ptr(), 8);
            for (i, row) in acc.iter_mut().enumerate() {
                let x = *a.add(i * a_rs + kk * a_cs);
                for (r, wv) in row.iter_mut().zip(&wk) {
                    *r += x * wv;
                }
            }
        }
        acc
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
    fn packed_product_matches_naive_on_every_kernel_for_ragged_sizes() {
        // 1 to 19 rows: every tile height of every kernel, and each kernel's remainders;
        // 70 and 84 columns: a last panel of 6 (less than one AVX2 or NEON half) and of 20
        // (one full half and part of the next).
        let k = 13;
        for kernel in Kernel::available() {
            for (m, n) in (1..=19).flat_map(|m| [(m, 70), (m, 84)]) {
                let a = seq(m * k, 0.1);
                let b = seq(k * n, 0.03);
                let want = naive(&a, &b, m, k, n);
                let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
                let b32: Vec<f32> = b.iter().map(|&x| x as f32).collect();
                let bt = transpose(&b32, k, n);
                for packed in [Packed::new(View::rows(&b32, k, n)), Packed::new(View::rows(&bt, n, k).t())] {
                    let mut out = vec![1.0f32; m * n];
                    matmul_packed(kernel, &mut out, false, View::rows(&a32, m, k), &packed);
                    for (o, w) in out.iter().zip(&want) {
                        assert!((*o as f64 - w).abs() < 1e-4, "{kernel} {m}x{n}: {o} vs {w}");
                    }
                    matmul_packed(kernel, &mut out, true, View::rows(&a32, m, k), &packed);
                    for (o, w) in out.iter().zip(&want) {
                        assert!((*o as f64 - 2.0 * w).abs() < 1e-4, "{kernel} {m}x{n}: {o} vs {w}");
                    }
                }
            }
        }
    }

    /// Each output row is one chain of multiply-adds over k whatever tile it falls in, so a
    /// row's result is the same, bit for bit, alone or among others: what lets sampling batch
    /// unrelated sequences together.
    #[test]
    fn a_packed_products_rows_do_not_depend_on_the_other_rows() {
        let (k, n) = (37, 84);
        let b: Vec<f32> = seq(k * n, 0.03).iter().map(|&x| x as f32).collect();
        let packed = Packed::new(View::rows(&b, k, n));
        let a: Vec<f32> = seq(19 * k, 0.1).iter().map(|&x| (x as f32).sin()).collect();
        for kernel in Kernel::available() {
            let mut all = vec![0.0f32; 19 * n];
            matmul_packed(kernel, &mut all, false, View::rows(&a, 19, k), &packed);
            for m in [1, 2, 7, 9] {
                for first in [0, 19 - m] {
                    let mut some = vec![0.0f32; m * n];
                    matmul_packed(kernel, &mut some, false, View::rows(&a[first * k..], m, k), &packed);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&some),
                        bits(&all[first * n..(first + m) * n]),
                        "{kernel}: rows {first}..+{m}"
                    );
                }
            }
        }
    }
}
