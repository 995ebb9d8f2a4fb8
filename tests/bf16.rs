//! `--precision bf16` on the CPU: the recurrent layers' outputs and gradients against the f32
//! path, in a process of their own (the precision is a process-wide setting). Training,
//! resuming, scoring and sampling in bf16 through the binary: tests/cli.rs.

use candle_core::{Device, Tensor, Var};
use charrnn::device::Precision;
use charrnn::model::Cell;
use charrnn::ops::recurrent::rnn_sequence;
use rand::{rngs::StdRng, Rng, SeedableRng};

mod common;

fn has_bf16() -> bool {
    let has = common::cpu_has("avx512_bf16");
    if !has {
        println!("this CPU lacks avx512_bf16: the bf16 paths cannot run here");
    }
    has
}

fn values(n: usize, scale: f32, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// The largest difference between `a` and `b`, relative to b's largest magnitude.
fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-30) as f64;
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max) / scale
}

/// A layer's outputs and the gradients of table, W_hh and b_hh for one weighted-sum loss, with
/// the products in `precision`.
fn layer_run(cell: Cell, precision: Precision, seed: u64) -> Vec<Tensor> {
    precision.apply(&Device::Cpu).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let (b, t, h, v) = (3, 7, 40, 5);
    let g = cell.gates() * h;
    let var = |shape: &[usize], scale, rng: &mut StdRng| {
        let n = shape.iter().product();
        Var::from_tensor(&Tensor::from_vec(values(n, scale, rng), shape, &Device::Cpu).unwrap()).unwrap()
    };
    let (table, w, bias) =
        (var(&[v, g], 1.5, &mut rng), var(&[g, h], 0.4, &mut rng), var(&[g], 0.3, &mut rng));
    let ids: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..v as u32)).collect();
    let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap();
    let weights = var(&[b, t, h], 1.0, &mut rng);
    let state0 = var(&[b, cell.state_parts() * h], 0.8, &mut rng).as_tensor().detach();
    let (out, _) = rnn_sequence(cell, &table, &ids, &w, &bias, Some(&state0), true).unwrap();
    let grads = (&out * weights.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    let mut all = vec![out.detach()];
    all.extend([&table, &w, &bias].map(|x| grads.get(x).unwrap().clone()));
    all
}

/// bf16 keeps 8 significant bits: each operand of a product rounds within 2^-8 (relative) and
/// each product of two within about 2^-7, so a step's recurrent product is within 2^-7 of
/// Σ|h·w|. The cells' gates are contractive (derivatives at most 1 in size, |W_hh| ≤ 0.4 here),
/// so a step passes earlier errors on at most undamped: after T steps the outputs are within
/// T·2^-7 of their scale, and the gradients, which add a backward sweep of T more products,
/// within 2T·2^-7.
#[test]
fn bf16_outputs_and_gradients_agree_with_f32_within_the_rounding_bound() {
    if !has_bf16() {
        return;
    }
    let steps = 7.0;
    for cell in [Cell::Gru, Cell::Lstm, Cell::Rnn] {
        let exact = layer_run(cell, Precision::F32, 5);
        let rounded = layer_run(cell, Precision::Bf16, 5);
        Precision::F32.apply(&Device::Cpu).unwrap();
        for (i, name) in ["outputs", "d table", "d W_hh", "d b_hh"].iter().enumerate() {
            let bound = if i == 0 { steps } else { 2.0 * steps } * 2f64.powi(-7);
            let d = max_rel_diff(&rounded[i], &exact[i]);
            assert!(
                d <= bound,
                "{cell:?} {name}: bf16 differs from f32 by {d:e} (relative), bound {bound:e}"
            );
            // And the bf16 products did run: f32 alone would agree to about 1e-6.
            assert!(d > 1e-5, "{cell:?} {name}: bf16 agrees with f32 to {d:e}; were the products f32?");
        }
    }
}
