//! `eval` against a case computed by hand, and a non-finite loss stopping training.

use candle_core::{DType, Device, Tensor};
use charrnn_core::data::vocab::Vocab;
use charrnn_core::data::Batch;
use charrnn_core::model::{Config, Model};
use charrnn_core::optim::Adam;
use charrnn_core::score::score;
use charrnn_core::train::{train_step, StepOptions};

mod common;

/// A model whose every weight is zero except the output bias: it predicts the same
/// distribution, softmax(bias), at every position whatever the input.
fn constant_model(bias: Vec<f32>) -> Model {
    let config = Config::gru(bias.len(), 3, 4);
    let tensors = config
        .parameter_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let t = match name.as_str() {
                "dense.bias" => Tensor::new(bias.clone(), &Device::Cpu).unwrap(),
                _ => Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap(),
            };
            (name, t)
        })
        .collect();
    Model::from_tensors(config, tensors, &common::compute()).unwrap()
}

#[test]
fn eval_scores_a_hand_computed_case_and_counts_strangers() {
    // p(a) = 1/4, p(b) = 3/4 everywhere.
    let model = constant_model(vec![0.0, 3f32.ln()]);
    let vocab = Vocab::from_text("ab");
    let text = format!("{}xyx", "ab".repeat(10));
    let s = score(&model, &vocab, &text, 4, 3).unwrap();
    // 20 known characters -> 4 sequences of 5 -> 16 predictions, targets "baba" in each:
    // half cost -ln(1/4), half -ln(3/4).
    let want = (4f64.ln() + (4.0f64 / 3.0).ln()) / 2.0;
    assert_eq!(s.characters, 16);
    assert!((s.nats_per_char - want).abs() < 1e-6, "{} vs {want}", s.nats_per_char);
    assert!((s.bits_per_char - want / std::f64::consts::LN_2).abs() < 1e-6);
    assert!((s.perplexity - want.exp()).abs() < 1e-5);
    assert_eq!(s.skipped, 3);
    assert_eq!(s.unknown_characters, vec!["'x'", "'y'"]);
    assert!(score(&model, &vocab, "a", 4, 3).is_err(), "one character cannot be scored");
}

#[test]
fn a_non_finite_loss_stops_and_leaves_the_weights_alone() {
    let model = constant_model(vec![0.0, f32::NAN]);
    let before = model.param("gru.weight_hh_l0").flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut adam = Adam::new(model.parameters()).unwrap();
    let batch = Batch { inputs: vec![0, 1, 0], targets: vec![1, 0, 1], batch_size: 1, seq_len: 3 };
    let err = train_step(&model, &mut adam, &batch, &StepOptions::plain(1e-3)).unwrap_err().to_string();
    assert!(err.contains("NaN") && err.contains("--learning-rate"), "{err}");
    assert_eq!(adam.updates(), 0);
    let after = model.param("gru.weight_hh_l0").flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(before, after);
}

/// Huge but finite logits (an output bias near f32's limit) must still give the true loss:
/// all logits round to the same value, so the model is uniform over its 3 characters and
/// every prediction costs ln 3. Computed as max + ln Σ − target, that rounds to 0.
#[test]
fn the_loss_stays_right_for_huge_finite_logits() {
    let model = constant_model(vec![3e38, 3e38, 3e38]);
    let vocab = Vocab::from_text("abc");
    let s = score(&model, &vocab, &"abc".repeat(10), 5, 2).unwrap();
    assert!((s.nats_per_char - 3f64.ln()).abs() < 1e-5, "{} nats/char, want ln 3", s.nats_per_char);
}
