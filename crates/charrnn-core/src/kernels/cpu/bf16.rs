//! Products with bf16 operands and f32 sums. Two engines compute them:
//! - [`Tiles::Dot`], AVX512-BF16's `vdpbf16ps`: multiplies pairs of bf16 values and adds both
//!   products to an f32 lane, twice the f32 FMA's arithmetic per instruction. Each output is
//!   one chain of pair products in k order whatever the row count, so a row's result does not
//!   depend on the other rows: sampling relies on it, and bf16 halves the bytes its
//!   matrix-vector products stream from memory.
//! - [`Tiles::Amx`], AMX tiles ([`super::amx`]) where the CPU has them: for the recurrent
//!   layers' [batch × k] products in training, at several times the f32 rate.
//!
//! The right operand is packed once, like the f32 kernel's ([`super::blas::Packed`]): panels of
//! 32 columns, each of k/2 rows of 32 pairs (rows 2p and 2p + 1 of a column in one 32-bit
//! lane), k padded with zero pairs to whole AMX tiles.

use rayon::prelude::*;

use super::amx;
#[cfg(target_arch = "x86_64")]
use super::blas::with_rows;
use super::blas::{OutPtr, View, PANEL};

/// Refuses bf16 on a CPU without the instructions, saying what is missing.
pub fn require() -> anyhow::Result<()> {
    if !supported() {
        anyhow::bail!(
            "--precision bf16 needs a CPU with AVX512-BF16 (the avx512_bf16 flag in /proc/cpuinfo), which this one lacks; use f32"
        );
    }
    Ok(())
}

/// Whether this CPU has the instructions (AVX512-BF16 with AVX-512F).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// f32 to bf16 as `vcvtne2ps2bf16` rounds: to nearest with ties to even, a subnormal input to
/// a zero of its sign, NaN to a quiet NaN. So values rounded here and by the instruction agree.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if x.is_subnormal() {
        return ((bits >> 16) & 0x8000) as u16;
    }
    let round = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

#[cfg(test)]
pub fn from_bf16(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// Two bf16 values in one 32-bit lane: `lo` first.
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

// A packed panel is two AMX tiles wide.
const _: () = assert!(PANEL == amx::COLS);

/// A right-hand operand [k × n] in bf16 pairs, packed in column panels.
pub struct PackedBf16 {
    data: Vec<u32>,
    k: usize,
    n: usize,
    /// Pair rows per panel: k/2 rounded up to whole AMX tiles.
    pairs: usize,
}

impl PackedBf16 {
    pub fn new(b: View<f32>) -> Self {
        Self::pack_into(b, Vec::new())
    }

    /// Packs `b` into the memory of `data`, whose values are all overwritten, so that products
    /// packing a new operand every call ([`matmul_bf16_once`]) reuse one buffer.
    fn pack_into(b: View<f32>, mut data: Vec<u32>) -> Self {
        b.assert_in_bounds();
        let (k, n) = (b.rows, b.cols);
        let (pairs, panels) = (k.div_ceil(2).next_multiple_of(amx::PAIRS), n.div_ceil(PANEL));
        let at = |r: usize, c: usize| {
            if r < k && c < n {
                b.data[r * b.row_stride + c * b.col_stride]
            } else {
                0.0
            }
        };
        // Only growth is zero-filled; every value is written below.
        data.resize(panels * pairs * PANEL, 0);
        let zeros = [0.0f32; PANEL];
        data.par_chunks_mut(pairs * PANEL).enumerate().for_each(|(p, panel)| {
            let c0 = p * PANEL;
            if b.row_stride == 1 && n - c0 >= PANEL {
                // A transposed view: each column's k values lie together in memory, so rows
                // 2q and 2q + 1 of a column are one pair. Round a column, then spread it.
                let mut column = vec![0u32; pairs];
                for c in 0..PANEL {
                    round_into(&b.data[(c0 + c) * b.col_stride..][..k], &mut column);
                    panel.iter_mut().skip(c).step_by(PANEL).zip(&column).for_each(|(v, x)| *v = *x);
                }
            } else if b.col_stride == 1 && n - c0 >= PANEL {
                // Rows in memory: rows 2q and 2q + 1 of the panel's 32 columns, interleaved.
                let line = |r: usize| if r < k { &b.data[r * b.row_stride + c0..][..PANEL] } else { &zeros };
                for (q, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                    pair_lines(line(2 * q), line(2 * q + 1), row);
                }
            } else {
                for (q, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                    for (c, v) in row.iter_mut().enumerate() {
                        *v = pair(at(2 * q, c0 + c), at(2 * q + 1, c0 + c));
                    }
                }
            }
        });
        PackedBf16 { data, k, n, pairs }
    }

    pub fn rows(&self) -> usize {
        self.k
    }

    pub fn cols(&self) -> usize {
        self.n
    }
}

/// Which instructions compute a bf16 product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiles {
    /// AVX512-BF16 dot products, 8 rows × 32 columns per register tile; batch-invariant.
    Dot,
    /// AMX tiles, 32 rows × 32 columns per pass.
    Amx,
}

