//! Each training option changes what it should, and nothing when off.

use candle_core::{DType, Device};
use charrnn_core::data::Batch;
use charrnn_core::model::{ids_tensor, Config, Dropout, Model, Pass};
use charrnn_core::optim::Adam;
use charrnn_core::train::presets::Preset;
use charrnn_core::train::settings::OptimizerSettings;
use charrnn_core::train::{learning_rate, train_step, LrSchedule, Settings, StepOptions};
use rand::{rngs::StdRng, SeedableRng};

mod common;

fn model() -> Model {
    Model::new_random(Config::gru(9, 6, 16), DType::F32, &common::compute(), &mut StdRng::seed_from_u64(8))
        .unwrap()
}

fn batch() -> Batch {
    let inputs: Vec<u32> = (0..24).map(|i| (i * 5 % 9) as u32).collect();
    let targets: Vec<u32> = (0..24).map(|i| (i * 7 % 9) as u32).collect();
    Batch { inputs, targets, batch_size: 3, seq_len: 8 }
}

#[test]
fn dropout_acts_in_training_only() {
    let m = model();
    let ids = ids_tensor(&batch().inputs, 3, 8, &Device::Cpu).unwrap();
    let logits =
        |pass: Pass| m.forward(&ids, &pass).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let eval = logits(Pass::Eval);
    assert_eq!(
        eval,
        logits(Pass::Train { dropout: Dropout::output(0.0), seed: 1, first_row: 0 }),
        "dropout 0 is the identity"
    );
    let dropped = logits(Pass::Train { dropout: Dropout::output(0.5), seed: 1, first_row: 0 });
    assert_ne!(eval, dropped);
    assert_eq!(
        dropped,
        logits(Pass::Train { dropout: Dropout::output(0.5), seed: 1, first_row: 0 }),
        "the mask follows the seed"
    );
    assert_ne!(dropped, logits(Pass::Train { dropout: Dropout::output(0.5), seed: 2, first_row: 0 }));
}

#[test]
fn clipping_bounds_the_gradient_norm_adam_sees() {
    let clip = 1e-3;
    let m = model();
    let mut adam = Adam::new(m.parameters()).unwrap();
    let o = StepOptions { clip_grad_norm: Some(clip), ..StepOptions::plain(1e-3) };
    let norm = train_step(&m, &mut adam, &batch(), &o).unwrap().1.expect("clipping reports the norm");
    assert!(norm > 10.0 * clip, "the raw norm {norm} must exceed the bound for this test to mean anything");
    // After one step Adam's first moment is (1 − β1)·g, so it reveals the gradient it used.
    let mut squares = 0.0f64;
    for (_, t, _) in adam.moments() {
        squares += t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    }
    let used = squares.sqrt() / (1.0 - adam.beta1);
    assert!((used - clip).abs() < 1e-3 * clip, "norm after clipping {used}, bound {clip}");

    // Without clipping no norm is computed and Adam sees the raw gradient (large again).
    let mut plain = Adam::new(m.parameters()).unwrap();
    assert!(train_step(&m, &mut plain, &batch(), &StepOptions::plain(1e-3)).unwrap().1.is_none());
    let mut squares = 0.0f64;
    for (_, t, _) in plain.moments() {
        squares += t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    }
    assert!(squares.sqrt() / 0.1 > 10.0 * clip);
}

fn settings(schedule: LrSchedule, warmup: u64) -> Settings {
    let mut s = Preset::Tutorial.settings(0);
    s.optimizer = OptimizerSettings {
        learning_rate: 1e-3,
        clip_grad_norm: None,
        lr_schedule: schedule,
        warmup_steps: warmup,
        min_lr: 1e-4,
        weight_decay: 0.0,
        ..Preset::Tutorial.settings(1).optimizer
    };
    s
}

#[test]
fn schedules_warm_up_and_decay() {
    let constant = settings(LrSchedule::Constant, 0);
    assert_eq!(learning_rate(&constant, 0, 100), 1e-3);
    assert_eq!(learning_rate(&constant, 99, 100), 1e-3);
    let cosine = settings(LrSchedule::Cosine, 10);
    assert!((learning_rate(&cosine, 0, 110) - 1e-3 / 11.0).abs() < 1e-12, "warm-up starts small");
    assert!((learning_rate(&cosine, 9, 110) - 1e-3 * 10.0 / 11.0).abs() < 1e-12);
    assert!((learning_rate(&cosine, 10, 110) - 1e-3).abs() < 1e-12, "full rate after warm-up");
    assert!((learning_rate(&cosine, 60, 110) - 5.5e-4).abs() < 1e-12, "half way: the mean of lr and min_lr");
    assert!((learning_rate(&cosine, 110, 110) - 1e-4).abs() < 1e-12, "ends at min_lr");
}

/// A state carried from one window to the next continues the text: two windows of 6 with the
/// state carried equal one window of 12 (stacked layers included).
#[test]
fn a_carried_state_continues_the_sequence() {
    let m = Model::new_random(
        Config::gru(9, 6, 16).with_layers(2),
        DType::F32,
        &common::compute(),
        &mut StdRng::seed_from_u64(4),
    )
    .unwrap();
    let ids: Vec<u32> = (0..24).map(|i| (i * 5 % 9) as u32).collect(); // 2 rows of 12
    let whole = m.hidden(&ids_tensor(&ids, 2, 12, &Device::Cpu).unwrap(), &Pass::Eval).unwrap();
    let first: Vec<u32> = ids.chunks(12).flat_map(|r| r[..6].to_vec()).collect();
    let second: Vec<u32> = ids.chunks(12).flat_map(|r| r[6..].to_vec()).collect();
    let (_, state) =
        m.hidden_from(&ids_tensor(&first, 2, 6, &Device::Cpu).unwrap(), &Pass::Eval, None).unwrap();
    let (h2, _) =
        m.hidden_from(&ids_tensor(&second, 2, 6, &Device::Cpu).unwrap(), &Pass::Eval, Some(&state)).unwrap();
    let want = whole.narrow(1, 6, 6).unwrap();
    let diff = (h2 - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-6, "max difference {diff}");
    // and from a zero state the second window is something else
    let (cold, _) =
        m.hidden_from(&ids_tensor(&second, 2, 6, &Device::Cpu).unwrap(), &Pass::Eval, None).unwrap();
    let gap = (cold - whole.narrow(1, 6, 6).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(gap > 1e-3);
}
