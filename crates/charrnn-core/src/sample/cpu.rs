//! The CPU sampler: several sequences stepped together without autograd and without
//! allocation per character. Each step is a table lookup for the input projection, the
//! recurrent product (the packed product, in f32, bf16 or int8, at any batch), the same gate
//! kernel training uses, and the dense layer.

use std::ops::Range;
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::compute::{Compute, Precision};
use crate::kernels::cpu::bf16::{matmul_bf16, PackedBf16, Scratch};
use crate::kernels::cpu::blas::{matmul_packed, OutPtr, Packed, View};
use crate::kernels::cpu::int8::{matmul_int8, Activations, PackedInt8};
use crate::kernels::cpu::team::Team;
use crate::kernels::cpu::{Int8Kernel, Kernel};
use crate::model::{to_host, Model};
use crate::ops::cells::{with_cell, Cell, RecurrentCell, StepForward};

/// A weight matrix W [rows, cols], packed once and applied to each sequence's input. Each
/// output of the packed product is one chain of multiply-adds whatever the batch (see
/// `blas::matmul_packed`), so a sequence's result is the same, bit for bit, whichever other
/// sequences share the step: a sample depends only on its own start, seed and options, which
/// lets a server batch unrelated requests together.
enum Weights {
    /// f32 panels and the kernel that multiplies them.
    F32(Packed, Kernel),
    /// bf16 operands, f32 sums (`--precision bf16`): half the bytes to stream per step.
    Bf16(PackedBf16, Scratch),
    /// int8 weights and activations, exact integer sums (`--precision int8`): a quarter; its
    /// products shared out among the sampler's team.
    Int8(PackedInt8, Activations, Arc<Team>),
}

/// The arithmetic of the sampling products.
#[derive(Clone)]
enum Products {
    F32(Kernel),
    Bf16,
    Int8(Int8Kernel, Arc<Team>),
}

impl Products {
    /// As `compute` says; int8's with a team of this pool's size.
    fn of(compute: &Compute) -> Products {
        match compute.int8_kernel() {
            Some(kernel) => Products::Int8(kernel, Arc::new(Team::new(rayon::current_num_threads()))),
            None if compute.precision() == Precision::Bf16 => Products::Bf16,
            None => Products::F32(compute.kernel()),
        }
    }

    /// The team that shares the products (int8's).
    fn team(&self) -> Option<Arc<Team>> {
        match self {
            Products::Int8(_, team) => Some(team.clone()),
            _ => None,
        }
    }
}

impl Weights {
    fn new(w: Vec<f32>, rows: usize, cols: usize, products: &Products) -> Result<Self> {
        let view = View::rows(&w, rows, cols).t();
        Ok(match products {
            Products::Bf16 => Weights::Bf16(PackedBf16::new(view), Scratch::default()),
            Products::F32(kernel) => Weights::F32(Packed::new(view), *kernel),
            Products::Int8(kernel, team) => {
                Weights::Int8(PackedInt8::new(view, *kernel)?, Activations::default(), team.clone())
            }
        })
    }

    /// Bytes of the packed operand.
    fn bytes(&self) -> usize {
        match self {
            Weights::F32(p, _) => 4 * p.rows() * p.cols(),
            Weights::Bf16(p, _) => 2 * p.rows() * p.cols(),
            Weights::Int8(p, _, _) => p.bytes(),
        }
    }

