//! How the next character is drawn from the logits: temperature, top-k and nucleus (top-p)
//! sampling, or greedy at temperature 0.

use rand::Rng;

use crate::kernels::cpu::float::exp_f32;
use crate::kernels::cpu::Baseline;

/// How the next character is drawn from the logits.
pub struct Picker {
    /// 0 means greedy: always the most likely character.
    pub temperature: f32,
    /// Only the k most likely characters.
    pub top_k: Option<usize>,
    /// Only the most likely characters whose probabilities add up to at least p (nucleus).
    pub top_p: Option<f32>,
    /// (probability, id), reused from character to character, and room for sorting them.
    scratch: Vec<(f32, u32)>,
    spare: Vec<(f32, u32)>,
}

impl Picker {
    /// A rule of `temperature` with the optional cuts.
    pub fn new(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Self {
        Picker { temperature, top_k, top_p, scratch: Vec::new(), spare: Vec::new() }
    }

    /// One draw per row of `logits` ([rows, vocab]), in row order, appended to `ids`.
    pub fn pick_rows(&mut self, logits: &[f32], vocab: usize, rng: &mut impl Rng, ids: &mut Vec<u32>) {
        for row in logits.chunks_exact(vocab) {
            ids.push(self.pick(row, rng));
        }
    }

    /// One draw from one row of logits (greedy at temperature 0, taking no random number).
    pub fn pick(&mut self, logits: &[f32], rng: &mut impl Rng) -> u32 {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if self.temperature == 0.0 {
            return logits.iter().position(|&l| l == max).unwrap_or(0) as u32;
        }
        let c = &mut self.scratch;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (weight((l - max) / self.temperature), i as u32)));
        if self.top_k.is_some() || self.top_p.is_some() {
            cut(c, &mut self.spare, self.top_k, self.top_p);
        }
        let total: f32 = c.iter().map(|x| x.0).sum();
        let mut u = rng.random::<f32>() * total;
        for &(w, id) in c.iter() {
            u -= w;
            if u < 0.0 {
                return id;
            }
        }
        // Rounding can leave a sliver of mass past the end: give it to the last candidate
        // with any weight.
        c.iter().rev().find(|x| x.0 > 0.0).map_or(c[0].1, |x| x.1)
    }
}

/// e^z for z ≤ 0, by the kernels' own exp (plain IEEE arithmetic, so the same bits on every
/// machine and in a browser, where a library's exp may differ in the last place); 0 below
/// e^-87, where f32 runs out.
fn weight(z: f32) -> f32 {
    match z < -87.0 {
        true => 0.0,
        false => exp_f32::<Baseline>(z),
    }
}