impl Tiles {
    /// AMX where this process may use it, else dot products.
    pub fn best() -> Tiles {
        if amx::supported() {
            Tiles::Amx
        } else {
            Tiles::Dot
        }
    }

    /// The left operand is padded with zero rows to a multiple of this.
    fn rows(self) -> usize {
        match self {
            Tiles::Dot => 1,
            Tiles::Amx => amx::ROWS,
        }
    }
}

/// Buffers a product reuses from call to call, so that a sampling step allocates nothing.
#[derive(Default)]
pub struct Scratch {
    /// The left operand in bf16 pairs, [rows × pairs], zero-padded.
    a_pairs: Vec<u32>,
    /// The memory of the last right operand packed for one product ([`matmul_bf16_once`]).
    b_pairs: Vec<u32>,
}

/// `out = a · b` on AVX512-BF16 dot products, so that each row's result is the same whatever
/// the other rows (see the module notes). `a` is [m × k], row-major f32, rounded to bf16 here.
pub fn matmul_bf16(out: &mut [f32], a: &[f32], m: usize, b: &PackedBf16, scratch: &mut Scratch) {
    matmul_bf16_on(Tiles::Dot, out, false, View::rows(a, m, b.k), b, scratch)
}

/// `out = a · b`, or `out += a · b` when `accumulate`, on `tiles`, which this CPU must have
/// ([`supported`]; [`amx::supported`] for AMX). `a` is rounded to bf16 here; `out` is
/// row-major [a.rows × b.cols].
pub fn matmul_bf16_on(
    tiles: Tiles,
    out: &mut [f32],
    accumulate: bool,
    a: View<f32>,
    b: &PackedBf16,
    scratch: &mut Scratch,
) {
    assert!(supported(), "the bf16 product needs AVX512-BF16");
    assert!(tiles == Tiles::Dot || amx::supported(), "AMX tiles are not available to this process");
    let (m, n, pairs) = (a.rows, b.n, b.pairs);
    assert_eq!((a.cols, out.len()), (b.k, m * n), "operand sizes disagree");
    a.assert_in_bounds();
    let rows = m.next_multiple_of(tiles.rows());
    round_view(a, rows, pairs, &mut scratch.a_pairs);
    let a_pairs = &scratch.a_pairs;
    let out_ptr = OutPtr(out.as_mut_ptr());
    let one_panel = |p: usize| {
        let panel = &b.data[p * pairs * PANEL..(p + 1) * pairs * PANEL];
        let cols = PANEL.min(n - p * PANEL);
        // Rows r0.. of `block` ([rows × 32]) into this panel's columns of the output.
        let emit = |r0: usize, block: &[f32]| {
            for (i, row) in block.chunks_exact(PANEL).take(m.saturating_sub(r0)).enumerate() {
                // SAFETY: row r0 + i < m and columns p·32 .. p·32 + cols < n lie inside `out`
                // ([m × n], checked above), and only this panel's task writes these columns.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.at((r0 + i) * n + p * PANEL), cols) };
                if accumulate {
                    dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
                } else {
                    dst.copy_from_slice(&row[..cols]);
                }
            }
        };
        match tiles {
            Tiles::Dot => {
                let mut block = [0.0f32; 8 * PANEL];
                for r0 in (0..m).step_by(8) {
                    let rows = 8.min(m - r0);
                    // A whole panel takes the tile's sums from its registers; a ragged one
                    // goes through `block`, of which `emit` copies the columns that exist.
                    let whole = cols == PANEL;
                    let dst = match whole {
                        // SAFETY: rows r0 .. r0 + rows ≤ m and columns p·32 .. p·32 + 32 ≤ n
                        // lie inside `out` ([m × n], checked above), which only this panel's
                        // task writes there.
                        true => Dst { ptr: unsafe { out_ptr.at(r0 * n + p * PANEL) }, stride: n, accumulate },
                        false => Dst { ptr: block.as_mut_ptr(), stride: PANEL, accumulate: false },
                    };
                    // SAFETY: `dst` names `rows` rows of 32 values that only this task writes:
                    // of the output, as just above, or of `block` (8 rows).
                    unsafe { dot_rows(&a_pairs[r0 * pairs..], pairs, panel, rows, dst) };
                    if !whole {
                        emit(r0, &block[..rows * PANEL]);
                    }
                }
            }
            // SAFETY: `tiles` is AMX only where `amx::supported` (asserted above).
            Tiles::Amx => unsafe {
                amx::panel_product(a_pairs, rows, pairs, panel, |r0, block| emit(r0, block))
            },
        }
    };
    let panels = n.div_ceil(PANEL);
    match tiles {
        // Sampling's matrix-vector steps: a work-stealing split generated 1.3× the characters
        // per second of fixed shares per worker (5,300–5,500 against 3,400–4,000, GRU 1024).
        Tiles::Dot => (0..panels).into_par_iter().for_each(one_panel),
        // Training's [batch × k] products: each worker takes the same share of panels every
        // call, so across the steps of a sequence it keeps its part of the operand in its own
        // caches (as the f32 kernel does).
        Tiles::Amx => {
            rayon::broadcast(|ctx| {
                let (i, workers) = (ctx.index(), ctx.num_threads());
                (panels * i / workers..panels * (i + 1) / workers).for_each(one_panel);
            });
        }
    }
}