    /// out[b] = W · x[b] (+ bias) for `batch` inputs.
    fn apply(&mut self, out: &mut [f32], x: &[f32], batch: usize, bias: Option<&[f32]>) {
        match self {
            Weights::F32(p, kernel) => {
                matmul_packed(*kernel, &mut out[..batch * p.cols()], false, View::rows(x, batch, p.rows()), p)
            }
            Weights::Bf16(p, scratch) => {
                matmul_bf16(&mut out[..batch * p.cols()], &x[..batch * p.rows()], batch, p, scratch)
            }
            Weights::Int8(p, scratch, team) => {
                matmul_int8(&mut out[..batch * p.cols()], &x[..batch * p.rows()], batch, p, scratch, team)
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
    /// The gate passes' instruction set (the products' is in their weights).
    kernel: Kernel,
    capacity: usize,
    rows: usize,
    hidden: usize,
    vocab: usize,
    table: Vec<f32>,
    layers: Vec<LayerState>,
    dense: Weights,
    dense_b: Vec<f32>,
    /// One row's tape per member of the team (one without), which sampling does not keep.
    tape: Vec<f32>,
    logits: Vec<f32>,
    /// Threads that share int8's products, waiting for them spinning, and its gate passes at
    /// batch > 1 (int8 only).
    team: Option<Arc<Team>>,
}

/// Values per sequence of the state's parts beyond h (an LSTM's c).
fn extra_width(cell: Cell, hidden: usize) -> usize {
    (cell.state_parts() - 1) * hidden
}

/// The first layer's input projection of every vocabulary entry, embedding · W_ihᵀ + b_ih,
/// [V, G·H], by the f32 packed product of `kernel`: the same arithmetic on every machine for a
/// kernel (the portable one's in a browser too), where a library product's would depend on the
/// CPU it found.
fn input_table(model: &Model, kernel: Kernel) -> Result<Vec<f32>> {
    let l0 = model.layer(0);
    let (g, e, v) = (l0.w_ih.dims2()?.0, model.config.embedding_dim, model.config.vocab_size);
    let mut w_ih = Weights::new(to_host(&l0.w_ih)?, g, e, &Products::F32(kernel))?;
    let mut table = vec![0.0; v * g];
    w_ih.apply(&mut table, &to_host(&model.embedding)?, v, Some(&to_host(&l0.b_ih)?));
    Ok(table)
}

impl Sampler {
    /// A sampler for `batch` independent sequences, all present at the zero state, its
    /// products and passes in the model's compute (bf16 or int8 products where it says so, else
    /// f32; the first layer's input table is f32 in every case).
    pub fn new(model: &Model, batch: usize) -> Result<Self> {
        let math = model.compute().cpu_math();
        let products = Products::of(model.compute());
        let (h, v, cell) = (model.config.rnn_units, model.config.vocab_size, model.config.cell);
        let g = cell.gates() * h;
        let e = extra_width(cell, h);
        let weights = |t: &candle_core::Tensor, rows: usize| -> Result<Weights> {
            Weights::new(to_host(t)?, rows, h, &products)
        };
        let team = products.team();
        let mut layers = Vec::new();
        for l in 0..model.config.layers {
            let p = model.layer(l);
            let w_ih = match l {
                0 => None,
                _ => Some((weights(&p.w_ih, g)?, to_host(&p.b_ih)?)),
            };
            layers.push(LayerState {
                w_ih,
                w_hh: weights(&p.w_hh, g)?,
                b_hh: to_host(&p.b_hh)?,
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
            kernel: math.kernel,
            capacity: batch,
            rows: batch,
            hidden: h,
            vocab: v,
            table: input_table(model, math.kernel)?,
            layers,
            dense: weights(model.param("dense.weight"), v)?,
            dense_b: to_host(model.param("dense.bias"))?,
            tape: vec![0.0; with_cell!(cell, C => C::TAPE) * h * team.as_ref().map_or(1, |t| t.members())],
            logits: vec![0.0; batch * v],
            team,
        })
    }

    /// Bytes of the weights it holds (packed products, the input table, biases); as
    /// [`sampler_bytes`] computes them.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.w_hh.bytes()
                    + l.w_ih.as_ref().map_or(0, |(w, b)| w.bytes() + 4 * b.len())
                    + 4 * l.b_hh.len()
            })
            .sum();
        layers + self.dense.bytes() + 4 * (self.dense_b.len() + self.table.len())
    }

    /// The sequences present.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The most sequences it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Logits per sequence.
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
        let kernel = self.kernel;
        for l in 0..self.layers.len() {
            let (below, rest) = self.layers.split_at_mut(l);
            let layer = &mut rest[0];
            if let (Some((w_ih, b_ih)), Some(below)) = (&mut layer.w_ih, below.last()) {
                w_ih.apply(&mut layer.x, &below.h[..n * h], n, Some(b_ih));
            }
            layer.w_hh.apply(&mut layer.gh, &layer.h[..n * h], n, None);
            let (table, x, gh, b_hh, h_prev, extra_prev) =
                (&self.table, &layer.x, &layer.gh, &layer.b_hh, &layer.h, &layer.extra);
            // The gate passes of `rows`, into those rows' part of the next state.
            let gate_rows =
                |rows: Range<usize>, tape: &mut [f32], h_next: &mut [f32], extra_next: &mut [f32]| {
                    for (i, b) in rows.enumerate() {
                        let id = ids[b] as usize;
                        let step = StepForward {
                            x: if l == 0 { &table[id * g..(id + 1) * g] } else { &x[b * g..(b + 1) * g] },
                            gh: &gh[b * g..(b + 1) * g],
                            b_hh,
                            h_prev: &h_prev[b * h..(b + 1) * h],
                            extra_prev: &extra_prev[b * e..(b + 1) * e],
                            h: &mut h_next[i * h..(i + 1) * h],
                            extra: &mut extra_next[i * e..(i + 1) * e],
                            tape,
                        };
                        C::forward(kernel, step);
                    }
                };
            let tape = self.tape.len() / self.team.as_ref().map_or(1, |t| t.members());
            match self.team.as_ref().filter(|_| n > 1) {
                // Rows are independent: the team's members take a share each (a row's result is
                // the same whoever computes it).
                Some(team) => {
                    let (hs, es) = (OutPtr(layer.h_next.as_mut_ptr()), OutPtr(layer.extra_next.as_mut_ptr()));
                    let tapes = OutPtr(self.tape.as_mut_ptr());
                    team.run(&|m, members| {
                        let rows = crate::collective::share(n, m, members);
                        // SAFETY: the members' rows are disjoint and lie below n (≤ capacity), so
                        // these are disjoint parts of h_next and extra_next; tape m is member m's
                        // own part of `tape`, which holds one per member.
                        let (h_next, extra_next, tape) = unsafe {
                            (
                                std::slice::from_raw_parts_mut(hs.at(rows.start * h), rows.len() * h),
                                std::slice::from_raw_parts_mut(es.at(rows.start * e), rows.len() * e),
                                std::slice::from_raw_parts_mut(tapes.at(m * tape), tape),
                            )
                        };
                        gate_rows(rows, tape, h_next, extra_next);
                    });
                }
                None => gate_rows(
                    0..n,
                    &mut self.tape[..tape],
                    &mut layer.h_next[..n * h],
                    &mut layer.extra_next[..n * e],
                ),
            }
            std::mem::swap(&mut layer.h, &mut layer.h_next);
            std::mem::swap(&mut layer.extra, &mut layer.extra_next);
        }
        let top = &self.layers.last().expect("at least one layer").h[..n * h];
        self.dense.apply(&mut self.logits, top, n, Some(&self.dense_b));
        &self.logits[..n * self.vocab]
    }
}

