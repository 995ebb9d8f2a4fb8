//! Generation without autograd and without allocation per character. Each step is a table
//! lookup for the input projection, the recurrent product (the packed product, in f32 or
//! bf16, at any batch), the same gate kernel training uses, and the dense layer; then
//! sampling. A model on a GPU samples there
//! instead (`crate::kernels::cuda::GpuSampler`), with the same picking rule and random numbers.

use std::io::Write;

use anyhow::{bail, Result};
use candle_core::DType;
use rand::Rng;

use crate::data::vocab::Vocab;
use crate::device::Precision;
use crate::kernels::cpu as kernel;
use crate::kernels::cpu::bf16::{matmul_bf16, PackedBf16, Scratch};
use crate::kernels::cpu::blas::{matmul_packed, Packed, View};
use crate::model::job::Job;
use crate::model::Model;
use crate::ops::cells::{with_cell, Cell, RecurrentCell, StepForward};

/// A weight matrix W [rows, cols], packed once and applied to each sequence's input. Each
/// output of the packed product is one chain of multiply-adds whatever the batch (see
/// `blas::matmul_packed`), so a sequence's result is the same, bit for bit, whichever other
/// sequences share the step: a sample depends only on its own start, seed and options, which
/// lets a server batch unrelated requests together.
enum Weights {
    F32(Packed),
    /// bf16 operands, f32 sums (`--precision bf16`): half the bytes to stream per step.
    Bf16(PackedBf16, Scratch),
}

impl Weights {
    fn new(w: Vec<f32>, rows: usize, cols: usize, precision: Precision) -> Self {
        let view = View::rows(&w, rows, cols).t();
        match precision {
            Precision::Bf16 => Weights::Bf16(PackedBf16::new(view), Scratch::default()),
            _ => Weights::F32(Packed::new(view)),
        }
    }

    /// out[b] = W · x[b] (+ bias) for `batch` inputs.
    fn apply(&mut self, out: &mut [f32], x: &[f32], batch: usize, bias: Option<&[f32]>) {
        match self {
            Weights::F32(p) => {
                matmul_packed(&mut out[..batch * p.cols()], false, View::rows(x, batch, p.rows()), p)
            }
            Weights::Bf16(p, scratch) => {
                matmul_bf16(&mut out[..batch * p.cols()], &x[..batch * p.rows()], batch, p, scratch)
            }
        }
        if let Some(bias) = bias {
            for row in out[..batch * bias.len()].chunks_exact_mut(bias.len()) {
                for (o, b) in row.iter_mut().zip(bias) {
                    *o += b;
                }
            }
        }
    }
}

/// One recurrent layer's weights and state for up to `capacity` sequences.
struct LayerState {
    /// Layer 0: none (its input projections are rows of the table); deeper: W_ih and b_ih.
    w_ih: Option<(Weights, Vec<f32>)>,
    w_hh: Weights,
    b_hh: Vec<f32>,
    /// Input projections of this step, [rows, GH] (deeper layers).
    x: Vec<f32>,
    h: Vec<f32>,
    h_next: Vec<f32>,
    /// The state's other parts (an LSTM's c), [rows, E·H]; empty when the cell has none.
    extra: Vec<f32>,
    extra_next: Vec<f32>,
    gh: Vec<f32>,
}

/// Steps up to `capacity` independent sequences together. Sequences can join (at the zero
/// state) and leave between steps; the ones present are rows 0..rows().
pub struct Sampler {
    cell: Cell,
    capacity: usize,
    rows: usize,
    hidden: usize,
    vocab: usize,
    table: Vec<f32>,
    layers: Vec<LayerState>,
    dense: Weights,
    dense_b: Vec<f32>,
    /// One row's tape, which sampling does not keep.
    tape: Vec<f32>,
    logits: Vec<f32>,
}

/// Values per sequence of the state's parts beyond h (an LSTM's c).
fn extra_width(cell: Cell, hidden: usize) -> usize {
    (cell.state_parts() - 1) * hidden
}