/// [`matmul_bf16_on`] with a right operand used once (a weight gradient's h or input, or
/// weights that change every batch), packed into memory `scratch` keeps: such operands are
/// megabytes each, and a fresh buffer would be zero-filled before packing overwrote it.
pub fn matmul_bf16_once(
    tiles: Tiles,
    out: &mut [f32],
    accumulate: bool,
    a: View<f32>,
    b: View<f32>,
    scratch: &mut Scratch,
) {
    let b = PackedBf16::pack_into(b, std::mem::take(&mut scratch.b_pairs));
    matmul_bf16_on(tiles, out, accumulate, a, &b, scratch);
    scratch.b_pairs = b.data;
}

/// Rounds `a` [m × k] to bf16 pairs in `dst` [rows × pairs], zero past k and below m. Rows in
/// memory (the usual left operand) round one at a time; a transposed view (the weight
/// gradient's dghᵀ) in blocks of 32 × 32, read along its memory rows and turned in a buffer.
fn round_view(a: View<f32>, rows: usize, pairs: usize, dst: &mut Vec<u32>) {
    let (m, k) = (a.rows, a.cols);
    dst.resize(rows * pairs, 0);
    if pairs == 0 {
        return;
    }
    if a.col_stride != 1 && a.row_stride == 1 && m >= 32 {
        dst.par_chunks_mut(32 * pairs)
            .enumerate()
            .for_each(|(blk, block)| round_columns(a, 32 * blk, pairs, block));
        return;
    }
    let round_row = |(i, row): (usize, &mut [u32])| {
        if i >= m {
            row.fill(0)
        } else if a.col_stride == 1 {
            round_into(&a.data[i * a.row_stride..i * a.row_stride + k], row)
        } else {
            let at = |c: usize| if c < k { a.data[i * a.row_stride + c * a.col_stride] } else { 0.0 };
            row.iter_mut().enumerate().for_each(|(q, v)| *v = pair(at(2 * q), at(2 * q + 1)));
        }
    };
    // Below a few hundred thousand values, waking the pool costs more than the rounding.
    if rows * pairs >= 1 << 15 {
        dst.par_chunks_mut(pairs).enumerate().for_each(round_row);
    } else {
        dst.chunks_mut(pairs).enumerate().for_each(round_row);
    }
}