/// Bytes of the weights a sampler of `config` holds in `precision` ([`Sampler::weight_bytes`],
/// without building one): each packed product, the f32 input table and the biases.
pub fn sampler_bytes(config: &crate::model::Config, precision: Precision) -> u64 {
    let (h, v) = (config.rnn_units as u64, config.vocab_size as u64);
    let gh = config.cell.gates() as u64 * h;
    // A product of k inputs and n outputs, packed as `Weights::new` packs it.
    let product = |k: u64, n: u64| match precision {
        Precision::Bf16 => 2 * k * n,
        Precision::Int8 => {
            let (panel, group) = (crate::kernels::cpu::int8::PANEL as u64, 4);
            n.div_ceil(panel) * panel * k.div_ceil(group) * group + 8 * n
        }
        Precision::F32 | Precision::Tf32 => 4 * k * n,
    };
    let layers = config.layers as u64;
    let recurrent = layers * (product(h, gh) + 4 * gh);
    let inputs = (layers - 1) * (product(h, gh) + 4 * gh);
    recurrent + inputs + product(h, v) + 4 * v + 4 * v * gh
}

/// Where one batch-1 step's time goes, each part timed alone over many repetitions (µs).
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepParts {
    /// The whole step.
    pub step_us: f64,
    /// The recurrent products (every layer's, and deeper layers' input products).
    pub recurrent_us: f64,
    /// The output layer's product.
    pub output_us: f64,
    /// The gate passes.
    pub gates_us: f64,
    /// Drawing the next character from the logits.
    pub pick_us: f64,
    /// One bare call of the team that shares int8's products (their synchronisation), where
    /// there is one.
    pub sync_us: Option<f64>,
    /// Reading the int8 recurrent matrices' bytes once, by one core and by the team: the
    /// machine's floor for the recurrent products (int8 only).
    pub read_one_core_us: Option<f64>,
    /// The same by the team's members together.
    pub read_team_us: Option<f64>,
}

