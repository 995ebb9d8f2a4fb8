//! Int8 products for sampling (`--precision int8`): a weight matrix quantized once to int8 with
//! one scale per output (a row of the model's matrix), activations quantized per product and
//! per row, and the dot products summed in exact 32-bit integers.
//!
//! Why per output row: each output is then one integer dot product times one float (the row's
//! scale times the activation row's), so the kernels need no float work inside the k loop and
//! stream only the int8 bytes, a quarter of f32's — the point of the format, whose weights then
//! fit in the L2 caches of two cores at the tutorial's size. A recurrent matrix's rows are
//! units' input weights of similar range; per-block scales along k would cost a float
//! multiply-add per block for precision measured not to be needed (README, "int8 sampling").
//!
//! Why exact: every kernel computes Σ x_q·w_q in integers, which no order of summation
//! changes, so each instruction set gives the same bits, and a row's result does not depend on
//! which other rows share the product (a served sample is the same whatever else runs). The
//! sums fit: |w_q| ≤ 127, x_q + 128 ≤ 255 and k ≤ 2¹⁶ keep every sum below 2³¹.
//!
//! Layout: columns in panels of [`PANEL`], k in groups of four (one 32-bit lane of the
//! dot-product instructions: AVX-512 VNNI's and AVX-VNNI's `vpdpbusd`, NEON's `sdot`), each
//! group of a panel PANEL × 4 bytes, k padded with zeros. `vpdpbusd` multiplies unsigned by
//! signed bytes, so its kernels take x_q + 128 and subtract 128·Σw_q per column after; AVX2
//! without VNNI widens to 16 bits and uses `vpmaddwd` (exact: `vpmaddubsw` would saturate at
//! 8-bit ranges), NEON without `sdot` widens with `smull`.

use anyhow::{bail, Result};

use crate::kernels::cpu::blas::{OutPtr, View};
use crate::kernels::cpu::team::Team;
use crate::kernels::cpu::Kernel;

/// Columns per packed panel.
pub const PANEL: usize = 64;
/// k values per group: one 32-bit lane of a dot-product instruction.
const GROUP: usize = 4;
/// The largest |quantized value|: symmetric, so that −x quantizes to −q.
const LEVELS: f32 = 127.0;

/// The instructions an int8 product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Int8Kernel {
    /// AVX-512 VNNI `vpdpbusd` on 512-bit registers.
    Avx512Vnni,
    /// AVX-VNNI `vpdpbusd` on 256-bit registers.
    AvxVnni,
    /// AVX2 `vpmaddwd` on bytes widened to 16 bits.
    Avx2,
    /// aarch64 `sdot`.
    NeonDot,
    /// aarch64 `smull` and pairwise adds.
    Neon,
    /// Plain Rust.
    Portable,
}

impl Int8Kernel {
    /// Every int8 kernel, fastest first.
    pub const ALL: [Int8Kernel; 6] = [
        Int8Kernel::Avx512Vnni,
        Int8Kernel::AvxVnni,
        Int8Kernel::Avx2,
        Int8Kernel::NeonDot,
        Int8Kernel::Neon,
        Int8Kernel::Portable,
    ];

    /// Its name, as `info` and `bench` report it.
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Avx512Vnni => "avx512-vnni",
            Int8Kernel::AvxVnni => "avx-vnni",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::NeonDot => "neon-sdot",
            Int8Kernel::Neon => "neon",
            Int8Kernel::Portable => "portable",
        }
    }

    /// Whether this CPU can run it.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::AvxVnni => {
                std::arch::is_x86_feature_detected!("avxvnni") && std::arch::is_x86_feature_detected!("avx2")
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "aarch64")]
            Int8Kernel::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(target_arch = "aarch64")]
            Int8Kernel::Neon => true,
            Int8Kernel::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The int8 kernel of the same family as the f32 `kernel` (so `CHARRNN_KERNEL` chooses both),
    /// with the dot-product instructions where this CPU has them.
    pub fn for_kernel(kernel: Kernel) -> Int8Kernel {
        let candidates: &[Int8Kernel] = match kernel {
            Kernel::Avx512 => &[Int8Kernel::Avx512Vnni, Int8Kernel::AvxVnni, Int8Kernel::Avx2],
            Kernel::Avx2 => &[Int8Kernel::AvxVnni, Int8Kernel::Avx2],
            Kernel::Neon => &[Int8Kernel::NeonDot, Int8Kernel::Neon],
            Kernel::Portable => &[],
        };
        candidates.iter().copied().find(|k| k.supported()).unwrap_or(Int8Kernel::Portable)
    }

    /// Activations as x_q + 128 (`vpdpbusd` multiplies unsigned by signed bytes).
    fn unsigned(self) -> bool {
        matches!(self, Int8Kernel::Avx512Vnni | Int8Kernel::AvxVnni)
    }
}