/// Rows i0 .. i0 + 32 of a view whose rows are memory columns (`row_stride` 1) into `block`
/// [32 × pairs] (fewer rows at the end of dst; zero past m and k).
fn round_columns(a: View<f32>, i0: usize, pairs: usize, block: &mut [u32]) {
    let live = 32.min(a.rows.saturating_sub(i0));
    // Memory row c of the view, from i0: 32 of its values (zero past m and k), read in place
    // where all 32 exist (copying each 128-byte line was a sixteenth of a training step).
    fn line<'a>(a: &View<'a, f32>, c: usize, i0: usize, live: usize, spare: &'a mut [f32; 32]) -> &'a [f32] {
        const ZEROS: [f32; 32] = [0.0; 32];
        if c >= a.cols {
            return &ZEROS;
        }
        let row = &a.data[c * a.col_stride + i0..];
        if live == 32 {
            return &row[..32];
        }
        spare[..live].copy_from_slice(&row[..live]);
        spare[live..].fill(0.0);
        spare
    }
    let (mut lo_spare, mut hi_spare) = ([0.0f32; 32], [0.0f32; 32]);
    let mut turned = [[0u32; 32]; amx::PAIRS]; // [pair of k within the chunk][row of the block]
    for q0 in (0..pairs).step_by(amx::PAIRS) {
        for (q, t) in turned.iter_mut().enumerate() {
            let lo = line(&a, 2 * (q0 + q), i0, live, &mut lo_spare);
            let hi = line(&a, 2 * (q0 + q) + 1, i0, live, &mut hi_spare);
            pair_lines(lo, hi, t);
        }
        for (r, row) in block.chunks_exact_mut(pairs).enumerate() {
            for (q, v) in row[q0..q0 + amx::PAIRS].iter_mut().enumerate() {
                *v = turned[q][r];
            }
        }
    }
}

/// `out[c]` = the pair (lo[c], hi[c]) rounded, for 32 columns.
fn pair_lines(lo: &[f32], hi: &[f32], out: &mut [u32]) {
    assert!(lo.len() == PANEL && hi.len() == PANEL && out.len() == PANEL);
    #[cfg(target_arch = "x86_64")]
    if supported() {
        // SAFETY: the CPU has the features (checked); 32 values are read from each input and
        // 32 written, their lengths (asserted above).
        unsafe { pair_lines_avx512(lo, hi, out) };
        return;
    }
    out.iter_mut().zip(lo.iter().zip(hi)).for_each(|(o, (l, h))| *o = pair(*l, *h));
}

