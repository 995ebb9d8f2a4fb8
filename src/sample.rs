//! Generation at batch 1: no autograd and no allocation per character. Each step is a table
//! lookup for the input projection, a multi-threaded matrix-vector product with W_hh, the same
//! gate kernel training uses, and the dense layer; then temperature sampling.

use std::io::Write;

use anyhow::{bail, Result};
use candle_core::DType;
use rand::Rng;

use crate::blas::gemv;
use crate::gru::gate_forward;
use crate::model::Model;
use crate::vocab::Vocab;

pub struct Sampler {
    hidden: usize,
    table: Vec<f32>,
    w_hh: Vec<f32>,
    b_hh: Vec<f32>,
    dense_w: Vec<f32>,
    dense_b: Vec<f32>,
    h: Vec<f32>,
    h_next: Vec<f32>,
    gh: Vec<f32>,
    gates: Vec<f32>,
    logits: Vec<f32>,
}

fn host_f32(t: &candle_core::Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

impl Sampler {
    pub fn new(model: &Model) -> Result<Self> {
        let h = model.config.rnn_units;
        let v = model.config.vocab_size;
        Ok(Sampler {
            hidden: h,
            table: host_f32(&model.input_table()?)?,
            w_hh: host_f32(model.param("gru.weight_hh_l0"))?,
            b_hh: host_f32(model.param("gru.bias_hh_l0"))?,
            dense_w: host_f32(model.param("dense.weight"))?,
            dense_b: host_f32(model.param("dense.bias"))?,
            h: vec![0.0; h],
            h_next: vec![0.0; h],
            gh: vec![0.0; 3 * h],
            gates: vec![0.0; 4 * h],
            logits: vec![0.0; v],
        })
    }

    /// Back to the zero state.
    pub fn reset(&mut self) {
        self.h.fill(0.0);
    }

    /// Feeds one character and returns the logits for the next.
    pub fn step(&mut self, id: u32) -> &[f32] {
        let h = self.hidden;
        let x = &self.table[id as usize * 3 * h..(id as usize + 1) * 3 * h];
        gemv(&mut self.gh, &self.w_hh, &self.h, None);
        gate_forward(
            &mut self.h_next,
            &mut self.gates,
            x,
            &self.gh,
            &self.b_hh,
            &self.h,
        );
        std::mem::swap(&mut self.h, &mut self.h_next);
        gemv(
            &mut self.logits,
            &self.dense_w,
            &self.h,
            Some(&self.dense_b),
        );
        &self.logits
    }
}

/// Draws an id from softmax(logits / temperature); temperature 0 takes the most likely id.
pub fn pick(logits: &[f32], temperature: f32, rng: &mut impl Rng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if temperature == 0.0 {
        return logits.iter().position(|&l| l == max).unwrap_or(0) as u32;
    }
    let weight = |l: f32| (((l - max) / temperature) as f64).exp();
    let total: f64 = logits.iter().map(|&l| weight(l)).sum();
    let mut u = rng.random::<f64>() * total;
    for (i, &l) in logits.iter().enumerate() {
        u -= weight(l);
        if u < 0.0 {
            return i as u32;
        }
    }
    // Rounding can leave a sliver of mass past the end: give it to the last likely id.
    logits.iter().rposition(|&l| weight(l) > 0.0).unwrap_or(0) as u32
}

/// Warms the state on `start`, then samples `length` characters, writing `start` and each
/// character to `out` as soon as it exists. An empty start primes the state with a newline.
pub fn generate(
    sampler: &mut Sampler,
    vocab: &Vocab,
    start: &str,
    length: usize,
    temperature: f32,
    rng: &mut impl Rng,
    out: &mut impl Write,
) -> Result<()> {
    let prime = if start.is_empty() {
        match vocab.id('\n') {
            Some(id) => vec![id],
            None => bail!("--start is empty and the vocabulary has no newline to start from; pass --start TEXT"),
        }
    } else {
        vocab.encode(start).map_err(|e| {
            anyhow::anyhow!("--start: {e}; use only characters the model was trained on")
        })?
    };
    sampler.reset();
    let mut logits: &[f32] = &[];
    for &id in &prime {
        logits = sampler.step(id);
    }
    out.write_all(start.as_bytes())?;
    out.flush()?;
    let mut buf = [0u8; 4];
    for _ in 0..length {
        let id = pick(logits, temperature, rng);
        out.write_all(vocab.char(id).encode_utf8(&mut buf).as_bytes())?;
        out.flush()?;
        logits = sampler.step(id);
    }
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn greedy_takes_the_argmax() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(pick(&[0.1, 3.0, -1.0, 2.9], 0.0, &mut rng), 1);
    }

    #[test]
    fn sampling_follows_the_tempered_softmax() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let mut rng = StdRng::seed_from_u64(42);
        let n = 40_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[pick(&logits, 1.0, &mut rng) as usize] += 1;
        }
        // p = (1/4, 3/4, 0)
        assert_eq!(counts[2], 0);
        assert!(
            (counts[1] as f64 / n as f64 - 0.75).abs() < 0.01,
            "{counts:?}"
        );
        // temperature 2 flattens: p1 / p0 = sqrt(3)
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[pick(&logits, 2.0, &mut rng) as usize] += 1;
        }
        let p1 = 3f64.sqrt() / (1.0 + 3f64.sqrt());
        assert!(
            (counts[1] as f64 / n as f64 - p1).abs() < 0.01,
            "{counts:?}"
        );
    }
}
