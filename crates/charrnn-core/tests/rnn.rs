//! The fused recurrent layers (every cell) against a reference composition of plain candle
//! ops, against finite differences, and against the batch-1 sampler; bf16 against f32 within
//! its rounding bound; models of different kernels and precisions side by side; and a loss
//! that falls on a tiny corpus.

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use charrnn_core::compute::{Compute, Precision};
use charrnn_core::data::Sequences;
use charrnn_core::kernels::cpu::{self as kernel, Kernel};
use charrnn_core::model::{ids_tensor, loss, Cell, Config, Dropout, Model, Pass};
use charrnn_core::ops::recurrent::rnn_sequence;
use charrnn_core::optim::Adam;
use charrnn_core::sample::{generate, Engine, Sampler};
use charrnn_core::sample::{Job, SampleOptions};
use charrnn_core::train::{train_step, StepOptions};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// The CPU with the kernel `CHARRNN_KERNEL` names (CI runs these tests once per kernel), in f32.
fn compute() -> Compute {
    Compute::cpu().with_kernel(Kernel::from_env().unwrap()).unwrap()
}

fn sigmoid(x: &Tensor) -> Tensor {
    (x.neg().unwrap().exp().unwrap() + 1.0).unwrap().recip().unwrap()
}

/// PyTorch's LSTM equations, step by step, with candle's own ops and autograd. Returns every h
/// and the final state (h then c).
fn reference_lstm(
    x_proj: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    state0: Option<&Tensor>,
) -> (Tensor, Tensor) {
    let (b, t, g4) = x_proj.dims3().unwrap();
    let h = g4 / 4;
    let zeros = Tensor::zeros((b, h), x_proj.dtype(), x_proj.device()).unwrap();
    let (mut hs, mut cs) = match state0 {
        Some(s) => (s.narrow(1, 0, h).unwrap(), s.narrow(1, h, h).unwrap()),
        None => (zeros.clone(), zeros),
    };
    let mut outs = Vec::new();
    for s in 0..t {
        let a = (x_proj.i((.., s, ..)).unwrap()
            + hs.matmul(&w_hh.t().unwrap()).unwrap().broadcast_add(b_hh).unwrap())
        .unwrap();
        let part = |k: usize| a.narrow(1, k * h, h).unwrap();
        let (i, f, g, o) = (sigmoid(&part(0)), sigmoid(&part(1)), part(2).tanh().unwrap(), sigmoid(&part(3)));
        cs = ((&f * &cs).unwrap() + (&i * &g).unwrap()).unwrap();
        hs = (&o * cs.tanh().unwrap()).unwrap();
        outs.push(hs.clone());
    }
    (Tensor::stack(&outs, 1).unwrap(), Tensor::cat(&[&hs, &cs], 1).unwrap())
}

/// PyTorch's nn.RNN (tanh) equations, step by step, with candle's own ops and autograd.
fn reference_elman(x_proj: &Tensor, w_hh: &Tensor, b_hh: &Tensor, h0: Option<&Tensor>) -> Tensor {
    let (b, t, h) = x_proj.dims3().unwrap();
    let mut state = match h0 {
        Some(s) => s.clone(),
        None => Tensor::zeros((b, h), x_proj.dtype(), x_proj.device()).unwrap(),
    };
    let mut outs = Vec::new();
    for s in 0..t {
        let gh = state.matmul(&w_hh.t().unwrap()).unwrap().broadcast_add(b_hh).unwrap();
        state = (x_proj.i((.., s, ..)).unwrap() + gh).unwrap().tanh().unwrap();
        outs.push(state.clone());
    }
    Tensor::stack(&outs, 1).unwrap()
}

