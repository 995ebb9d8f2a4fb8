//! Sampling in int8 (`--precision int8`): logits inside the bound the quantization's own error
//! analysis gives, scoring through the sampler, and the command line's int8 paths. The products
//! against their exact reference, on every kernel: the unit tests of kernels/cpu/int8.rs; rows
//! independent of one another: tests/rnn.rs.

mod common;

use candle_core::DType;
use charrnn_core::compute::Precision;
use charrnn_core::data::Sequences;
use charrnn_core::model::{to_host, Config, Model};
use charrnn_core::sample::Sampler;
use charrnn_core::score::mean_loss;
use rand::{rngs::StdRng, SeedableRng};

fn in_int8(model: &Model) -> Model {
    model.with_compute(common::compute().with_precision(Precision::Int8).unwrap()).unwrap()
}

/// Symmetric rounding to 127 levels of a row (halves away from zero), as the sampler quantizes
/// (the test's own copy).
fn quantized(values: &[f64]) -> (Vec<f64>, f64) {
    let max = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { (max as f32 / 127.0) as f64 } else { 1.0 };
    let inverse = 1.0 / scale as f32;
    let q = |v: f64| {
        let x = v as f32 * inverse;
        (x + 0.5f32.copysign(x)).clamp(-127.0, 127.0).trunc() as f64
    };
    (values.iter().map(|&v| q(v)).collect(), scale)
}