impl std::fmt::Display for Int8Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The scale that maps the largest |value| of `values` to 127 (1 for all zeros, which then
/// quantize to 0).
fn scale_of(values: impl Iterator<Item = f32>) -> f32 {
    let max = values.fold(0.0f32, |m, v| m.max(v.abs()));
    if max > 0.0 {
        max / LEVELS
    } else {
        1.0
    }
}

/// `v` in units of `scale` (as v · (1/scale)), rounded to the nearest integer, halves away
/// from zero: by adding ±½ and truncating, which compiles to vector instructions on every
/// target (`round` is a library call on x86-64's baseline).
fn quantize(v: f32, inverse: f32) -> i8 {
    let x = v * inverse;
    (x + 0.5f32.copysign(x)).clamp(-LEVELS, LEVELS) as i8
}

/// A right operand W [k × n] in int8: each column j quantized with its own scale, packed for
/// one kernel.
pub struct PackedInt8 {
    /// panels × groups × PANEL × GROUP bytes.
    data: Vec<i8>,
    /// Column j's scale: W[·][j] ≈ scale[j] · W_q[·][j].
    scales: Vec<f32>,
    /// 128 · Σ_k W_q[k][j], subtracted from the sums of kernels that take x_q + 128 (else 0).
    offsets: Vec<i32>,
    k: usize,
    n: usize,
    groups: usize,
    kernel: Int8Kernel,
}

impl PackedInt8 {
    /// `b` quantized for `kernel`, which this CPU must support.
    pub fn new(b: View<f32>, kernel: Int8Kernel) -> Result<Self> {
        if !kernel.supported() {
            bail!("the {kernel} int8 kernel needs instructions this CPU does not have");
        }
        if b.rows > 1 << 16 {
            bail!("an int8 product sums at most 65536 values per output, not {}", b.rows);
        }
        b.assert_in_bounds();
        let (k, n) = (b.rows, b.cols);
        let groups = k.div_ceil(GROUP);
        let panels = n.div_ceil(PANEL);
        let at = |kk: usize, j: usize| b.data[kk * b.row_stride + j * b.col_stride];
        let scales: Vec<f32> = (0..n).map(|j| scale_of((0..k).map(|kk| at(kk, j)))).collect();
        let mut data = vec![0i8; panels * groups * PANEL * GROUP];
        let mut sums = vec![0i32; n];
        for j in 0..n {
            let (panel, col, inverse) = (j / PANEL, j % PANEL, 1.0 / scales[j]);
            for kk in 0..k {
                let q = quantize(at(kk, j), inverse);
                sums[j] += q as i32;
                data[((panel * groups + kk / GROUP) * PANEL + col) * GROUP + kk % GROUP] = q;
            }
        }
        let offsets = sums.iter().map(|s| if kernel.unsigned() { 128 * s } else { 0 }).collect();
        Ok(PackedInt8 { data, scales, offsets, k, n, groups, kernel })
    }

    /// k: the length of each input row.
    pub fn rows(&self) -> usize {
        self.k
    }

    /// n: outputs per input row.
    pub fn cols(&self) -> usize {
        self.n
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.data.len() + 8 * self.n
    }

    fn panel(&self, p: usize) -> &[i8] {
        let len = self.groups * PANEL * GROUP;
        &self.data[p * len..(p + 1) * len]
    }
}

/// Activation rows quantized for one product, kept between products so that sampling allocates
/// nothing per character.
#[derive(Default)]
pub struct Activations {
    /// Per row, `groups` words of four bytes (x_q, or x_q + 128 for VNNI) and, for AVX2, a
    /// second run of `groups` words holding the same bytes as 16-bit pairs.
    words: Vec<u32>,
    scales: Vec<f32>,
}

/// How the kernels of `kernel` read an activation row: words per group.
fn words_per_group(kernel: Int8Kernel) -> usize {
    match kernel {
        Int8Kernel::Avx2 => 2,
        _ => 1,
    }
}

impl Activations {
    /// Quantizes `rows` rows of `k` values with a scale each, in the form `kernel` reads.
    fn quantize(&mut self, x: &[f32], rows: usize, k: usize, groups: usize, kernel: Int8Kernel) {
        let per_row = groups * words_per_group(kernel);
        self.words.clear();
        self.words.resize(rows * per_row, 0);
        self.scales.clear();
        for (row, words) in
            x[..rows * k].chunks_exact(k.max(1)).zip(self.words.chunks_exact_mut(per_row.max(1)))
        {
            let scale = scale_of(row.iter().copied());
            self.scales.push(scale);
            let inverse = 1.0 / scale;
            for (g, chunk) in row.chunks(GROUP).enumerate() {
                // k's padding is x_q = 0 (against zero weights).
                let mut q = [0i8; GROUP];
                for (t, &v) in chunk.iter().enumerate() {
                    q[t] = quantize(v, inverse);
                }
                words[g] = match kernel {
                    Int8Kernel::Avx512Vnni | Int8Kernel::AvxVnni => {
                        u32::from_le_bytes(q.map(|v| (v as i32 + 128) as u8))
                    }
                    Int8Kernel::Avx2 => {
                        // (x0, x2) and (x1, x3) as 16-bit pairs, against the weights' even and
                        // odd bytes.
                        let pair = |a: i8, b: i8| (a as i16 as u16 as u32) | ((b as i16 as u16 as u32) << 16);
                        words[groups + g] = pair(q[1], q[3]);
                        pair(q[0], q[2])
                    }
                    _ => u32::from_le_bytes(q.map(|v| v as u8)),
                };
            }
        }
    }
}

/// Rows of activations a tile of the kernels takes at once.
const TILE_ROWS: usize = 4;

/// `out[rows × n] = x[rows × k] · b`, each row of `x` quantized to int8 with its own scale: an
/// exact integer dot product per output, times the row's and the column's scales. The panels
/// are shared out among the members of `team`, each taking the same ones every call, so that
/// each keeps its part of the matrix in its own caches.
pub fn matmul_int8(
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    b: &PackedInt8,
    scratch: &mut Activations,
    team: &Team,
) {
    assert_eq!(x.len(), rows * b.k, "input has the wrong size");
    assert_eq!(out.len(), rows * b.n, "output has the wrong size");
    if rows == 0 || b.n == 0 {
        return;
    }
    scratch.quantize(x, rows, b.k, b.groups, b.kernel);
    let (words, scales) = (&scratch.words[..], &scratch.scales[..]);
    let row_words = b.groups * words_per_group(b.kernel);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let panels = b.n.div_ceil(PANEL);
    let one_panel = |p: usize| {
        let cols = PANEL.min(b.n - p * PANEL);
        let mut sums = [[0i32; PANEL]; TILE_ROWS];
        for row0 in (0..rows).step_by(TILE_ROWS) {
            let tile = TILE_ROWS.min(rows - row0);
            let x = &words[row0 * row_words..(row0 + tile) * row_words];
            dot_tile(b.kernel, x, row_words, tile, b.panel(p), b.groups, &mut sums);
            for (r, sum) in sums.iter().enumerate().take(tile) {
                let sx = scales[row0 + r];
                for (c, &sum) in sum.iter().enumerate().take(cols) {
                    let j = p * PANEL + c;
                    let exact = sum - b.offsets[j];
                    // SAFETY: row row0 + r < rows and column j < n lie inside `out`, and only
                    // this panel's task writes column j.
                    unsafe { *out_ptr.at((row0 + r) * b.n + j) = exact as f32 * (sx * b.scales[j]) };
                }
            }
        }
    };
    // A product too small to repay the other members' work (the output layer's, at a small
    // vocabulary) runs here.
    if rows * b.k * b.n < 1 << 20 {
        (0..panels).for_each(one_panel);
        return;
    }
    team.run(&|i, members| (panels * i / members..panels * (i + 1) / members).for_each(one_panel));
}

/// The integer sums of `tile` (≤ TILE_ROWS) activation rows against one panel, into
/// `sums[row][col]`.
fn dot_tile(
    kernel: Int8Kernel,
    x: &[u32],
    row_words: usize,
    tile: usize,
    panel: &[i8],
    groups: usize,
    sums: &mut [[i32; PANEL]; TILE_ROWS],
) {
    assert!(tile <= TILE_ROWS && x.len() >= tile * row_words && panel.len() == groups * PANEL * GROUP);
    assert!(row_words >= groups * words_per_group(kernel));
    debug_assert!(kernel.supported());
    // SAFETY: the asserts above bound every read (tile rows of row_words words; groups × PANEL
    // × GROUP panel bytes), and a PackedInt8 exists only for a kernel this CPU supports.
    // (Where no kernel of the architecture is compiled in, only the safe portable arm is left.)
    #[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_unsafe))]
    unsafe {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx512Vnni => with_tile!(tile, x86::avx512_vnni(x, row_words, panel, groups, sums)),
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::AvxVnni => with_tile!(tile, x86::avx_vnni(x, row_words, panel, groups, sums)),
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx2 => with_tile!(tile, x86::avx2(x, row_words, panel, groups, sums)),
            #[cfg(target_arch = "aarch64")]
            Int8Kernel::NeonDot => with_tile!(tile, arm::neon_dot(x, row_words, panel, groups, sums)),
            #[cfg(target_arch = "aarch64")]
            Int8Kernel::Neon => with_tile!(tile, arm::neon(x, row_words, panel, groups, sums)),
            _ => portable(x, row_words, tile, panel, groups, sums),
        }
    }
}