/// PyTorch's GRU equations, step by step, with candle's own ops and autograd.
fn reference_gru(x_proj: &Tensor, w_hh: &Tensor, b_hh: &Tensor, h0: Option<&Tensor>) -> Tensor {
    let (b, t, g3) = x_proj.dims3().unwrap();
    let h = g3 / 3;
    let mut state = match h0 {
        Some(s) => s.clone(),
        None => Tensor::zeros((b, h), x_proj.dtype(), x_proj.device()).unwrap(),
    };
    let mut outs = Vec::new();
    for s in 0..t {
        let x = x_proj.i((.., s, ..)).unwrap();
        let gh = state.matmul(&w_hh.t().unwrap()).unwrap().broadcast_add(b_hh).unwrap();
        let part = |m: &Tensor, k: usize| m.narrow(1, k * h, h).unwrap();
        let r = sigmoid(&(part(&x, 0) + part(&gh, 0)).unwrap());
        let z = sigmoid(&(part(&x, 1) + part(&gh, 1)).unwrap());
        let n = (part(&x, 2) + (&r * part(&gh, 2)).unwrap()).unwrap().tanh().unwrap();
        // h' = (1 - z) n + z h = n + z (h - n)
        state = (&n + (&z * (&state - &n).unwrap()).unwrap()).unwrap();
        outs.push(state.clone());
    }
    Tensor::stack(&outs, 1).unwrap()
}

fn random(shape: &[usize], scale: f64, dtype: DType, rng: &mut StdRng) -> Var {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap()
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

fn fused_and_reference(cell: Cell, dtype: DType, tol_fwd: f64, tol_grad: f64, with_state: bool) {
    let mut rng = StdRng::seed_from_u64(11);
    let (b, t, h, v) = (3, 7, 20, 5);
    let g = cell.gates() * h;
    let table = random(&[v, g], 1.5, dtype, &mut rng);
    let id_values: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..v as u32)).collect();
    let ids = Tensor::from_vec(id_values, (b, t), &Device::Cpu).unwrap();
    let w = random(&[g, h], 0.4, dtype, &mut rng);
    let bias = random(&[g], 0.3, dtype, &mut rng);
    // A loss that weighs every output differently, so each output's gradient matters.
    let weights = random(&[b, t, h], 1.0, dtype, &mut rng);

    // An initial state, as truncated backpropagation carries it: a constant.
    let state0 =
        with_state.then(|| random(&[b, cell.state_parts() * h], 0.8, dtype, &mut rng).as_tensor().detach());
    let (fused, fused_final) =
        rnn_sequence(&compute(), cell, &table, &ids, &w, &bias, state0.as_ref(), true).unwrap();
    let x = table.index_select(&ids.flatten_all().unwrap(), 0).unwrap().reshape((b, t, g)).unwrap();
    let (reference, reference_final) = match cell {
        Cell::Gru => {
            let out = reference_gru(&x, &w, &bias, state0.as_ref());
            let last = out.i((.., t - 1, ..)).unwrap();
            (out, last)
        }
        Cell::Lstm => reference_lstm(&x, &w, &bias, state0.as_ref()),
        Cell::Rnn => {
            let out = reference_elman(&x, &w, &bias, state0.as_ref());
            let last = out.i((.., t - 1, ..)).unwrap();
            (out, last)
        }
    };
    let fwd = max_rel_diff(&fused, &reference);
    assert!(fwd <= tol_fwd, "{cell:?}: forward differs by {fwd:e} (relative)");
    let last = max_rel_diff(&fused_final, &reference_final);
    assert!(last <= tol_fwd, "{cell:?}: final state differs by {last:e} (relative)");

    let grads_of = |out: &Tensor| (out * weights.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    let gf = grads_of(&fused);
    let gr = grads_of(&reference);
    for (name, v) in [("table", &table), ("w_hh", &w), ("b_hh", &bias)] {
        let d = max_rel_diff(gf.get(v).unwrap(), gr.get(v).unwrap());
        assert!(d <= tol_grad, "{cell:?}: gradient of {name} differs by {d:e} (relative)");
    }
}

#[test]
fn fused_layers_match_the_reference_composition_f64() {
    for cell in [Cell::Gru, Cell::Lstm, Cell::Rnn] {
        fused_and_reference(cell, DType::F64, 1e-12, 1e-10, false);
        fused_and_reference(cell, DType::F64, 1e-12, 1e-10, true);
    }
}