fn host_f32(t: &candle_core::Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

impl Sampler {
    /// A sampler for `batch` independent sequences, all present at the zero state.
    pub fn new(model: &Model, batch: usize) -> Result<Self> {
        Sampler::with_precision(model, batch, Precision::F32)
    }

    /// [`Sampler::new`] with the products in `precision`: bf16, or f32 for any other (the
    /// caller has checked it with [`Precision::apply`]).
    pub fn with_precision(model: &Model, batch: usize, precision: Precision) -> Result<Self> {
        let (h, v, cell) = (model.config.rnn_units, model.config.vocab_size, model.config.cell);
        let g = cell.gates() * h;
        let e = extra_width(cell, h);
        let weights = |t: &candle_core::Tensor, rows: usize| -> Result<Weights> {
            Ok(Weights::new(host_f32(t)?, rows, h, precision))
        };
        let mut layers = Vec::new();
        for l in 0..model.config.layers {
            let p = model.layer(l);
            let w_ih = match l {
                0 => None,
                _ => Some((weights(&p.w_ih, g)?, host_f32(&p.b_ih)?)),
            };
            layers.push(LayerState {
                w_ih,
                w_hh: weights(&p.w_hh, g)?,
                b_hh: host_f32(&p.b_hh)?,
                x: vec![0.0; batch * g],
                h: vec![0.0; batch * h],
                h_next: vec![0.0; batch * h],
                extra: vec![0.0; batch * e],
                extra_next: vec![0.0; batch * e],
                gh: vec![0.0; batch * g],
            });
        }
        Ok(Sampler {
            cell,
            capacity: batch,
            rows: batch,
            hidden: h,
            vocab: v,
            table: host_f32(&model.input_table()?)?,
            layers,
            dense: weights(model.param("dense.weight"), v)?,
            dense_b: host_f32(model.param("dense.bias"))?,
            tape: vec![0.0; with_cell!(cell, C => C::TAPE) * h],
            logits: vec![0.0; batch * v],
        })
    }

    /// The sequences present.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Every sequence back to the zero state.
    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.h.fill(0.0);
            l.extra.fill(0.0);
        }
    }

    /// Keeps the sequences for which `keep(row)` is true, in their order, and drops the rest.
    /// The logits are stale until the next step.
    pub fn retain_rows(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let (h, e) = (self.hidden, extra_width(self.cell, self.hidden));
        let mut kept = 0;
        for row in 0..self.rows {
            if !keep(row) {
                continue;
            }
            if kept != row {
                for l in &mut self.layers {
                    l.h.copy_within(row * h..(row + 1) * h, kept * h);
                    l.extra.copy_within(row * e..(row + 1) * e, kept * e);
                }
            }
            kept += 1;
        }
        self.rows = kept;
    }

    /// Adds `n` sequences at the zero state after the present ones.
    pub fn add_rows(&mut self, n: usize) -> Result<()> {
        let total = self.rows.checked_add(n).filter(|&t| t <= self.capacity);
        let Some(total) = total else {
            bail!(
                "{} sequences are running and the sampler holds {}; cannot add {n}",
                self.rows,
                self.capacity
            )
        };
        let (h, e) = (self.hidden, extra_width(self.cell, self.hidden));
        for l in &mut self.layers {
            l.h[self.rows * h..total * h].fill(0.0);
            l.extra[self.rows * e..total * e].fill(0.0);
        }
        self.rows = total;
        Ok(())
    }

    /// The logits of the last step, [rows, V].
    pub fn logits(&self) -> &[f32] {
        &self.logits[..self.rows * self.vocab]
    }

    /// Feeds one character to each sequence present and returns the logits for the next,
    /// [rows, V].
    pub fn step(&mut self, ids: &[u32]) -> &[f32] {
        with_cell!(self.cell, C => self.step_cell::<C>(ids))
    }

    fn step_cell<C: RecurrentCell>(&mut self, ids: &[u32]) -> &[f32] {
        assert_eq!(ids.len(), self.rows, "one character per sequence");
        let (h, n) = (self.hidden, self.rows);
        let (g, e) = (C::GATES * h, C::EXTRA_STATE * h);
        let kernel = kernel::active();
        for l in 0..self.layers.len() {
            let (below, rest) = self.layers.split_at_mut(l);
            let layer = &mut rest[0];
            if let (Some((w_ih, b_ih)), Some(below)) = (&mut layer.w_ih, below.last()) {
                w_ih.apply(&mut layer.x, &below.h[..n * h], n, Some(b_ih));
            }
            layer.w_hh.apply(&mut layer.gh, &layer.h[..n * h], n, None);
            for (b, &id) in ids.iter().enumerate() {
                let x = match l {
                    0 => &self.table[id as usize * g..(id as usize + 1) * g],
                    _ => &layer.x[b * g..(b + 1) * g],
                };
                let step = StepForward {
                    x,
                    gh: &layer.gh[b * g..(b + 1) * g],
                    b_hh: &layer.b_hh,
                    h_prev: &layer.h[b * h..(b + 1) * h],
                    extra_prev: &layer.extra[b * e..(b + 1) * e],
                    h: &mut layer.h_next[b * h..(b + 1) * h],
                    extra: &mut layer.extra_next[b * e..(b + 1) * e],
                    tape: &mut self.tape,
                };
                C::forward(kernel, step);
            }
            std::mem::swap(&mut layer.h, &mut layer.h_next);
            std::mem::swap(&mut layer.extra, &mut layer.extra_next);
        }
        let top = &self.layers.last().expect("at least one layer").h[..n * h];
        self.dense.apply(&mut self.logits, top, n, Some(&self.dense_b));
        &self.logits[..n * self.vocab]
    }
}