/// Most likely first; ties keep the lower id first: a total order, so a partial selection's
/// head, sorted, is exactly the head of the full sort.
fn by_rank(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Keeps the candidates (weight, id; in id order) that top-k and the nucleus allow, most
/// likely first. Top-k sorts only the k it keeps (a partial selection finds them first); the
/// nucleus alone ranks every candidate by a radix sort, a few passes over the vocabulary
/// rather than a comparison sort's log n of them. `spare` is scratch of the same kind.
///
/// The nucleus is the shortest head whose weight reaches `p` of the kept candidates' total;
/// where every candidate is kept (no top-k), that total is summed in id order (the GPU's
/// draw sums it so too), else in rank order.
fn cut(c: &mut Vec<(f32, u32)>, spare: &mut Vec<(f32, u32)>, top_k: Option<usize>, top_p: Option<f32>) {
    let n = c.len();
    let k = top_k.unwrap_or(n).clamp(1, n);
    if k < n {
        c.select_nth_unstable_by(k - 1, by_rank);
        c.truncate(k);
    }
    let Some(p) = top_p else {
        c.sort_unstable_by(by_rank);
        return;
    };
    let total: f32 = if k < n {
        c.sort_unstable_by(by_rank);
        c.iter().map(|x| x.0).sum()
    } else {
        let total = c.iter().map(|x| x.0).sum();
        sort_by_rank_from_id_order(c, spare);
        total
    };
    let target = p * total;
    let mut running = 0.0f32;
    let keep = c
        .iter()
        .take_while(|x| {
            let inside = running < target;
            running += x.0;
            inside
        })
        .count();
    c.truncate(keep.max(1));
}

/// Sorts `c`, given in id order, into `by_rank`'s order. Where every weight is a non-negative
/// number (as exp makes them), their bits order as their values do, so a least-significant-
/// digit radix sort on the bits does it; being stable, it keeps equal weights in id order, as
/// `by_rank` does. Passes where every key shares the digit are skipped.
fn sort_by_rank_from_id_order(c: &mut Vec<(f32, u32)>, spare: &mut Vec<(f32, u32)>) {
    if c.len() < 1024 || !c.iter().all(|x| x.0 >= 0.0 && x.0.is_finite()) {
        c.sort_unstable_by(by_rank);
        return;
    }
    // Ascending keys are descending weights.
    let key = |x: &(f32, u32)| !x.0.to_bits();
    let mut counts = [[0usize; 256]; 4];
    for x in c.iter() {
        let k = key(x);
        for (digit, count) in counts.iter_mut().enumerate() {
            count[(k >> (8 * digit)) as usize & 0xff] += 1;
        }
    }
    spare.clear();
    spare.resize(c.len(), (0.0, 0));
    for (digit, count) in counts.iter().enumerate() {
        if count.contains(&c.len()) {
            continue;
        }
        let mut next = [0usize; 256];
        let mut at = 0;
        for (slot, &n) in next.iter_mut().zip(count) {
            *slot = at;
            at += n;
        }
        for x in c.iter() {
            let d = (key(x) >> (8 * digit)) as usize & 0xff;
            spare[next[d]] = *x;
            next[d] += 1;
        }
        std::mem::swap(c, spare);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn frequencies(picker: &mut Picker, logits: &[f32], n: usize) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(42);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[picker.pick(logits, &mut rng) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    /// The cut keeps exactly what sorting every candidate would, in the same order, for every
    /// mix of the two cuts, over random weights with ties.
    #[test]
    fn the_partial_cut_keeps_what_a_full_sort_would() {
        let mut rng = StdRng::seed_from_u64(3);
        // Every mix of size, cuts and shape: few levels with ties, peaked or flat, and
        // continuous weights whose running sums round at the nucleus's edge.
        for case in 0..7 * 5 * 4 * 3 {
            let n = [1, 2, 7, 65, 300, 5000, 20_000][case % 7];
            let weights: Vec<(f32, u32)> = (0..n as u32)
                .map(|i| {
                    let level = rng.random_range(0..40) as f32 / 39.0;
                    let w = match case % 3 {
                        0 => level.powi(8),
                        1 => level,
                        _ => (-12.0 * rng.random::<f32>()).exp(),
                    };
                    (w, i)
                })
                .collect();
            let top_k = [None, Some(1), Some(3), Some(n / 2 + 1), Some(n + 5)][case % 5];
            let top_p = [None, Some(0.3), Some(0.9), Some(1.0)][case % 4];
            if top_k.is_none() && top_p.is_none() {
                continue;
            }
            // The reference: sort everything, then cut as the definition says.
            let mut sorted = weights.clone();
            sorted.sort_by(by_rank);
            let mut keep = top_k.unwrap_or(n).clamp(1, n);
            if let Some(p) = top_p {
                let total: f32 = match keep == n {
                    true => weights.iter().map(|x| x.0).sum(),
                    false => sorted[..keep].iter().map(|x| x.0).sum(),
                };
                let mut running = 0.0;
                keep = sorted[..keep]
                    .iter()
                    .take_while(|x| {
                        let inside = running < p * total;
                        running += x.0;
                        inside
                    })
                    .count()
                    .max(1);
            }
            sorted.truncate(keep);
            let mut cut_here = weights.clone();
            cut(&mut cut_here, &mut Vec::new(), top_k, top_p);
            assert_eq!(cut_here, sorted, "case {case}: n {n}, top-k {top_k:?}, top-p {top_p:?}");
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(Picker::new(0.0, None, None).pick(&[0.1, 3.0, -1.0, 2.9], &mut rng), 1);
    }

    #[test]
    fn sampling_follows_the_tempered_softmax() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        // p = (1/4, 3/4, 0)
        let f = frequencies(&mut Picker::new(1.0, None, None), &logits, 40_000);
        assert_eq!(f[2], 0.0);
        assert!((f[1] - 0.75).abs() < 0.01, "{f:?}");
        // temperature 2 flattens: p1 / p0 = sqrt(3)
        let f = frequencies(&mut Picker::new(2.0, None, None), &logits, 40_000);
        let p1 = 3f64.sqrt() / (1.0 + 3f64.sqrt());
        assert!((f[1] - p1).abs() < 0.01, "{f:?}");
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail_and_renormalise() {
        // p = (0.1, 0.2, 0.3, 0.4)
        let logits: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
        let f = frequencies(&mut Picker::new(1.0, Some(2), None), &logits, 40_000);
        assert_eq!((f[0], f[1]), (0.0, 0.0), "{f:?}");
        assert!((f[3] - 4.0 / 7.0).abs() < 0.01, "{f:?}");
        // The nucleus for p = 0.65 is {0.4, 0.3} (0.7 ≥ 0.65); for 0.75 it also takes 0.2.
        let f = frequencies(&mut Picker::new(1.0, None, Some(0.65)), &logits, 40_000);
        assert_eq!((f[0], f[1]), (0.0, 0.0), "{f:?}");
        let f = frequencies(&mut Picker::new(1.0, None, Some(0.75)), &logits, 40_000);
        assert!(f[0] == 0.0 && (f[1] - 2.0 / 9.0).abs() < 0.01, "{f:?}");
        // Both: top-k first, then the nucleus within it.
        let f = frequencies(&mut Picker::new(1.0, Some(3), Some(0.5)), &logits, 10_000);
        assert!(f[0] == 0.0 && f[1] == 0.0 && f[2] > 0.0, "{f:?}");
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(Picker::new(1.0, Some(1), None).pick(&logits, &mut rng), 3, "top-1 is greedy");
    }
}
