//! Products with bf16 operands and f32 sums, on AVX512-BF16: `vdpbf16ps` multiplies pairs of
//! bf16 values and adds both products to an f32 lane, twice the f32 FMA's arithmetic per
//! instruction, and bf16 halves the bytes a matrix-vector product streams from memory.
//!
//! The right operand is packed once, like the f32 kernel's ([`super::blas::Packed`]): panels of
//! 32 columns, each k/2 rows of 32 pairs (rows 2p and 2p + 1 of a column in one 32-bit lane, a
//! zero pair past an odd k). Each output is one chain of pair products in k order whatever
//! the row count, so a row's result does not depend on the other rows (sampling relies on it).

use rayon::prelude::*;

use super::blas::View;

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

/// f32 to bf16, rounding to nearest with ties to even; NaN stays NaN (quiet).
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
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

const PANEL: usize = 32;

/// A right-hand operand [k × n] in bf16 pairs, packed in column panels.
pub struct PackedBf16 {
    data: Vec<u32>,
    k: usize,
    n: usize,
}

impl PackedBf16 {
    pub fn new(b: View<f32>) -> Self {
        let (k, n) = (b.rows, b.cols);
        let (pairs, panels) = (k.div_ceil(2), n.div_ceil(PANEL));
        let at = |r: usize, c: usize| {
            if r < k && c < n {
                b.data[r * b.row_stride + c * b.col_stride]
            } else {
                0.0
            }
        };
        let mut data = vec![0u32; panels * pairs * PANEL];
        data.par_chunks_mut(pairs * PANEL).enumerate().for_each(|(p, panel)| {
            for (q, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                for (c, v) in row.iter_mut().enumerate() {
                    *v = pair(at(2 * q, p * PANEL + c), at(2 * q + 1, p * PANEL + c));
                }
            }
        });
        PackedBf16 { data, k, n }
    }

    pub fn rows(&self) -> usize {
        self.k
    }

    pub fn cols(&self) -> usize {
        self.n
    }
}

/// Buffers a product reuses from call to call, so that a sampling step allocates nothing.
#[derive(Default)]
pub struct Scratch {
    /// The left operand in bf16 pairs, [m × k/2].
    a_pairs: Vec<u32>,
    /// The panels' results side by side, [panels × m × 32], before they go to their columns.
    blocks: Vec<f32>,
}

/// `out = a · b` for `a` [m × k] (row-major f32, rounded to bf16 here) and a packed `b`: bf16
/// products summed in f32. The CPU must have the instructions ([`supported`]).
pub fn matmul_bf16(out: &mut [f32], a: &[f32], m: usize, b: &PackedBf16, scratch: &mut Scratch) {
    assert!(supported(), "the bf16 product needs AVX512-BF16");
    let (k, n, pairs) = (b.k, b.n, b.k.div_ceil(2));
    assert_eq!((a.len(), out.len()), (m * k, m * n), "operand sizes disagree");
    let at = |i: usize, r: usize| if r < k { a[i * k + r] } else { 0.0 };
    scratch.a_pairs.clear();
    scratch.a_pairs.extend(
        (0..m * pairs).map(|j| (j / pairs, j % pairs)).map(|(i, q)| pair(at(i, 2 * q), at(i, 2 * q + 1))),
    );
    scratch.blocks.resize(n.div_ceil(PANEL) * m * PANEL, 0.0);
    let a_pairs = &scratch.a_pairs;
    scratch.blocks.par_chunks_mut(m * PANEL).enumerate().for_each(|(p, block)| {
        panel_product(a_pairs, m, pairs, &b.data[p * pairs * PANEL..(p + 1) * pairs * PANEL], block);
    });
    for (p, block) in scratch.blocks.chunks_exact(m * PANEL).enumerate() {
        let cols = PANEL.min(n - p * PANEL);
        for (i, row) in block.chunks_exact(PANEL).enumerate() {
            out[i * n + p * PANEL..][..cols].copy_from_slice(&row[..cols]);
        }
    }
}