/// Calls `$kernel::<R>(args)` with the tile's row count (1 ..= TILE_ROWS) as a constant, so
/// that each height gets its own unrolled code with its accumulators in registers (unused
/// where the architecture has no integer kernels, as on wasm32).
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_macros))]
macro_rules! with_tile {
    ($rows:expr, $($kernel:ident)::+ ($($arg:expr),*)) => {
        match $rows {
            1 => $($kernel)::+::<1>($($arg),*),
            2 => $($kernel)::+::<2>($($arg),*),
            3 => $($kernel)::+::<3>($($arg),*),
            _ => $($kernel)::+::<4>($($arg),*),
        }
    };
}
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_imports))]
use with_tile;

/// Plain integer loops (signed activation bytes).
fn portable(
    x: &[u32],
    row_words: usize,
    tile: usize,
    panel: &[i8],
    groups: usize,
    sums: &mut [[i32; PANEL]; TILE_ROWS],
) {
    for (r, sum) in sums.iter_mut().enumerate().take(tile) {
        sum.fill(0);
        for g in 0..groups {
            let xq = x[r * row_words + g].to_le_bytes().map(|b| b as i8 as i32);
            let w = &panel[g * PANEL * GROUP..(g + 1) * PANEL * GROUP];
            for (c, s) in sum.iter_mut().enumerate() {
                let w = &w[c * GROUP..(c + 1) * GROUP];
                *s += xq[0] * w[0] as i32 + xq[1] * w[1] as i32 + xq[2] * w[2] as i32 + xq[3] * w[3] as i32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    // The register tiles are indexed by row and column, as the arithmetic is written.
    #![allow(clippy::needless_range_loop)]
    use std::arch::x86_64::*;

    use super::{GROUP, PANEL, TILE_ROWS};

    /// # Safety
    /// The CPU has AVX-512 VNNI and BW; `x` holds `MR` rows of `row_words` words of x_q + 128
    /// and `panel` groups × PANEL × GROUP bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn avx512_vnni<const MR: usize>(
        x: &[u32],
        row_words: usize,
        panel: &[i8],
        groups: usize,
        sums: &mut [[i32; PANEL]; TILE_ROWS],
    ) {
        // SAFETY: every load lies in `panel` (group g < groups, 4 × 64 bytes) or `x` (row r <
        // MR, word g < groups), as the contract says.
        unsafe {
            let mut acc = [[_mm512_setzero_si512(); 4]; MR];
            let w = panel.as_ptr();
            for g in 0..groups {
                let base = w.add(g * PANEL * GROUP);
                let wv = [
                    _mm512_loadu_si512(base as *const _),
                    _mm512_loadu_si512(base.add(64) as *const _),
                    _mm512_loadu_si512(base.add(128) as *const _),
                    _mm512_loadu_si512(base.add(192) as *const _),
                ];
                for r in 0..MR {
                    let xv = _mm512_set1_epi32(*x.get_unchecked(r * row_words + g) as i32);
                    for j in 0..4 {
                        acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], xv, wv[j]);
                    }
                }
            }
            for r in 0..MR {
                for j in 0..4 {
                    _mm512_storeu_si512(sums[r].as_mut_ptr().add(16 * j) as *mut _, acc[r][j]);
                }
            }
        }
    }

    /// Writes a 32-column half of a panel's sums from 8-lane accumulators.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn store_half<const MR: usize>(
        acc: &[[__m256i; 4]; MR],
        half: usize,
        sums: &mut [[i32; PANEL]; TILE_ROWS],
    ) {
        for r in 0..MR {
            for j in 0..4 {
                // SAFETY: columns 32·half + 8·j .. + 8 lie inside the row of PANEL sums.
                unsafe {
                    _mm256_storeu_si256(sums[r].as_mut_ptr().add(32 * half + 8 * j) as *mut _, acc[r][j])
                };
            }
        }
    }

    /// # Safety
    /// As [`avx512_vnni`], with AVX-VNNI and AVX2.
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn avx_vnni<const MR: usize>(
        x: &[u32],
        row_words: usize,
        panel: &[i8],
        groups: usize,
        sums: &mut [[i32; PANEL]; TILE_ROWS],
    ) {
        // SAFETY: as in avx512_vnni; each half is 32 columns of the panel.
        unsafe {
            for half in 0..2 {
                let mut acc = [[_mm256_setzero_si256(); 4]; MR];
                let w = panel.as_ptr().add(half * 32 * GROUP);
                for g in 0..groups {
                    let base = w.add(g * PANEL * GROUP);
                    let wv = [
                        _mm256_loadu_si256(base as *const _),
                        _mm256_loadu_si256(base.add(32) as *const _),
                        _mm256_loadu_si256(base.add(64) as *const _),
                        _mm256_loadu_si256(base.add(96) as *const _),
                    ];
                    for r in 0..MR {
                        let xv = _mm256_set1_epi32(*x.get_unchecked(r * row_words + g) as i32);
                        for j in 0..4 {
                            acc[r][j] = _mm256_dpbusd_avx_epi32(acc[r][j], xv, wv[j]);
                        }
                    }
                }
                store_half(&acc, half, sums);
            }
        }
    }

    /// # Safety
    /// The CPU has AVX2; `x` holds `MR` rows of `row_words` words, the first `groups` the
    /// 16-bit pairs (x0, x2), the next `groups` (x1, x3); `panel` as in [`avx512_vnni`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2<const MR: usize>(
        x: &[u32],
        row_words: usize,
        panel: &[i8],
        groups: usize,
        sums: &mut [[i32; PANEL]; TILE_ROWS],
    ) {
        // SAFETY: as in avx512_vnni, the odd pairs `groups` words after the even ones.
        unsafe {
            for half in 0..2 {
                let mut acc = [[_mm256_setzero_si256(); 4]; MR];
                let w = panel.as_ptr().add(half * 32 * GROUP);
                for g in 0..groups {
                    let base = w.add(g * PANEL * GROUP);
                    for j in 0..4 {
                        let bytes = _mm256_loadu_si256(base.add(j * 32) as *const _);
                        // Each 32-bit lane holds w0..w3 of one column: bytes 0 and 2 as
                        // sign-extended 16-bit values, then bytes 1 and 3.
                        let even = _mm256_srai_epi16(_mm256_slli_epi16(bytes, 8), 8);
                        let odd = _mm256_srai_epi16(bytes, 8);
                        for r in 0..MR {
                            let row = x.as_ptr().add(r * row_words);
                            let x02 = _mm256_set1_epi32(*row.add(g) as i32);
                            let x13 = _mm256_set1_epi32(*row.add(groups + g) as i32);
                            let both =
                                _mm256_add_epi32(_mm256_madd_epi16(even, x02), _mm256_madd_epi16(odd, x13));
                            acc[r][j] = _mm256_add_epi32(acc[r][j], both);
                        }
                    }
                }
                store_half(&acc, half, sums);
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    // The register tiles are indexed by row and column, as the arithmetic is written.
    #![allow(clippy::needless_range_loop)]
    use std::arch::aarch64::*;

    use super::{GROUP, PANEL, TILE_ROWS};

    /// # Safety
    /// The CPU has the dot-product extension; `x` holds `MR` rows of `row_words` words of
    /// signed bytes and `panel` groups × PANEL × GROUP bytes.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn neon_dot<const MR: usize>(
        x: &[u32],
        row_words: usize,
        panel: &[i8],
        groups: usize,
        sums: &mut [[i32; PANEL]; TILE_ROWS],
    ) {
        // SAFETY: every load lies in `panel` or `x`, as the contract says; each quarter is 16
        // columns.
        unsafe {
            for quarter in 0..4 {
                let mut acc = [[vdupq_n_s32(0); 4]; MR];
                let w = panel.as_ptr().add(quarter * 16 * GROUP);
                for g in 0..groups {
                    let base = w.add(g * PANEL * GROUP);
                    let wv = [
                        vld1q_s8(base),
                        vld1q_s8(base.add(16)),
                        vld1q_s8(base.add(32)),
                        vld1q_s8(base.add(48)),
                    ];
                    for r in 0..MR {
                        let xv = vreinterpretq_s8_u32(vdupq_n_u32(*x.get_unchecked(r * row_words + g)));
                        for j in 0..4 {
                            acc[r][j] = sdot(acc[r][j], wv[j], xv);
                        }
                    }
                }
                store_quarter(&acc, quarter, sums);
            }
        }
    }

    /// Writes a 16-column quarter of a panel's sums from 4-lane accumulators.
    ///
    /// # Safety
    /// The CPU has NEON (every aarch64 CPU).
    #[target_feature(enable = "neon")]
    unsafe fn store_quarter<const MR: usize>(
        acc: &[[int32x4_t; 4]; MR],
        quarter: usize,
        sums: &mut [[i32; PANEL]; TILE_ROWS],
    ) {
        for r in 0..MR {
            for j in 0..4 {
                // SAFETY: columns 16·quarter + 4·j .. + 4 lie inside the row of PANEL sums.
                unsafe { vst1q_s32(sums[r].as_mut_ptr().add(16 * quarter + 4 * j), acc[r][j]) };
            }
        }
    }

    /// `sdot`: each 32-bit lane of `acc` plus the dot product of the four bytes of `a` and `b`
    /// in that lane. By `asm!`, as the intrinsic (`vdotq_s32`) is not stable.
    ///
    /// # Safety
    /// The CPU has the dot-product extension.
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: a register-only instruction of the dot-product extension, which the caller
        // guarantees.
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }

    /// # Safety
    /// As [`neon_dot`], without needing the dot-product extension.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn neon<const MR: usize>(
        x: &[u32],
        row_words: usize,
        panel: &[i8],
        groups: usize,
        sums: &mut [[i32; PANEL]; TILE_ROWS],
    ) {
        // SAFETY: as in neon_dot.
        unsafe {
            for quarter in 0..4 {
                let mut acc = [[vdupq_n_s32(0); 4]; MR];
                let w = panel.as_ptr().add(quarter * 16 * GROUP);
                for g in 0..groups {
                    let base = w.add(g * PANEL * GROUP);
                    for j in 0..4 {
                        // Four columns' four bytes each.
                        let wv = vld1q_s8(base.add(j * 16));
                        for r in 0..MR {
                            let xv = vreinterpretq_s8_u32(vdupq_n_u32(*x.get_unchecked(r * row_words + g)));
                            // 16-bit products, then pairs, then pairs of pairs: one sum per column.
                            let lo = vpaddlq_s16(vmull_s8(vget_low_s8(wv), vget_low_s8(xv)));
                            let hi = vpaddlq_s16(vmull_high_s8(wv, xv));
                            acc[r][j] = vaddq_s32(acc[r][j], vpaddq_s32(lo, hi));
                        }
                    }
                }
                store_quarter(&acc, quarter, sums);
            }
        }
    }
}