/// # Safety
/// The CPU must have AVX-512F and AVX512-BF16; each slice holds 32 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pair_lines_avx512(lo: &[f32], hi: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    // SAFETY: 16-value loads and stores at offsets 0 and 16 of 32-value slices.
    unsafe {
        for half in [0, 16] {
            let round = |src: &[f32]| -> __m512i {
                let b: __m256i =
                    std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(half))));
                _mm512_cvtepu16_epi32(b)
            };
            let both = _mm512_or_si512(round(lo), _mm512_slli_epi32::<16>(round(hi)));
            _mm512_storeu_si512(out.as_mut_ptr().add(half).cast(), both);
        }
    }
}

/// One row: `src` rounded into the pairs of `dst`, zero past its end.
fn round_into(src: &[f32], dst: &mut [u32]) {
    assert!(dst.len() * 2 >= src.len());
    #[cfg(target_arch = "x86_64")]
    let done = match supported() {
        true => {
            let done = 32 * (src.len() / 32);
            // SAFETY: the CPU has the features (checked); the loop reads src[..done] and
            // writes dst[..done / 2], inside both (asserted above).
            unsafe { round_avx512(&src[..done], &mut dst[..done / 2]) };
            done
        }
        false => 0,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (q, d) in dst.iter_mut().enumerate().skip(done / 2) {
        let at = |i: usize| src.get(i).copied().unwrap_or(0.0);
        *d = pair(at(2 * q), at(2 * q + 1));
    }
}

/// # Safety
/// The CPU must have AVX-512F and AVX512-BF16; `src.len()` is a multiple of 32 and
/// `dst.len() == src.len() / 2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_avx512(src: &[f32], dst: &mut [u32]) {
    use std::arch::x86_64::*;
    debug_assert!(src.len().is_multiple_of(32) && dst.len() * 2 == src.len());
    for (s, d) in src.chunks_exact(32).zip(dst.chunks_exact_mut(16)) {
        // SAFETY: 32 floats are read from `s` and 16 lanes written to `d`, their lengths.
        unsafe {
            let lo = _mm512_loadu_ps(s.as_ptr());
            let hi = _mm512_loadu_ps(s.as_ptr().add(16));
            // The low 16 bf16 values come from the second operand.
            let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(d.as_mut_ptr().cast(), both);
        }
    }
}

/// Where a tile's rows × 32 sums go: row i to the 32 values at `ptr + i · stride`, added to
/// them when `accumulate`.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the tiles exist on x86-64 only
struct Dst {
    ptr: *mut f32,
    stride: usize,
    accumulate: bool,
}