#[test]
fn fused_layers_match_the_reference_composition_f32() {
    for cell in [Cell::Gru, Cell::Lstm, Cell::Rnn] {
        fused_and_reference(cell, DType::F32, 1e-5, 1e-4, false);
        fused_and_reference(cell, DType::F32, 1e-5, 1e-4, true);
    }
}

fn tiny_model(dtype: DType, seed: u64) -> Model {
    let mut rng = StdRng::seed_from_u64(seed);
    Model::new_random(Config::gru(7, 5, 6), dtype, &compute(), &mut rng).unwrap()
}

/// Every parameter of the whole model (embedding, recurrent layers, dense) against central
/// differences: one layer as the tutorial, and two stacked layers with dropout between them;
/// every cell.
#[test]
fn model_gradients_match_finite_differences_f64() {
    for cell in [Cell::Gru, Cell::Lstm, Cell::Rnn] {
        check_finite_differences(cell, 1, Dropout::NONE, false);
        check_finite_differences(cell, 2, Dropout::output(0.3), false);
    }
}

/// The same with each regulariser on (its masks fixed by the seed), alone and all together,
/// and with the output weight tied to the embedding: the gradient flows through the masked
/// recurrent matrix into W_hh, through the per-sequence masks, through the dropped embedding
/// rows, and into the one tied matrix from both of its uses.
#[test]
fn regularised_gradients_match_finite_differences_f64() {
    let all = Dropout { output: 0.2, weight: 0.4, locked: 0.3, embedding: 0.3 };
    for (dropout, tied) in [
        (Dropout { weight: 0.4, ..Dropout::NONE }, false),
        (Dropout { locked: 0.3, ..Dropout::NONE }, false),
        (Dropout { embedding: 0.3, ..Dropout::NONE }, false),
        (Dropout::NONE, true),
        (all, true),
    ] {
        for cell in [Cell::Gru, Cell::Lstm] {
            check_finite_differences(cell, 2, dropout, tied);
        }
    }
}