/// Every output's exact value under the quantization, with i64 sums: what every kernel must
/// give, bit for bit.
#[cfg(test)]
fn reference(x: &[f32], rows: usize, b: View<f32>) -> Vec<f32> {
    let (k, n) = (b.rows, b.cols);
    let at = |kk: usize, j: usize| b.data[kk * b.row_stride + j * b.col_stride];
    let w_scales: Vec<f32> = (0..n).map(|j| scale_of((0..k).map(|kk| at(kk, j)))).collect();
    let mut out = vec![0.0; rows * n];
    for r in 0..rows {
        let row = &x[r * k..(r + 1) * k];
        let sx = scale_of(row.iter().copied());
        for j in 0..n {
            let q = |v: f32, scale: f32| quantize(v, 1.0 / scale) as i64;
            let sum: i64 = (0..k).map(|kk| q(row[kk], sx) * q(at(kk, j), w_scales[j])).sum();
            out[r * n + j] = sum as i32 as f32 * (sx * w_scales[j]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, Rng, SeedableRng};

    use super::*;

    /// Every kernel this CPU has gives the reference's bits on ragged sizes (k not a multiple of
    /// four, a last panel of 1 to 64 columns, row counts around the tile height, products small
    /// enough for the caller alone and large enough to be shared by a team of two), for rows of
    /// mixed signs and ranges, a zero row, and extreme values.
    #[test]
    fn every_kernel_gives_the_exact_reference_on_ragged_sizes() {
        let mut rng = StdRng::seed_from_u64(7);
        let team = Team::new(2);
        let kernels: Vec<_> = Int8Kernel::ALL.into_iter().filter(|k| k.supported()).collect();
        assert!(kernels.contains(&Int8Kernel::Portable));
        let sizes =
            [(1, 1), (3, 5), (4, 64), (5, 65), (63, 17), (64, 128), (130, 129), (1024, 70), (1023, 1030)];
        for &(k, n) in &sizes {
            for rows in [1, 2, 3, 4, 5, 9] {
                let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0f32).powi(3) * 4.0).collect();
                let mut x: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                x[..k].fill(0.0); // a row of zeros
                if rows > 1 {
                    x[k] = 1e30; // one huge value dominates its row's scale
                }
                // W as the model stores it, [n, k], used transposed, as the sampler does.
                let b = View::rows(&w, n, k).t();
                let want = reference(&x, rows, b);
                for &kernel in &kernels {
                    let packed = PackedInt8::new(b, kernel).unwrap();
                    let mut out = vec![f32::NAN; rows * n];
                    matmul_int8(&mut out, &x, rows, &packed, &mut Activations::default(), &team);
                    let same = out.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{kernel} at k {k}, n {n}, rows {rows}: {:?} vs {:?}",
                        &out[..4.min(n)],
                        &want[..4.min(n)]
                    );
                }
            }
        }
    }

    /// A row's result does not depend on the rows beside it.
    #[test]
    fn a_rows_result_is_the_same_alone_and_in_a_batch() {
        let mut rng = StdRng::seed_from_u64(8);
        let (k, n) = (100, 70);
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..6 * k).map(|_| rng.random_range(-3.0..3.0)).collect();
        let kernel = Int8Kernel::for_kernel(Kernel::best());
        let team = Team::new(2);
        let packed = PackedInt8::new(View::rows(&w, n, k).t(), kernel).unwrap();
        let mut all = vec![0.0; 6 * n];
        matmul_int8(&mut all, &x, 6, &packed, &mut Activations::default(), &team);
        for r in 0..6 {
            let mut one = vec![0.0; n];
            matmul_int8(&mut one, &x[r * k..(r + 1) * k], 1, &packed, &mut Activations::default(), &team);
            assert_eq!(one, all[r * n..(r + 1) * n]);
        }
    }

    /// The error against the f32 product stays inside the bound of symmetric rounding:
    /// |x·w − sx·sw·x_q·w_q| ≤ sx·sw·Σ (|x_q| + |w_q| + ½)/2 per output.
    #[test]
    fn the_error_is_inside_the_rounding_bound() {
        let mut rng = StdRng::seed_from_u64(9);
        let (k, n) = (257, 33);
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-0.2..0.2)).collect();
        let x: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b = View::rows(&w, n, k).t();
        let (packed, team) = (PackedInt8::new(b, Int8Kernel::Portable).unwrap(), Team::new(1));
        let mut out = vec![0.0; n];
        matmul_int8(&mut out, &x, 1, &packed, &mut Activations::default(), &team);
        let sx = scale_of(x.iter().copied());
        for j in 0..n {
            let col: Vec<f32> = (0..k).map(|kk| w[j * k + kk]).collect();
            let sw = scale_of(col.iter().copied());
            let exact: f64 = (0..k).map(|kk| x[kk] as f64 * col[kk] as f64).sum();
            let bound: f64 = (0..k)
                .map(|kk| {
                    let (xq, wq) =
                        (quantize(x[kk], 1.0 / sx).abs() as f64, quantize(col[kk], 1.0 / sw).abs() as f64);
                    (xq + wq + 0.5) / 2.0
                })
                .sum::<f64>()
                * (sx as f64 * sw as f64);
            let err = (out[j] as f64 - exact).abs();
            assert!(err <= bound * (1.0 + 1e-6), "column {j}: error {err} over the bound {bound}");
        }
    }
}