/// One panel: `block` [m × 32] = a_pairs [m × pairs] · panel [pairs × 32], in tiles of up to
/// 8 rows.
fn panel_product(a_pairs: &[u32], m: usize, pairs: usize, panel: &[u32], block: &mut [f32]) {
    assert_eq!((a_pairs.len(), panel.len(), block.len()), (m * pairs, pairs * PANEL, m * PANEL));
    let mut row0 = 0;
    while row0 < m {
        let rows = 8.min(m - row0);
        let a = &a_pairs[row0 * pairs..(row0 + rows) * pairs];
        let out = &mut block[row0 * PANEL..(row0 + rows) * PANEL];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul_bf16` checked that the CPU has AVX-512F and AVX512-BF16; the tile
        // reads `rows` rows of `pairs` pairs and `pairs` panel rows of 32, and writes `rows`
        // rows of 32, all inside the slices passed (checked above).
        unsafe {
            match rows {
                1 => tile::<1>(a, pairs, panel, out),
                2 => tile::<2>(a, pairs, panel, out),
                3 => tile::<3>(a, pairs, panel, out),
                4 => tile::<4>(a, pairs, panel, out),
                5 => tile::<5>(a, pairs, panel, out),
                6 => tile::<6>(a, pairs, panel, out),
                7 => tile::<7>(a, pairs, panel, out),
                _ => tile::<8>(a, pairs, panel, out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (a, out);
        row0 += rows;
    }
}

/// MR rows × 32 columns: two 16-lane f32 accumulators per row, one `vdpbf16ps` each per pair
/// of k.
///
/// # Safety
/// The CPU must have AVX-512F and AVX512-BF16; `a` must hold MR × pairs values, `panel`
/// pairs × 32 and `out` MR × 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile<const MR: usize>(a: &[u32], pairs: usize, panel: &[u32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= MR * pairs && panel.len() >= pairs * PANEL && out.len() >= MR * PANEL);
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
            _mm512_storeu_ps(out.as_mut_ptr().add(i * PANEL), lo[i]);
            _mm512_storeu_ps(out.as_mut_ptr().add(i * PANEL + 16), hi[i]);
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

    /// Against an f64 product of the same inputs. bf16 keeps 8 significant bits, so each input
    /// rounds within 2^-8 relative and each product within about 2^-7 of the exact one; the
    /// f32 sums add up to k · 2^-24 more. The bound is (2^-7 + k · 2^-23) · Σ|a·b|.
    #[test]
    fn matches_an_f32_reference_within_bf16_rounding_on_ragged_sizes() {
        if !supported() {
            println!("skipped: this CPU lacks avx512_bf16");
            return;
        }
        let value = |i: usize, s: f64| (((i * 7919 + 13) % 211) as f64 / 105.0 - 1.0) * s;
        for (m, k, n) in [(1, 1, 1), (1, 1024, 3072), (3, 37, 70), (9, 64, 33), (17, 5, 96), (8, 100, 65)] {
            let a: Vec<f32> = (0..m * k).map(|i| value(i, 0.7) as f32).collect();
            let b: Vec<f32> = (0..k * n).map(|i| value(i + 5, 0.3) as f32).collect();
            // b as [n × k] rows, viewed transposed: the layout sampling packs.
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            for packed in [PackedBf16::new(View::rows(&b, k, n)), PackedBf16::new(View::rows(&bt, n, k).t())]
            {
                let mut out = vec![f32::NAN; m * n];
                matmul_bf16(&mut out, &a, m, &packed, &mut Scratch::default());
                for i in 0..m {
                    for j in 0..n {
                        let exact: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
                        let scale: f64 =
                            (0..k).map(|p| (a[i * k + p] as f64 * b[p * n + j] as f64).abs()).sum();
                        let bound = (2f64.powi(-7) + k as f64 * 2f64.powi(-23)) * scale + 1e-30;
                        let got = out[i * n + j] as f64;
                        assert!(
                            (got - exact).abs() <= bound,
                            "{m}x{k}x{n} ({i},{j}): {got} vs {exact}, bound {bound}"
                        );
                    }
                }
                // Each row alone gives the same bits as among the others.
                for i in [0, m - 1] {
                    let mut alone = vec![0.0f32; n];
                    matmul_bf16(&mut alone, &a[i * k..(i + 1) * k], 1, &packed, &mut Scratch::default());
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&alone), bits(&out[i * n..(i + 1) * n]), "{m}x{k}x{n} row {i}");
                }
            }
        }
    }
}