fn check_finite_differences(cell: Cell, layers: usize, dropout: Dropout, tied: bool) {
    let mut rng = StdRng::seed_from_u64(3);
    // A one-gate cell has a third of a GRU's weights per unit; a wider layer gives the check
    // as many to test.
    let hidden = if cell.gates() == 1 { 8 } else { 6 };
    let embedding = if tied { hidden } else { 5 };
    let config = Config::gru(7, embedding, hidden).with_layers(layers).with_cell(cell);
    let mut model = Model::new_random(config, DType::F64, &compute(), &mut rng).unwrap();
    if tied {
        model.tie().unwrap();
    }
    // Make the zero-initialised biases non-zero so their gradients are exercised.
    for (name, _) in model.config.parameter_shapes().into_iter().filter(|(n, _)| n.contains("bias")) {
        let p = model.param(&name);
        let n = p.dims()[0];
        let v: Vec<f64> = (0..n).map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.05).collect();
        p.set(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap();
    }
    let (b, t) = (2, 5);
    let inputs = ids_tensor(&[0, 3, 6, 1, 1, 2, 5, 4, 0, 6], b, t, &Device::Cpu).unwrap();
    let targets = [3, 6, 1, 1, 2, 5, 4, 0, 6, 2];
    // The same dropout masks (same seed) in every evaluation.
    let pass = Pass::Train { dropout, seed: 9, first_row: 0 };
    let loss_value = || model.loss(&inputs, &targets, &pass).unwrap().to_scalar::<f64>().unwrap();
    let l = model.loss(&inputs, &targets, &pass).unwrap();
    if dropout != Dropout::NONE {
        let plain = model.loss(&inputs, &targets, &Pass::Eval).unwrap().to_scalar::<f64>().unwrap();
        assert_ne!(l.to_scalar::<f64>().unwrap(), plain, "{dropout:?} must change the loss");
    }
    let grads = l.backward().unwrap();
    let eps = 1e-6;
    let mut checked = 0;
    for (name, var) in model.trained() {
        let analytic = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let original = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let shape = var.dims().to_vec();
        for i in (0..original.len()).step_by(original.len().div_ceil(12)) {
            let at = |delta: f64| {
                let mut v = original.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, shape.clone(), &Device::Cpu).unwrap()).unwrap();
                loss_value()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(original.clone(), shape.clone(), &Device::Cpu).unwrap()).unwrap();
            let err = (numeric - analytic[i]).abs();
            assert!(
                err <= 1e-7 + 1e-5 * numeric.abs(),
                "{cell:?} {dropout:?} tied {tied} {name}[{i}]: finite difference {numeric:e}, backward {:e}",
                analytic[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 50 * layers);
}

/// The sampler, carrying its state, reproduces the full-sequence forward: at batch 1 (its
/// matrix-vector path) and at batch 3 (its packed-product path).
#[test]
fn stepwise_sampling_matches_the_sequence_forward() {
    for cell in [Cell::Gru, Cell::Lstm, Cell::Rnn] {
        for layers in [1, 3] {
            for batch in [1, 3] {
                stepwise_matches(cell, layers, batch);
            }
        }
    }
}

fn stepwise_matches(cell: Cell, layers: usize, batch: usize) {
    let (vocab, steps) = (11, 40);
    let mut rng = StdRng::seed_from_u64(5);
    let config = Config::gru(vocab, 8, 48).with_layers(layers).with_cell(cell);
    let model = Model::new_random(config, DType::F32, &compute(), &mut rng).unwrap();
    let ids: Vec<u32> = (0..batch * steps).map(|_| rng.random_range(0..vocab as u32)).collect();
    let logits = model.forward(&ids_tensor(&ids, batch, steps, &Device::Cpu).unwrap(), &Pass::Eval).unwrap();
    assert_eq!(logits.dims(), &[batch, steps, vocab]);
    let logits = logits.to_vec3::<f32>().unwrap();
    let mut sampler = Sampler::new(&model, batch).unwrap();
    let mut worst = 0.0f32;
    for t in 0..steps {
        let column: Vec<u32> = (0..batch).map(|b| ids[b * steps + t]).collect();
        let step = sampler.step(&column);
        for (b, row) in step.chunks_exact(vocab).enumerate() {
            for (a, want) in row.iter().zip(&logits[b][t]) {
                worst = worst.max((a - want).abs());
            }
        }
    }
    assert!(worst <= 1e-5, "{cell:?}, {layers} layer(s), batch {batch}: max abs difference {worst}");
}

/// Sequences join and leave a sampler between steps; each one's logits are, bit for bit, what
/// it gets alone, whoever shares its steps — in f32 and in int8 (whose upper layer's input
/// product and gate passes are shared out among its team's threads).
#[test]
fn sampler_rows_join_and_leave_without_touching_each_other() {
    for (cell, precision) in [
        (Cell::Gru, Precision::F32),
        (Cell::Lstm, Precision::F32),
        (Cell::Gru, Precision::Int8),
        (Cell::Lstm, Precision::Int8),
    ] {
        let (vocab, steps) = (11, 24);
        let mut rng = StdRng::seed_from_u64(8);
        let config = Config::gru(vocab, 8, 40).with_layers(2).with_cell(cell);
        let compute = compute().with_precision(precision).unwrap();
        let model = Model::new_random(config, DType::F32, &compute, &mut rng).unwrap();
        let inputs: Vec<Vec<u32>> =
            (0..3).map(|_| (0..steps).map(|_| rng.random_range(0..vocab as u32)).collect()).collect();
        let alone = |ids: &[u32]| -> Vec<Vec<f32>> {
            let mut s = Sampler::new(&model, 1).unwrap();
            ids.iter().map(|&id| s.step(&[id]).to_vec()).collect()
        };
        // Sequence 0 runs throughout; 1 leaves after step 10; 2 joins at step 5.
        let mut shared = Sampler::new(&model, 3).unwrap();
        shared.retain_rows(|row| row < 2);
        let mut present = vec![0usize, 1];
        let mut got = [Vec::new(), Vec::new(), Vec::new()];
        for t in 0..steps {
            if t == 5 {
                shared.add_rows(1).unwrap();
                present.push(2);
            }
            if t == 11 {
                shared.retain_rows(|row| present[row] != 1);
                present.retain(|&s| s != 1);
            }
            let ids: Vec<u32> = present.iter().map(|&s| inputs[s][t - if s == 2 { 5 } else { 0 }]).collect();
            let logits = shared.step(&ids).to_vec();
            for (row, &s) in present.iter().enumerate() {
                got[s].push(logits[row * vocab..(row + 1) * vocab].to_vec());
            }
        }
        assert!(shared.add_rows(2).is_err(), "past the capacity");
        assert_eq!(got[0], alone(&inputs[0]), "{cell:?} {precision}: the sequence present throughout");
        assert_eq!(got[1], alone(&inputs[1][..11]), "{cell:?} {precision}: the one that left");
        assert_eq!(got[2], alone(&inputs[2][..steps - 5]), "{cell:?} {precision}: the one that joined");
    }
}

/// The fused output layer and loss against candle's composition (matmul, log-softmax, gather).
#[test]
fn fused_loss_matches_the_composed_one() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let mut rng = StdRng::seed_from_u64(21);
        let model = Model::new_random(Config::gru(13, 6, 24), dtype, &compute(), &mut rng).unwrap();
        model.param("dense.bias").set(&random(&[13], 0.5, dtype, &mut rng)).unwrap();
        let ids: Vec<u32> = (0..30).map(|_| rng.random_range(0..13)).collect();
        let targets: Vec<u32> = (0..30).map(|_| rng.random_range(0..13)).collect();
        let inputs = ids_tensor(&ids, 3, 10, &Device::Cpu).unwrap();
        let pass = Pass::Train { dropout: Dropout::output(0.0), seed: 0, first_row: 0 };
        let fused = model.loss(&inputs, &targets, &pass).unwrap();
        let composed = loss(
            &model.forward(&inputs, &pass).unwrap(),
            &ids_tensor(&targets, 3, 10, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let d = max_rel_diff(&fused, &composed);
        assert!(d <= tol, "{dtype:?}: loss differs by {d:e}");
        let (gf, gc) = (fused.backward().unwrap(), composed.backward().unwrap());
        for (name, var) in model.named() {
            let d = max_rel_diff(gf.get(var.as_tensor()).unwrap(), gc.get(var.as_tensor()).unwrap());
            assert!(d <= 10.0 * tol, "{dtype:?}: gradient of {name} differs by {d:e}");
        }
    }
}

#[test]
fn forward_shape_is_batch_time_vocab() {
    let model = tiny_model(DType::F32, 1);
    let ids = ids_tensor(&[1; 4 * 9], 4, 9, &Device::Cpu).unwrap();
    assert_eq!(model.forward(&ids, &Pass::Eval).unwrap().dims(), &[4, 9, 7]);
}

#[test]
fn loss_falls_on_a_tiny_repetitive_corpus() {
    for cell in [Cell::Gru, Cell::Lstm, Cell::Rnn] {
        loss_falls(cell);
    }
}

fn loss_falls(cell: Cell) {
    let text = "abcdefgh".repeat(60);
    let vocab = charrnn_core::data::vocab::Vocab::from_text(&text);
    let ids = vocab.encode(&text).unwrap();
    let seqs = Sequences::new(&ids, 16);
    let mut rng = StdRng::seed_from_u64(9);
    let config = Config::gru(vocab.len(), 8, 32).with_cell(cell);
    let model = Model::new_random(config, DType::F32, &compute(), &mut rng).unwrap();
    let mut adam = Adam::new(model.parameters()).unwrap();
    let initial = (vocab.len() as f32).ln();
    let mut last = f32::INFINITY;
    for step in 0..40 {
        let idx: Vec<usize> = (0..8).map(|k| (step * 8 + k) % seqs.len()).collect();
        last = train_step(&model, &mut adam, &seqs.batch(&idx), &StepOptions::plain(1e-2)).unwrap().0;
    }
    assert!(last < initial / 2.0, "{cell:?}: loss {last} after 40 steps, ln(V) = {initial}");
    // and the trained model has really learnt the cycle: greedy continuation of "abc"
    let greedy = SampleOptions { temperature: 0.0, ..SampleOptions::new("abc", 10) };
    let run = |options: &SampleOptions| {
        let mut engine = Engine::new(&model, &vocab, options.num_samples).unwrap();
        let mut out = Vec::new();
        generate(&mut engine, Job::new(&vocab, options).unwrap(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    assert_eq!(run(&greedy), "abcdefghabcde\n", "{cell:?}");
    // Several samples at once agree with the single one.
    let text = run(&SampleOptions { num_samples: 3, ..greedy.clone() });
    assert_eq!(text.matches("abcdefghabcde\n").count(), 3, "{text}");
    // A stop string ends each sample, and is kept when asked.
    let stop = SampleOptions { stop: vec!["fg".into(), "ha".into()], ..greedy.clone() };
    assert_eq!(run(&stop), "abcde\n", "{cell:?}");
    assert_eq!(run(&SampleOptions { include_stop: true, ..stop }), "abcdefg\n", "{cell:?}");
    assert!(text.starts_with("--- sample 1 of 3 ---\n"), "{text}");
}

#[test]
fn backward_without_a_training_forward_is_an_error_not_a_silent_zero() {
    let mut rng = StdRng::seed_from_u64(2);
    let table = random(&[3, 6], 1.0, DType::F32, &mut rng);
    let ids = Tensor::new(&[[0u32, 2]], &Device::Cpu).unwrap();
    let w = random(&[6, 2], 1.0, DType::F32, &mut rng);
    let b = random(&[6], 1.0, DType::F32, &mut rng);
    let out = rnn_sequence(&compute(), Cell::Gru, &table, &ids, &w, &b, None, false).unwrap().0;
    assert!(out.sum_all().unwrap().backward().is_err());
}

/// An LSTM has PyTorch's names and shapes (gates i, f, g, o stacked: 4H rows) and its forget
/// gate starts open: input bias 1 on the f block, 0 elsewhere.
#[test]
fn lstm_parameters_follow_pytorch_and_the_forget_gate_starts_open() {
    let (v, e, h) = (9, 5, 7);
    let config = Config::gru(v, e, h).with_cell(Cell::Lstm).with_layers(2);
    let shapes = config.parameter_shapes();
    let names: Vec<&str> = shapes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "embedding.weight",
            "lstm.weight_ih_l0",
            "lstm.weight_hh_l0",
            "lstm.bias_ih_l0",
            "lstm.bias_hh_l0",
            "lstm.weight_ih_l1",
            "lstm.weight_hh_l1",
            "lstm.bias_ih_l1",
            "lstm.bias_hh_l1",
            "dense.weight",
            "dense.bias"
        ]
    );
    assert_eq!(shapes[1].1, [4 * h, e]);
    assert_eq!(shapes[6].1, [4 * h, h]);
    let model = Model::new_random(config, DType::F32, &compute(), &mut StdRng::seed_from_u64(1)).unwrap();
    for l in 0..2 {
        let b_ih = model.param(&format!("lstm.bias_ih_l{l}")).to_vec1::<f32>().unwrap();
        let expected: Vec<f32> =
            (0..4 * h).map(|k| if (h..2 * h).contains(&k) { 1.0 } else { 0.0 }).collect();
        assert_eq!(b_ih, expected);
        assert!(model
            .param(&format!("lstm.bias_hh_l{l}"))
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|&x| x == 0.0));
    }
}

#[test]
fn elman_parameters_follow_pytorch_nn_rnn() {
    let (v, e, h) = (9, 5, 7);
    let config = Config::gru(v, e, h).with_cell(Cell::Rnn).with_layers(2);
    let shapes = config.parameter_shapes();
    let expected = [
        ("embedding.weight", vec![v, e]),
        ("rnn.weight_ih_l0", vec![h, e]),
        ("rnn.weight_hh_l0", vec![h, h]),
        ("rnn.bias_ih_l0", vec![h]),
        ("rnn.bias_hh_l0", vec![h]),
        ("rnn.weight_ih_l1", vec![h, h]),
        ("rnn.weight_hh_l1", vec![h, h]),
        ("rnn.bias_ih_l1", vec![h]),
        ("rnn.bias_hh_l1", vec![h]),
        ("dense.weight", vec![v, h]),
        ("dense.bias", vec![v]),
    ];
    let got: Vec<(&str, Vec<usize>)> = shapes.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
    assert_eq!(got, expected);
    let counted: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(config.parameter_count(), counted);
}

/// CI runs this file once per kernel the CPU has (CHARRNN_KERNEL=avx512, avx2, neon, portable):
/// the kernel asked for must be the one running, or those runs would test nothing new.
#[test]
fn the_requested_kernel_is_the_one_in_use() {
    match std::env::var(kernel::ENV) {
        Ok(name) if !name.is_empty() => assert_eq!(compute().kernel().name(), name),
        _ => assert_eq!(compute().kernel(), Kernel::best()),
    }
}

/// Models of every kernel this CPU has, and in bf16 where it has AVX512-BF16, side by side in
/// one process on threads of their own: each one's logits are, bit for bit, what it gives
/// alone, and the bf16 model's are its own (the precision reached its products).
#[test]
fn models_of_different_kernels_and_precisions_run_side_by_side() {
    let (vocab, steps) = (13, 60);
    let mut rng = StdRng::seed_from_u64(21);
    let config = Config::gru(vocab, 8, 64).with_layers(2);
    let model = Model::new_random(config, DType::F32, &compute(), &mut rng).unwrap();
    let ids: Vec<u32> = (0..steps).map(|_| rng.random_range(0..vocab as u32)).collect();
    let mut computes: Vec<Compute> =
        Kernel::available().into_iter().map(|k| compute().with_kernel(k).unwrap()).collect();
    let has_bf16 = has_bf16();
    if has_bf16 {
        computes.push(compute().with_precision(Precision::Bf16).unwrap());
    }
    // Each model's logits over `ids`, and a training loss and its gradient's norm.
    let run = |compute: &Compute| -> (Vec<Vec<f32>>, f32) {
        let m = model.with_compute(compute.clone()).unwrap();
        let mut sampler = Sampler::new(&m, 1).unwrap();
        let logits = ids.iter().map(|&id| sampler.step(&[id]).to_vec()).collect();
        let inputs = ids_tensor(&ids[..steps - 1], 1, steps - 1, &Device::Cpu).unwrap();
        let loss = m.loss(&inputs, &ids[1..], &Pass::Eval).unwrap().to_scalar::<f32>().unwrap();
        (logits, loss)
    };
    let alone: Vec<_> = computes.iter().map(run).collect();
    for _ in 0..3 {
        let together: Vec<_> = std::thread::scope(|s| {
            let running: Vec<_> = computes.iter().map(|c| s.spawn(|| run(c))).collect();
            running.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for ((c, a), t) in computes.iter().zip(&alone).zip(&together) {
            assert!(a == t, "{} {}: differs when run beside the others", c.kernel(), c.precision());
        }
    }
    if has_bf16 {
        let (f32_run, bf16_run) = (&alone[0], alone.last().unwrap());
        assert!(f32_run.0 != bf16_run.0, "the bf16 model's logits are the f32 model's");
        assert!(f32_run.1 != bf16_run.1, "the bf16 model's loss is the f32 model's");
    }
}

/// Whether this build on this CPU has the bf16 products (under emulation /proc/cpuinfo is the
/// host's, so the library is asked).
fn has_bf16() -> bool {
    Precision::Bf16.check(&Device::Cpu).is_ok()
}

fn values(n: usize, scale: f32, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// A layer's outputs and the gradients of table, W_hh and b_hh for one weighted-sum loss, with
/// the products in `precision`.
fn layer_run(cell: Cell, precision: Precision, seed: u64) -> Vec<Tensor> {
    let compute = compute().with_precision(precision).unwrap();
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
    let (out, _) = rnn_sequence(&compute, cell, &table, &ids, &w, &bias, Some(&state0), true).unwrap();
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
        println!("this CPU lacks avx512_bf16: the bf16 paths cannot run here");
        return;
    }
    let steps = 7.0;
    for cell in [Cell::Gru, Cell::Lstm, Cell::Rnn] {
        let exact = layer_run(cell, Precision::F32, 5);
        let rounded = layer_run(cell, Precision::Bf16, 5);
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