/// The bound on |x·w − Q(x)·Q(w)| for each column of `w` ([n][k], rows are outputs): per term,
/// sx·sw·(|x_q| + |w_q| + ½)/2.
fn product_bound(x: &[f64], w: &[Vec<f64>]) -> Vec<f64> {
    let (xq, sx) = quantized(x);
    w.iter()
        .map(|row| {
            let (wq, sw) = quantized(row);
            sx * sw * xq.iter().zip(&wq).map(|(a, b)| (a.abs() + b.abs() + 0.5) / 2.0).sum::<f64>()
        })
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A GRU's logits after two characters in int8 lie within the bound that the quantization's
/// error analysis gives: at the first step from the zero state only the output layer is
/// quantized (the recurrent product of zeros is exact); at the second the recurrent product's
/// error bound is carried through the gates by their Lipschitz constants (σ′ ≤ ¼, tanh′ ≤ 1)
/// to the state, and through the output layer with its own quantization's.
#[test]
fn the_logits_stay_inside_the_quantizations_error_bound() {
    let (v, e, h) = (13, 8, 64);
    let mut rng = StdRng::seed_from_u64(4);
    let model = Model::new_random(Config::gru(v, e, h), DType::F32, &common::compute(), &mut rng).unwrap();
    let int8 = in_int8(&model);
    let host =
        |t: &candle_core::Var| to_host(t.as_tensor()).unwrap().into_iter().map(f64::from).collect::<Vec<_>>();
    let rows = |flat: Vec<f64>, width: usize| flat.chunks(width).map(<[f64]>::to_vec).collect::<Vec<_>>();
    let l0 = model.layer(0);
    let (w_ih, w_hh) = (rows(host(&l0.w_ih), e), rows(host(&l0.w_hh), h));
    let (b_ih, b_hh) = (host(&l0.b_ih), host(&l0.b_hh));
    let (emb, dense, dense_b) =
        (rows(host(&model.embedding), e), rows(host(&model.dense.weight), h), host(&model.dense.bias));
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let ids = [3u32, 7];
    // The exact (f64) GRU, PyTorch's gate order r, z, n.
    let mut state = vec![0.0; h];
    let mut states = Vec::new();
    for &id in &ids {
        let x: Vec<f64> = (0..3 * h).map(|i| dot(&w_ih[i], &emb[id as usize]) + b_ih[i]).collect();
        let g: Vec<f64> = (0..3 * h).map(|i| dot(&w_hh[i], &state) + b_hh[i]).collect();
        let next: Vec<f64> = (0..h)
            .map(|j| {
                let (r, z) = (sigmoid(x[j] + g[j]), sigmoid(x[h + j] + g[h + j]));
                let n = (x[2 * h + j] + r * g[2 * h + j]).tanh();
                (1.0 - z) * n + z * state[j]
            })
            .collect();
        states.push((state.clone(), x, g, next.clone()));
        state = next;
    }
    let (mut exact, mut quant) = (Sampler::new(&model, 1).unwrap(), Sampler::new(&int8, 1).unwrap());
    // Slack for what f32 and the kernels' own σ and tanh differ from f64 by.
    const SLACK: f64 = 2e-5;
    let mut worst_margin = f64::INFINITY;
    let mut differed = false;
    for (step, &id) in ids.iter().enumerate() {
        let (f, q) = (exact.step(&[id]).to_vec(), quant.step(&[id]).to_vec());
        let (prev, x, g, next) = &states[step];
        // The state's error bound: none at the first step, carried through the gates at the
        // second.
        let dh: Vec<f64> = if step == 0 {
            vec![0.0; h]
        } else {
            let eg = product_bound(prev, &w_hh);
            (0..h)
                .map(|j| {
                    let (r, z) = (sigmoid(x[j] + g[j]), sigmoid(x[h + j] + g[h + j]));
                    let n = (x[2 * h + j] + r * g[2 * h + j]).tanh();
                    let (dr, dz) = (eg[j] / 4.0, eg[h + j] / 4.0);
                    let dn = (r + dr) * eg[2 * h + j] + dr * g[2 * h + j].abs();
                    (1.0 - z + dz) * dn + dz * (n - prev[j]).abs()
                })
                .collect()
        };
        // The state the int8 sampler quantizes is within dh of `next`: bound its product's
        // rounding at the worst corner of that box, plus the state's error through the layer.
        let corner: Vec<f64> = next.iter().zip(&dh).map(|(s, d)| s.abs() + d).collect();
        let rounding = product_bound(&corner, &dense);
        for j in 0..v {
            let carried: f64 = dense[j].iter().zip(&dh).map(|(w, d)| w.abs() * d).sum();
            let bound = rounding[j] + carried + SLACK;
            let err = (q[j] as f64 - f[j] as f64).abs();
            assert!(err <= bound, "step {step}, logit {j}: int8 differs by {err}, bound {bound}");
            worst_margin = worst_margin.min(bound - err);
            differed |= q[j] != f[j];
            let want = dot(&dense[j], next) + dense_b[j];
            assert!((f[j] as f64 - want).abs() < SLACK / 4.0, "the f32 sampler against the f64 GRU");
        }
    }
    assert!(differed, "the int8 logits are the f32 ones: the products were not int8");
    assert!(worst_margin.is_finite());
}

/// Scoring in int8 steps the sampler through the sequences: close to f32's loss, not equal.
#[test]
fn scoring_in_int8_goes_through_the_sampler() {
    let mut rng = StdRng::seed_from_u64(6);
    let model =
        Model::new_random(Config::gru(20, 8, 48).with_layers(2), DType::F32, &common::compute(), &mut rng)
            .unwrap();
    let ids: Vec<u32> = (0..2000).map(|i| ((i * 7 + i / 13) % 20) as u32).collect();
    let seqs = Sequences::new(&ids[..], 30);
    let f32_loss = mean_loss(&model, &seqs, 16).unwrap().unwrap();
    let int8_loss = mean_loss(&in_int8(&model), &seqs, 16).unwrap().unwrap();
    assert!(f32_loss != int8_loss, "{f32_loss}");
    assert!((f32_loss - int8_loss).abs() < 0.01 * f32_loss, "f32 {f32_loss} against int8 {int8_loss}");
}

/// The command line: training refuses int8; generation in int8 says so and repeats itself for a
/// seed; eval in int8 is close to f32; info gives each precision's sampler size; bench reports
/// the int8 sampler beside f32.
#[test]
fn the_command_line_samples_scores_and_benches_in_int8() {
    let dir = tempfile::tempdir().unwrap();
    let ck = common::server::train(dir.path(), "run", "2", "1");
    let data = dir.path().join("tiny.txt");
    let data = data.to_str().unwrap();
    let o = common::charrnn(&["train", "--data", data, "--precision", "int8", "--checkpoint-dir", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(common::stderr(&o).contains("--precision int8 is for sampling"), "{}", common::stderr(&o));

    let ckpt = ck.to_str().unwrap();
    let generate = |precision: &str| {
        let o = common::charrnn(&[
            "generate",
            "--checkpoint",
            ckpt,
            "--start",
            "the ",
            "--seed",
            "5",
            "--length",
            "200",
            "--precision",
            precision,
        ]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        o
    };
    let (a, b) = (generate("int8"), generate("int8"));
    assert_eq!(a.stdout, b.stdout, "the same seed gives the same text");
    assert!(common::stderr(&a).contains("int8 products on "), "{}", common::stderr(&a));
    assert!(a.stdout.len() > 200);

    let score = |precision: &str| -> f64 {
        let o = common::charrnn(&[
            "eval",
            "--checkpoint",
            ckpt,
            "--data",
            data,
            "--json",
            "--precision",
            precision,
        ]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["nats_per_char"].as_f64().unwrap()
    };
    let (f32_loss, int8_loss) = (score("f32"), score("int8"));
    assert!((f32_loss - int8_loss).abs() < 0.01 * f32_loss, "f32 {f32_loss} against int8 {int8_loss}");

    let o = common::charrnn(&["info", "--json", ckpt]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mib = |p: &str| {
        info["sampling_mib"].as_array().unwrap().iter().find(|e| e[0] == p).unwrap()[1].as_f64().unwrap()
    };
    // (At this tiny size int8's 64-column panels are mostly padding, so only f32 is surely larger.)
    assert!(mib("int8") < mib("f32") && mib("bf16") < mib("f32"), "{info}");

    let sizes = ["--rnn-units", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-len", "10"];
    let o = common::charrnn(
        &[&["bench", "--device", "cpu", "--batches", "1", "--gen-chars", "200", "--json"][..], &sizes]
            .concat(),
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["int8"]["gen_chars_per_s"].as_f64().is_some_and(|v| v > 0.0), "{r}");
    let (int8_mib, f32_mib) =
        (r["int8"]["weights_mib"].as_f64().unwrap(), r["int8"]["f32_weights_mib"].as_f64().unwrap());
    assert!(int8_mib < f32_mib, "{r}");
    assert!(r["int8"]["kernel"].as_str().is_some_and(|k| !k.is_empty()), "{r}");
}
