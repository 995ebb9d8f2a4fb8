//! The GPU path against the CPU path: same weights, same batches, same random numbers. Built
//! only with `--features cuda`, and run where a GPU is (scripts/gpu-check.sh runs them): the
//! machines that build and test everything else have none.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use charrnn_core::checkpoint::{self, Provenance};
use charrnn_core::data::vocab::Vocab;
use charrnn_core::data::Batch;
use charrnn_core::model::{ids_tensor, Config, Dropout, Model, Pass};
use charrnn_core::optim::Adam;
use charrnn_core::sample::{generate, Engine};
use charrnn_core::sample::{Job, SampleOptions};
use charrnn_core::train::{train_step_from, StepOptions};
use charrnn_core::Kernel;
use rand::{rngs::StdRng, Rng, SeedableRng};

mod common;

/// The agreement the GPU must reach in f32: max |gpu − cpu| / max |cpu| per tensor.
const TOLERANCE: f64 = 1e-4;

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU")
}

fn moved(model: &Model, dev: &Device) -> Model {
    let tensors = model.named().map(|(n, v)| (n, v.as_tensor().to_device(dev).unwrap())).collect();
    Model::from_tensors(model.config.clone(), tensors, &common::compute_on(dev)).unwrap()
}

fn host(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn relative_difference(cpu: &Tensor, gpu: &Tensor) -> f64 {
    let (a, b) = (host(cpu), host(gpu));
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn random_ids(rng: &mut StdRng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

/// Sizes that are not multiples of a warp or a block, 1 and 2 layers.
fn configs() -> Vec<Config> {
    vec![Config::gru(29, 16, 96), Config::gru(29, 16, 40).with_layers(2)]
}

#[test]
fn loss_gradients_and_logits_match_the_cpu() {
    let dev = gpu();
    for config in configs() {
        let mut rng = StdRng::seed_from_u64(7);
        let cpu = Model::new_random(config.clone(), DType::F32, &common::compute(), &mut rng).unwrap();
        let gpu = moved(&cpu, &dev);
        let (b, t, h) = (5, 11, config.rnn_units);
        let ids = random_ids(&mut rng, b * t, config.vocab_size);
        let targets = random_ids(&mut rng, b * t, config.vocab_size);
        let state: Vec<Tensor> =
            (0..config.layers).map(|_| Tensor::randn(0f32, 0.5, (b, h), &Device::Cpu).unwrap()).collect();
        for from_state in [false, true] {
            let pass = Pass::Train { dropout: Dropout::output(0.0), seed: 0, first_row: 0 };
            let run = |model: &Model, d: &Device| {
                let inputs = ids_tensor(&ids, b, t, d).unwrap();
                let s: Vec<Tensor> = state.iter().map(|s| s.to_device(d).unwrap()).collect();
                let (loss, finals) =
                    model.loss_from(&inputs, &targets, &pass, from_state.then_some(&s[..])).unwrap();
                let grads = loss.backward().unwrap();
                let grads: Vec<Tensor> =
                    model.vars().map(|v| grads.get(v.as_tensor()).unwrap().clone()).collect();
                let logits = model.forward(&inputs, &Pass::Eval).unwrap();
                (loss, grads, finals, logits)
            };
            let (cpu_loss, cpu_grads, cpu_finals, cpu_logits) = run(&cpu, &Device::Cpu);
            let (gpu_loss, gpu_grads, gpu_finals, gpu_logits) = run(&gpu, &dev);
            let what = format!("{} layer(s), H {h}, from a state: {from_state}", config.layers);
            let d = relative_difference(&cpu_loss, &gpu_loss);
            println!(
                "{what}: loss {:.6} vs {:.6}, relative difference {d:.2e}",
                host(&cpu_loss)[0],
                host(&gpu_loss)[0]
            );
            assert!(d <= TOLERANCE, "{what}: loss");
            let d = relative_difference(&cpu_logits, &gpu_logits);
            println!("{what}: logits {d:.2e}");
            assert!(d <= TOLERANCE, "{what}: logits");
            for ((name, _), (c, g)) in cpu.named().zip(cpu_grads.iter().zip(&gpu_grads)) {
                let d = relative_difference(c, g);
                println!("{what}: gradient of {name} {d:.2e}");
                assert!(d <= TOLERANCE, "{what}: gradient of {name}");
            }
            for (c, g) in cpu_finals.iter().zip(&gpu_finals) {
                assert!(relative_difference(c, g) <= TOLERANCE, "{what}: final state");
            }
        }
    }
}

/// Whole training steps (Adam, clipping, dropout, carried state) on both devices.
#[test]
fn training_steps_match_the_cpu() {
    let dev = gpu();
    let config = Config::gru(29, 16, 64).with_layers(2);
    let mut rng = StdRng::seed_from_u64(3);
    let cpu = Model::new_random(config.clone(), DType::F32, &common::compute(), &mut rng).unwrap();
    let gpu = moved(&cpu, &dev);
    let (mut adam_cpu, mut adam_gpu) =
        (Adam::new(cpu.parameters()).unwrap(), Adam::new(gpu.parameters()).unwrap());
    adam_cpu.weight_decay = 0.01;
    adam_gpu.weight_decay = 0.01;
    let (mut state_cpu, mut state_gpu): (Option<Vec<Tensor>>, Option<Vec<Tensor>>) = (None, None);
    for step in 0..4 {
        let (b, t) = (4, 9);
        let batch = Batch {
            inputs: random_ids(&mut rng, b * t, 29),
            targets: random_ids(&mut rng, b * t, 29),
            batch_size: b,
            seq_len: t,
        };
        let o = StepOptions {
            learning_rate: 1e-2,
            clip_grad_norm: Some(0.5),
            dropout: Dropout::output(0.2),
            seed: step,
        };
        let (loss_cpu, norm_cpu, s_cpu) =
            train_step_from(&cpu, &mut adam_cpu, &batch, &o, state_cpu.as_deref()).unwrap();
        let (loss_gpu, norm_gpu, s_gpu) =
            train_step_from(&gpu, &mut adam_gpu, &batch, &o, state_gpu.as_deref()).unwrap();
        println!("step {step}: loss {loss_cpu} / {loss_gpu}, norm {norm_cpu:?} / {norm_gpu:?}");
        assert!(((loss_cpu - loss_gpu) / loss_cpu).abs() <= TOLERANCE as f32);
        (state_cpu, state_gpu) = (Some(s_cpu), Some(s_gpu));
    }
    for ((name, c), (_, g)) in cpu.named().zip(gpu.named()) {
        let d = relative_difference(c.as_tensor(), g.as_tensor());
        println!("weights {name} after 4 steps: {d:.2e}");
        assert!(d <= TOLERANCE, "weights {name}");
    }
}

/// The GPU sampler draws what the CPU sampler draws from the same seed, for every picking
/// rule and for several samples at once.
#[test]
fn the_gpu_sampler_draws_what_the_cpu_draws() {
    let dev = gpu();
    let text = "It is a truth universally acknowledged, that a single man in possession\n";
    let vocab = Vocab::from_text(text);
    let mut rng = StdRng::seed_from_u64(11);
    let cpu = Model::new_random(
        Config::gru(vocab.len(), 8, 72).with_layers(2),
        DType::F32,
        &common::compute(),
        &mut rng,
    )
    .unwrap();
    let gpu = moved(&cpu, &dev);
    let rules = [
        (0.0, None, None),
        (1.0, None, None),
        (0.8, Some(4), None),
        (1.2, None, Some(0.9)),
        (1.0, Some(6), Some(0.5)),
    ];
    for (temperature, top_k, top_p) in rules {
        for samples in [1, 3] {
            let run = |model: &Model| {
                let mut engine = Engine::new(model, &vocab, samples).unwrap();
                let options = SampleOptions {
                    temperature,
                    top_k,
                    top_p,
                    seed: 5,
                    num_samples: samples,
                    ..SampleOptions::new("It is", 300)
                };
                let job = Job::new(&vocab, &options).unwrap();
                let mut out = Vec::new();
                generate(&mut engine, job, &mut out).unwrap();
                String::from_utf8(out).unwrap()
            };
            let (on_cpu, on_gpu) = (run(&cpu), run(&gpu));
            let same = on_cpu.chars().zip(on_gpu.chars()).take_while(|(a, b)| a == b).count();
            println!(
                "T {temperature} top-k {top_k:?} top-p {top_p:?} ×{samples}: {same} of {} characters agree",
                on_cpu.chars().count()
            );
            assert_eq!(on_cpu, on_gpu);
        }
    }
}

/// A model trained on the GPU samples on the CPU and the other way round: one file format.
#[test]
fn checkpoints_move_between_devices() {
    let dev = gpu();
    let vocab = Vocab::from_text("abcdefgh\n");
    let mut rng = StdRng::seed_from_u64(2);
    let model =
        Model::new_random(Config::gru(vocab.len(), 6, 33), DType::F32, &common::compute_on(&dev), &mut rng)
            .unwrap();
    let mut adam = Adam::new(model.parameters()).unwrap();
    let ids: Vec<u32> = (0..64).map(|i| (i % 9) as u32).collect();
    let batch =
        Batch { inputs: ids[..48].to_vec(), targets: ids[1..49].to_vec(), batch_size: 4, seq_len: 12 };
    let first = train_step_from(&model, &mut adam, &batch, &StepOptions::plain(1e-2), None).unwrap().0;
    for _ in 0..30 {
        train_step_from(&model, &mut adam, &batch, &StepOptions::plain(1e-2), None).unwrap();
    }
    let last = train_step_from(&model, &mut adam, &batch, &StepOptions::plain(1e-2), None).unwrap().0;
    assert!(last < first / 2.0, "GPU training: loss {first} → {last}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.safetensors");
    checkpoint::save(&path, &model, &vocab, &Provenance::default()).unwrap();
    let on_cpu = checkpoint::load(&path, &common::compute()).unwrap();
    let back_on_gpu = checkpoint::load(&path, &common::compute_on(&dev)).unwrap();
    let logits =
        |m: &Model, d: &Device| m.forward(&ids_tensor(&ids[..24], 2, 12, d).unwrap(), &Pass::Eval).unwrap();
    let reference = logits(&model, &dev);
    assert!(relative_difference(&reference, &logits(&on_cpu.model, &Device::Cpu)) <= TOLERANCE);
    assert_eq!(host(&reference), host(&logits(&back_on_gpu.model, &dev)));
}

/// The LSTM and the Elman RNN have no GPU kernels yet: training and sampling them on the GPU
/// say so, naming the cell.
#[test]
fn cells_without_gpu_kernels_are_refused_clearly() {
    use charrnn_core::model::Cell;
    let dev = gpu();
    for cell in [Cell::Lstm, Cell::Rnn] {
        let config = Config::gru(9, 4, 8).with_cell(cell);
        let model =
            Model::new_random(config, DType::F32, &common::compute_on(&dev), &mut StdRng::seed_from_u64(1))
                .unwrap();
        let inputs = ids_tensor(&[1, 2, 3, 4], 1, 4, &dev).unwrap();
        let err = model.loss(&inputs, &[2, 3, 4, 5], &Pass::Eval).unwrap_err().to_string();
        assert!(err.contains(&format!("--cell {} has no GPU kernels yet", cell.name())), "{err}");
        let vocab = Vocab::from_text("abcdefghi");
        let err = Engine::new(&model, &vocab, 1).err().expect("no GPU sampler for this cell").to_string();
        assert!(err.contains(&format!("--cell {} has no GPU sampler yet", cell.name())), "{err}");
    }
}

/// Huge but finite logits (an output bias of 3e38): the GPU's loss, like the CPU's, is the
/// uniform model's ln V, not the 0 that max + log Σ − target rounds to.
#[test]
fn the_gpu_loss_stays_right_for_huge_finite_logits() {
    let dev = gpu();
    let config = Config::gru(3, 4, 8);
    let tensors = config
        .parameter_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let t = match name.as_str() {
                "dense.bias" => Tensor::new(vec![3e38f32; 3], &dev).unwrap(),
                _ => Tensor::zeros(shape, DType::F32, &dev).unwrap(),
            };
            (name, t)
        })
        .collect();
    let model = Model::from_tensors(config, tensors, &common::compute_on(&dev)).unwrap();
    let ids = ids_tensor(&[0, 1, 2, 0, 1, 2], 2, 3, &dev).unwrap();
    let loss = model.loss(&ids, &[1, 2, 0, 1, 2, 0], &Pass::Eval).unwrap();
    let loss = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    println!("loss with logits of 3e38: {loss} (ln 3 = {})", 3f64.ln());
    assert!((loss - 3f64.ln()).abs() < 1e-5, "{loss}");
}

/// Dropout masks made on the GPU are bit for bit the CPU's, for several shapes, rates and
/// seeds (odd sizes included).
#[test]
fn gpu_dropout_masks_are_the_cpus_bit_for_bit() {
    let dev = gpu();
    for (shape, p, seed) in [
        (vec![5, 11, 96], 0.1f32, 1u64),
        (vec![64, 100, 1024], 0.4, 0x9E37_79B9_7F4A_7C15),
        (vec![3, 7, 13], 0.5, u64::MAX),
        (vec![1, 1, 257], 0.05, 42),
    ] {
        let cpu =
            charrnn_core::model::dropout_mask(Kernel::best(), &shape, p, seed, 0, &Device::Cpu).unwrap();
        let gpu = charrnn_core::model::dropout_mask(Kernel::best(), &shape, p, seed, 0, &dev).unwrap();
        assert!(gpu.device().is_cuda());
        let (a, b): (Vec<f32>, Vec<f32>) =
            (cpu.flatten_all().unwrap().to_vec1().unwrap(), gpu.flatten_all().unwrap().to_vec1().unwrap());
        let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        println!("dropout mask {shape:?} p {p}: {differ} of {} elements differ", a.len());
        assert_eq!(differ, 0, "{shape:?} p {p} seed {seed}");
    }
}

/// `--precision tf32`: the products really change (logits differ from the GPU's f32 ones) and
/// stay close to the CPU's f32: logits, loss and every gradient within 1e-2 relative.
#[test]
fn tf32_products_stay_close_to_f32() {
    use charrnn_core::compute::Precision;
    let dev = gpu();
    let config = Config::gru(29, 16, 256).with_layers(2);
    let mut rng = StdRng::seed_from_u64(5);
    let cpu = Model::new_random(config.clone(), DType::F32, &common::compute(), &mut rng).unwrap();
    let gpu = moved(&cpu, &dev);
    let (b, t) = (8, 20);
    let ids = random_ids(&mut rng, b * t, config.vocab_size);
    let targets = random_ids(&mut rng, b * t, config.vocab_size);
    let logits_on =
        |m: &Model, d: &Device| m.forward(&ids_tensor(&ids, b, t, d).unwrap(), &Pass::Eval).unwrap();
    let f32_logits = logits_on(&gpu, &dev);
    // The same weights in TF32, beside the f32 model.
    let gpu = gpu.with_compute(common::compute_on(&dev).with_precision(Precision::Tf32).unwrap()).unwrap();
    let tf32_logits = logits_on(&gpu, &dev);
    assert_ne!(host(&f32_logits), host(&tf32_logits), "tf32 changed nothing");
    let cpu_logits = logits_on(&cpu, &Device::Cpu);
    let d = relative_difference(&cpu_logits, &tf32_logits);
    println!("tf32 logits against the CPU's f32: {d:.2e}");
    assert!(d <= 1e-2, "logits {d}");
    let pass = Pass::Train { dropout: Dropout::output(0.0), seed: 0, first_row: 0 };
    let loss_of =
        |m: &Model, d: &Device| m.loss(&ids_tensor(&ids, b, t, d).unwrap(), &targets, &pass).unwrap();
    let (lc, lg) = (loss_of(&cpu, &Device::Cpu), loss_of(&gpu, &dev));
    let dl = relative_difference(&lc, &lg);
    println!("tf32 loss against the CPU's f32: {dl:.2e}");
    assert!(dl <= 1e-2, "loss {dl}");
    let (gc, gg) = (lc.backward().unwrap(), lg.backward().unwrap());
    for ((name, c), (_, g)) in cpu.named().zip(gpu.named()) {
        let d = relative_difference(gc.get(c.as_tensor()).unwrap(), gg.get(g.as_tensor()).unwrap());
        println!("tf32 gradient of {name}: {d:.2e}");
        assert!(d <= 1e-2, "gradient of {name}: {d}");
    }
}