fn micros(reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..reps / 10 {
        f();
    }
    let t0 = std::time::Instant::now();
    for _ in 0..reps {
        f();
    }
    t0.elapsed().as_secs_f64() / reps as f64 * 1e6
}

impl Sampler {
    /// Times a batch-1 step of `model` and its parts ([`StepParts`]), `reps` times each.
    pub fn step_parts(model: &Model, reps: usize) -> Result<StepParts> {
        let mut s = Sampler::new(model, 1)?;
        let (v, h) = (s.vocab, s.hidden);
        let mut id = 0u32;
        let step_us = micros(reps, || {
            id = (id + 1) % v as u32;
            s.step(&[id]);
        });
        let team = s.team.clone();
        let mut recurrent_us = 0.0;
        let mut gates_us = 0.0;
        let (cell, kernel, table) = (s.cell, s.kernel, &s.table);
        let tape = &mut s.tape[..with_cell!(cell, C => C::TAPE) * h];
        for layer in &mut s.layers {
            recurrent_us += micros(reps, || layer.w_hh.apply(&mut layer.gh, &layer.h, 1, None));
            if let Some((w_ih, b_ih)) = &mut layer.w_ih {
                recurrent_us += micros(reps, || w_ih.apply(&mut layer.x, &layer.h, 1, Some(b_ih)));
            }
            let (g, e) = (cell.gates() * h, extra_width(cell, h));
            gates_us += micros(reps, || {
                let step = StepForward {
                    x: &table[..g],
                    gh: &layer.gh[..g],
                    b_hh: &layer.b_hh,
                    h_prev: &layer.h[..h],
                    extra_prev: &layer.extra[..e],
                    h: &mut layer.h_next[..h],
                    extra: &mut layer.extra_next[..e],
                    tape: &mut *tape,
                };
                with_cell!(cell, C => C::forward(kernel, step))
            });
        }
        let top = &s.layers.last().expect("at least one layer").h;
        let output_us = micros(reps, || s.dense.apply(&mut s.logits, top, 1, Some(&s.dense_b)));
        let mut picker = super::Picker::new(1.0, None, None);
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        let pick_us = micros(reps, || {
            std::hint::black_box(picker.pick(&s.logits[..v], &mut rng));
        });
        let sync_us = team.as_ref().map(|t| micros(reps, || t.run(&|_, _| ())));
        // Bytes as many as the int8 recurrent matrices', read a cache line at a time.
        let int8_bytes: usize = s
            .layers
            .iter()
            .filter_map(|l| match &l.w_hh {
                Weights::Int8(p, _, _) => Some(p.bytes() + l.w_ih.as_ref().map_or(0, |(w, _)| w.bytes())),
                _ => None,
            })
            .sum();
        let (read_one_core_us, read_team_us) = match (&team, int8_bytes) {
            (Some(team), bytes) if bytes > 0 => {
                let data = vec![1u8; bytes];
                let read = |part: &[u8]| part.chunks(64).map(|c| c[0] as u64).sum::<u64>();
                let one = micros(reps / 10 + 1, || {
                    std::hint::black_box(read(&data));
                });
                let all = micros(reps / 10 + 1, || {
                    team.run(&|m, n| {
                        std::hint::black_box(read(&data[bytes * m / n..bytes * (m + 1) / n]));
                    })
                });
                (Some(one), Some(all))
            }
            _ => (None, None),
        };
        Ok(StepParts {
            step_us,
            recurrent_us,
            output_us,
            gates_us,
            pick_us,
            sync_us,
            read_one_core_us,
            read_team_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;
    use crate::model::{Cell, Config};

    #[test]
    fn the_planned_bytes_are_the_samplers_own() {
        for (cell, layers) in [(Cell::Gru, 1), (Cell::Lstm, 2), (Cell::Rnn, 3)] {
            let config = Config::gru(13, 8, 70).with_layers(layers).with_cell(cell);
            let model =
                Model::new_random(config.clone(), DType::F32, &Compute::cpu(), &mut StdRng::seed_from_u64(1))
                    .unwrap();
            for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
                let Ok(compute) = Compute::cpu().with_precision(precision) else { continue };
                let sampler = Sampler::new(&model.with_compute(compute).unwrap(), 1).unwrap();
                assert_eq!(
                    sampler.weight_bytes() as u64,
                    sampler_bytes(&config, precision),
                    "{cell:?} {layers} {precision}"
                );
            }
        }
    }
}