/// How the next character is drawn from the logits.
pub struct Picker {
    /// 0 means greedy: always the most likely character.
    pub temperature: f32,
    /// Only the k most likely characters.
    pub top_k: Option<usize>,
    /// Only the most likely characters whose probabilities add up to at least p (nucleus).
    pub top_p: Option<f32>,
    /// (probability, id), reused from character to character.
    scratch: Vec<(f32, u32)>,
}

impl Picker {
    pub fn new(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Self {
        Picker { temperature, top_k, top_p, scratch: Vec::new() }
    }

    /// One draw per row of `logits` ([rows, vocab]), in row order, appended to `ids`.
    pub fn pick_rows(&mut self, logits: &[f32], vocab: usize, rng: &mut impl Rng, ids: &mut Vec<u32>) {
        for row in logits.chunks_exact(vocab) {
            ids.push(self.pick(row, rng));
        }
    }

    pub fn pick(&mut self, logits: &[f32], rng: &mut impl Rng) -> u32 {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if self.temperature == 0.0 {
            return logits.iter().position(|&l| l == max).unwrap_or(0) as u32;
        }
        let c = &mut self.scratch;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (((l - max) / self.temperature).exp(), i as u32)));
        if self.top_k.is_some() || self.top_p.is_some() {
            // Most likely first; ties keep the lower id first.
            c.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut keep = self.top_k.unwrap_or(c.len()).clamp(1, c.len());
            if let Some(p) = self.top_p {
                let total: f32 = c[..keep].iter().map(|x| x.0).sum();
                let mut running = 0.0;
                let nucleus = c[..keep].iter().take_while(|x| {
                    let inside = running < p * total;
                    running += x.0;
                    inside
                });
                keep = nucleus.count().max(1);
            }
            c.truncate(keep);
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

/// The sampler that runs: the CPU kernels, or the GPU's for a model whose weights are on a
/// GPU. Both draw with the same rule and the same random numbers in the same order.
pub enum Engine {
    Cpu(Sampler),
    #[cfg(feature = "cuda")]
    Gpu(crate::kernels::cuda::GpuSampler),
}

/// The GPU sampler's view of a model: the input table and each layer's weights.
#[cfg(feature = "cuda")]
fn gpu_weights(model: &Model) -> Result<crate::kernels::cuda::SamplerWeights> {
    use crate::kernels::cuda::{LayerWeights, SamplerWeights};
    let cell = model.config.cell;
    if !cell.on_gpu() {
        bail!("--cell {} has no GPU sampler yet; generate with --device cpu", cell.name());
    }
    let layers = (model.layers.iter().enumerate())
        .map(|(l, p)| LayerWeights {
            input: (l > 0).then(|| (p.w_ih.as_tensor().clone(), p.b_ih.as_tensor().clone())),
            w_hh: p.w_hh.as_tensor().clone(),
            b_hh: p.b_hh.as_tensor().clone(),
        })
        .collect();
    Ok(SamplerWeights {
        table: model.input_table()?,
        layers,
        dense_w: model.dense.weight.as_tensor().clone(),
        dense_b: model.dense.bias.as_tensor().clone(),
    })
}

impl Engine {
    pub fn new(model: &Model, batch: usize) -> Result<Self> {
        Engine::with_precision(model, batch, Precision::F32)
    }

    /// A sampler for `batch` sequences in `precision` (see [`Sampler::with_precision`]); a model
    /// on a GPU samples there, in the precision [`Precision::apply`] set.
    pub fn with_precision(model: &Model, batch: usize, precision: Precision) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if model.device().is_cuda() {
            return Ok(Engine::Gpu(crate::kernels::cuda::GpuSampler::new(gpu_weights(model)?, batch)?));
        }
        Ok(Engine::Cpu(Sampler::with_precision(model, batch, precision)?))
    }

    fn batch(&self) -> usize {
        match self {
            Engine::Cpu(s) => s.rows(),
            #[cfg(feature = "cuda")]
            Engine::Gpu(s) => s.batch(),
        }
    }

    /// Characters produced between writes of a streamed sample: each one on the CPU; on the
    /// GPU a chunk, so that the device is not waited for per character.
    fn chunk(&self) -> usize {
        match self {
            Engine::Cpu(_) => 1,
            #[cfg(feature = "cuda")]
            Engine::Gpu(_) => 256,
        }
    }

    /// From the zero state, feeds `prime` to every sequence.
    pub fn prime(&mut self, prime: &[u32]) -> Result<()> {
        let n = self.batch();
        match self {
            Engine::Cpu(s) => {
                s.reset();
                for &id in prime {
                    s.step(&vec![id; n]);
                }
            }
            #[cfg(feature = "cuda")]
            Engine::Gpu(s) => {
                s.reset()?;
                for &id in prime {
                    s.feed(&vec![id; n])?;
                }
            }
        }
        Ok(())
    }

    /// The next `steps` characters of every sequence, [steps, batch] ids, each drawn by
    /// `picker` and fed back.
    pub fn next(&mut self, steps: usize, picker: &mut Picker, rng: &mut impl Rng) -> Result<Vec<u32>> {
        let n = self.batch();
        match self {
            Engine::Cpu(s) => {
                // Reserved up front only up to a bound: `steps` comes from the user.
                let mut out = Vec::with_capacity(steps.saturating_mul(n).min(1 << 20));
                for _ in 0..steps {
                    let first = out.len();
                    picker.pick_rows(s.logits(), s.vocab, rng, &mut out);
                    s.step(&out[first..]);
                }
                Ok(out)
            }
            #[cfg(feature = "cuda")]
            Engine::Gpu(s) => {
                // The same draws, in the same order, as the CPU's picker makes.
                let uniforms: Vec<f32> = match picker.temperature {
                    0.0 => Vec::new(),
                    _ => (0..steps * n).map(|_| rng.random::<f32>()).collect(),
                };
                let top_k = picker.top_k.map_or(0, |k| k.max(1));
                Ok(s.sample(steps, picker.temperature, top_k, picker.top_p.unwrap_or(-1.0), &uniforms)?)
            }
        }
    }
}

/// Runs `job` on `engine` (sized for its samples): warms each sample's state on the start,
/// then draws until the job's length or stop strings end it. One sample is written as it is
/// produced, the start first; several are written one after the other, each under a header
/// line.
pub fn generate(engine: &mut Engine, vocab: &Vocab, job: &mut Job, out: &mut impl Write) -> Result<()> {
    let n = engine.batch();
    assert_eq!(n, job.samples(), "the engine is sized for the job's samples");
    engine.prime(job.prime())?;
    let streaming = n == 1;
    if streaming {
        out.write_all(job.start().as_bytes())?;
        out.flush()?;
    }
    let mut over = job.left() == 0;
    while !over {
        let steps = job.left().min(engine.chunk());
        let (picker, rng) = job.picker_and_rng();
        let ids = engine.next(steps, picker, rng)?;
        for step in ids.chunks_exact(n) {
            over = job.accept(step, vocab);
            if over {
                break;
            }
        }
        if streaming {
            for (_, text) in job.take_new_text(over) {
                out.write_all(text.as_bytes())?;
            }
            out.flush()?;
        }
    }
    if streaming {
        out.write_all(b"\n")?;
    }
    for (b, text) in job.texts().iter().enumerate().filter(|_| !streaming) {
        writeln!(out, "--- sample {} of {n} ---\n{text}", b + 1)?;
    }
    out.flush()?;
    Ok(())
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