/// `rows` (up to eight) rows of the left operand (`a`, from row 0, rows of `pairs`) times one
/// panel into `dst`.
///
/// # Safety
/// `dst` must name `rows` rows of 32 writable values that nothing else touches meanwhile.
unsafe fn dot_rows(a: &[u32], pairs: usize, panel: &[u32], rows: usize, dst: Dst) {
    assert!((1..=8).contains(&rows) && a.len() >= rows * pairs && panel.len() == pairs * PANEL);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: matmul_bf16_on checked the CPU features; the operands' sizes were checked just
    // above and `dst` is the caller's to vouch for.
    unsafe {
        with_rows!(rows, tile(a, pairs, panel, dst))
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("bf16 products exist only on x86-64 ({:?})", dst.ptr)
}

/// MR rows × 32 columns: two 16-lane f32 accumulators per row, one `vdpbf16ps` each per pair
/// of k, stored (or added) straight into `dst`.
///
/// # Safety
/// The CPU must have AVX-512F and AVX512-BF16; `a` must hold MR × pairs values, `panel`
/// pairs × 32, and `dst` must name MR rows of 32 writable values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile<const MR: usize>(a: &[u32], pairs: usize, panel: &[u32], dst: Dst) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= MR * pairs && panel.len() >= pairs * PANEL);
    // SAFETY: the caller guarantees the CPU features and the slices' sizes, so every load
    // and store below is inside its slice.
    unsafe {
        let mut lo = [_mm512_setzero_ps(); MR];
        let mut hi = [_mm512_setzero_ps(); MR];
        let w = panel.as_ptr();
        for q in 0..pairs {
            let w_lo: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(q * PANEL).cast()));
            let w_hi: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(q * PANEL + 16).cast()));
            for i in 0..MR {
                let x: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.get_unchecked(i * pairs + q) as i32));
                lo[i] = _mm512_dpbf16_ps(lo[i], x, w_lo);
                hi[i] = _mm512_dpbf16_ps(hi[i], x, w_hi);
            }
        }
        for i in 0..MR {
            let row = dst.ptr.add(i * dst.stride);
            let (mut l, mut h) = (lo[i], hi[i]);
            if dst.accumulate {
                // What is there plus the sum: the same addition, bit for bit, as adding a
                // stored tile to the output.
                l = _mm512_add_ps(_mm512_loadu_ps(row), l);
                h = _mm512_add_ps(_mm512_loadu_ps(row.add(16)), h);
            }
            _mm512_storeu_ps(row, l);
            _mm512_storeu_ps(row.add(16), h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 2f32.powi(-8))), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))), 1.0 + 2f32.powi(-6));
        for x in [-2.5e-3f32, 0.1, 3.3, 1e30, -7.77e-20] {
            let r = from_bf16(to_bf16(x));
            assert!((r - x).abs() <= x.abs() * 2f32.powi(-8), "{x} -> {r}");
        }
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// The scalar rounding and the instruction agree on every kind of value: normal ones with
    /// ties either way, subnormals, infinities, NaN, and values that round up to infinity.
    #[test]
    fn scalar_rounding_matches_the_instruction() {
        if !supported() {
            return; // nothing to check on a CPU without AVX512-BF16
        }
        let mut bits: Vec<u32> = vec![0, 0x8000_0000, 0x0000_0001, 0x807F_FFFF, 0x7F80_0000, 0xFF80_0000];
        bits.extend([0x7FC0_0000, 0x7F80_0001, 0x7F7F_FFFF, 0x3F80_8000, 0x3F81_8000, 0x3F80_8001]);
        let mut x = 0x1234_5678u32;
        while bits.len() < 4096 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            bits.push(x);
        }
        let src: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
        let mut vector = vec![0u32; src.len() / 2];
        round_into(&src, &mut vector);
        for (q, v) in vector.iter().enumerate() {
            assert_eq!(
                *v,
                pair(src[2 * q], src[2 * q + 1]),
                "values {:#x} {:#x}",
                bits[2 * q],
                bits[2 * q + 1]
            );
        }
    }

    /// Packing by the fast paths (rows in memory, a transposed view) gives the bits of the
    /// element-by-element definition.
    #[test]
    fn packing_fast_paths_match_the_definition() {
        if !supported() {
            return; // nothing to check on a CPU without AVX512-BF16
        }
        let (k, n) = (37, 70);
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 7919 % 211) as f32 - 105.0) / 37.0).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let pairs = k.div_ceil(2).next_multiple_of(amx::PAIRS);
        let at = |r: usize, c: usize| if r < k && c < n { b[r * n + c] } else { 0.0 };
        let mut expected = vec![0u32; n.div_ceil(PANEL) * pairs * PANEL];
        for (i, v) in expected.iter_mut().enumerate() {
            let (p, q, c) = (i / (pairs * PANEL), i / PANEL % pairs, i % PANEL);
            *v = pair(at(2 * q, p * PANEL + c), at(2 * q + 1, p * PANEL + c));
        }
        assert_eq!(PackedBf16::new(View::rows(&b, k, n)).data, expected);
        assert_eq!(PackedBf16::new(View::rows(&bt, n, k).t()).data, expected);
        // Into reused memory: stale values, longer or shorter than the packing, are all replaced.
        for stale in [vec![u32::MAX; expected.len() + 100], vec![u32::MAX; 5]] {
            assert_eq!(PackedBf16::pack_into(View::rows(&b, k, n), stale.clone()).data, expected);
            assert_eq!(PackedBf16::pack_into(View::rows(&bt, n, k).t(), stale).data, expected);
        }
    }

    /// Against an f64 product of the same inputs, on both engines, with `a` in rows and
    /// transposed, `b` packed from rows and from a transposed view, writing and accumulating.
    /// bf16 keeps 8 significant bits, so each input rounds within 2^-8 relative and each
    /// product within about 2^-7 of the exact one; the f32 sums add up to k · 2^-24 more. The
    /// bound is (2^-7 + k · 2^-23) · Σ|a·b|.
    #[test]
    fn matches_an_f32_reference_within_bf16_rounding_on_ragged_sizes() {
        if !supported() {
            return; // nothing to check on a CPU without AVX512-BF16
        }
        // Where AMX is not available, the dot-product engine alone is checked.
        let engines = match amx::supported() {
            true => vec![Tiles::Dot, Tiles::Amx],
            false => vec![Tiles::Dot],
        };
        let value = |i: usize, s: f64| (((i * 7919 + 13) % 211) as f64 / 105.0 - 1.0) * s;
        let sizes =
            [(1, 1, 1), (1, 1024, 3072), (3, 37, 70), (9, 64, 33), (17, 5, 96), (33, 100, 65), (70, 70, 40)];
        for (tiles, (m, k, n)) in engines.iter().flat_map(|t| sizes.map(|s| (*t, s))) {
            let a: Vec<f32> = (0..m * k).map(|i| value(i, 0.7) as f32).collect();
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let b: Vec<f32> = (0..k * n).map(|i| value(i + 5, 0.3) as f32).collect();
            // b as [n × k] rows, viewed transposed: the layout sampling packs.
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let prior: Vec<f32> = (0..m * n).map(|i| value(i + 3, 2.0) as f32).collect();
            let packs = [PackedBf16::new(View::rows(&b, k, n)), PackedBf16::new(View::rows(&bt, n, k).t())];
            let lefts = [View::rows(&a, m, k), View::rows(&at, k, m).t()];
            for (packed, left, accumulate) in
                packs.iter().flat_map(|p| lefts.iter().flat_map(move |l| [(p, l, false), (p, l, true)]))
            {
                let mut out = if accumulate { prior.clone() } else { vec![f32::NAN; m * n] };
                matmul_bf16_on(tiles, &mut out, accumulate, *left, packed, &mut Scratch::default());
                for i in 0..m {
                    for j in 0..n {
                        let start = if accumulate { prior[i * n + j] as f64 } else { 0.0 };
                        let exact: f64 =
                            start + (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum::<f64>();
                        let scale: f64 =
                            (0..k).map(|p| (a[i * k + p] as f64 * b[p * n + j] as f64).abs()).sum();
                        let bound = (2f64.powi(-7) + k as f64 * 2f64.powi(-23)) * scale
                            + start.abs() * 2f64.powi(-23);
                        let got = out[i * n + j] as f64;
                        assert!(
                            (got - exact).abs() <= bound + 1e-30,
                            "{tiles:?} {m}x{k}x{n} accumulate {accumulate} ({i},{j}): {got} vs {exact}, bound {bound}"
                        );
                    }
                }
            }
            // On dot products, each row alone gives the same bits as among the others.
            if tiles == Tiles::Dot {
                let mut out = vec![0.0f32; m * n];
                matmul_bf16(&mut out, &a, m, &packs[0], &mut Scratch::default());
                for i in [0, m - 1] {
                    let mut alone = vec![0.0f32; n];
                    matmul_bf16(&mut alone, &a[i * k..(i + 1) * k], 1, &packs[0], &mut Scratch::default());
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&alone), bits(&out[i * n..(i + 1) * n]), "{m}x{k}x{n} row {i}");
                }
            }
        }
    }
}
