//! The core's data-parallel training without MPI: ranks as threads of one process, each with
//! its own thread pool, exchanging through memory. Each sum gathers every rank's buffer and
//! adds them in rank order, so every rank gets the same sums, as MPI's all-reduce gives them.

mod common;

use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};

use anyhow::Result;
use charrnn_core::collective::Collective;
use charrnn_core::train::{self, presets::Preset, Event, Origin, StopFlag, TrainOptions};

/// Rank `rank` of `size` threads.
struct Threads {
    rank: usize,
    size: usize,
    shared: Arc<(Barrier, Mutex<Vec<Vec<u64>>>)>,
}

impl Threads {
    fn world(size: usize) -> Vec<Threads> {
        let shared = Arc::new((Barrier::new(size), Mutex::new(vec![Vec::new(); size])));
        (0..size).map(|rank| Threads { rank, size, shared: shared.clone() }).collect()
    }

    /// Every rank's values, in rank order.
    fn gather(&self, mine: Vec<u64>) -> Vec<Vec<u64>> {
        let (barrier, slots) = &*self.shared;
        slots.lock().unwrap()[self.rank] = mine;
        barrier.wait();
        let all = slots.lock().unwrap().clone();
        barrier.wait(); // nobody writes the next call's values before all have read these
        all
    }

    fn combine(&self, values: &mut [u64], add: impl Fn(u64, u64) -> u64) {
        let all = self.gather(values.to_vec());
        for (i, v) in values.iter_mut().enumerate() {
            *v = all.iter().skip(1).fold(all[0][i], |acc, other| add(acc, other[i]));
        }
    }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
        let mut bits: Vec<u64> = values.iter().map(|v| v.to_bits() as u64).collect();
        self.combine(&mut bits, |a, b| {
            (f32::from_bits(a as u32) + f32::from_bits(b as u32)).to_bits() as u64
        });
        for (v, b) in values.iter_mut().zip(bits) {
            *v = f32::from_bits(b as u32);
        }
        Ok(())
    }
    fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
        let mut bits: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
        self.combine(&mut bits, |a, b| (f64::from_bits(a) + f64::from_bits(b)).to_bits());
        for (v, b) in values.iter_mut().zip(bits) {
            *v = f64::from_bits(b);
        }
        Ok(())
    }
    fn max_u64(&self, values: &mut [u64]) -> Result<()> {
        self.combine(values, u64::max);
        Ok(())
    }
    fn broadcast_u64(&self, values: &mut [u64]) -> Result<()> {
        let all = self.gather(values.to_vec());
        values.copy_from_slice(&all[0]);
        Ok(())
    }
}

/// A tiny run of the tutorial's recipe on a text in memory.
fn options(dir: &Path, seed: u64, epochs: usize) -> TrainOptions {
    let mut base = Preset::Tutorial.settings(seed);
    (base.model.embedding_dim, base.model.rnn_units) = (8, 16);
    (base.data.batch_size, base.data.seq_len) = (6, 20);
    base.optimizer.learning_rate = 1e-2;
    base.optimizer.dropout = 0.2;
    base.control.epochs = epochs;
    TrainOptions {
        base,
        typed: Default::default(),
        checkpoint_dir: dir.to_path_buf(),
        compute: common::compute(),
        origin: Origin::Fresh,
        overwrite: false,
        cache_dir: None,
        text: Some(common::tiny_text()),
        limits: Default::default(),
        stop: StopFlag::new(),
    }
}

/// Trains `options(rank)` on every rank of a world of `size` threads, each rank on a pool of its
/// own; `watch` sees each rank's events. Returns each rank's result and step losses.
fn train_ranks(
    size: usize,
    options: impl Fn(usize) -> TrainOptions + Sync,
    watch: impl Fn(usize, &Event, &StopFlag) + Sync,
) -> Vec<(Result<()>, Vec<f64>)> {
    std::thread::scope(|scope| {
        let ranks: Vec<_> = Threads::world(size)
            .into_iter()
            .map(|world| {
                let (options, watch) = (&options, &watch);
                scope.spawn(move || {
                    let o = options(world.rank);
                    let mut losses = Vec::new();
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
                    let result = pool.install(|| {
                        train::run_among(
                            &o,
                            &mut |e: &Event| {
                                if let Event::Step(s) = e {
                                    losses.push(s.loss);
                                }
                                watch(world.rank, e, &o.stop);
                            },
                            &world,
                        )
                    });
                    (result, losses)
                })
            })
            .collect();
        ranks.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

/// Two and three ranks (shares of 6 rows: 3 + 3, 2 + 2 + 2) train what one process trains, with
/// dropout; every rank sees the global batch's loss at every step, the same on each; rank 0
/// alone writes the folder.
#[test]
fn ranks_train_what_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    train::run(&options(&one, 5, 2), &mut |_: &Event| {}).unwrap();
    for size in [2, 3] {
        let shared = dir.path().join(format!("ranks{size}"));
        let results = train_ranks(size, |_| options(&shared, 5, 2), |_, _, _| {});
        let mut losses = Vec::new();
        for (result, rank_losses) in results {
            result.unwrap();
            losses.push(rank_losses);
        }
        assert!(losses.iter().all(|l| l == &losses[0]), "every rank reports the same losses");
        assert_eq!(common::file_names(&shared), common::file_names(&one));
        let d =
            common::relative_difference(&one.join("ckpt_2.safetensors"), &shared.join("ckpt_2.safetensors"));
        assert!(d < 1e-5, "{size} ranks: relative difference {d:e}");
    }
}

/// A stop asked of one rank only stops every rank after the same step, and rank 0 saves there.
#[test]
fn a_stop_asked_of_one_rank_stops_all_at_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    let results = train_ranks(
        2,
        |_| options(dir.path(), 5, 3),
        |rank, e, stop| {
            if let (1, Event::Step(s)) = (rank, e) {
                if s.step == 40 {
                    // Rank 0 is told nothing: it must learn it from the step's agreement.
                    stop.raise();
                }
            }
        },
    );
    for (result, losses) in results {
        assert!(result.unwrap_err().is::<train::Interrupted>());
        assert_eq!(losses.len(), 40, "40 steps on each rank");
    }
    assert!(dir.path().join("interrupted.safetensors").exists());
}

/// Ranks that start from different settings are refused before the first step, on every rank.
#[test]
fn ranks_that_disagree_are_refused_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let results = train_ranks(2, |rank| options(dir.path(), 5 + rank as u64, 1), |_, _, _| {});
    for (result, losses) in results {
        let err = format!("{:#}", result.unwrap_err());
        assert!(err.contains("differ between the 2 ranks"), "{err}");
        assert!(losses.is_empty());
    }
    assert!(!dir.path().join("ckpt_1.safetensors").exists());
}

/// A stop after an epoch's last batch (before the epoch's end) saves a point at that batch; the
/// run resumes from it by ending the epoch, and goes on bit for bit as if never stopped.
#[test]
fn a_stop_after_an_epochs_last_batch_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    train::run(&options(&straight, 5, 2), &mut |_: &Event| {}).unwrap();
    let stopped = dir.path().join("stopped");
    let o = options(&stopped, 5, 2);
    let (stop, mut per_epoch) = (o.stop.clone(), 0);
    let result = train::run(&o, &mut |e: &Event| match e {
        Event::Started(s) => per_epoch = s.batches_per_epoch,
        Event::Step(s) if s.epoch == 1 && s.batch + 1 == per_epoch => {
            stop.raise();
        }
        _ => {}
    });
    assert!(result.unwrap_err().is::<train::Interrupted>());
    let mut again = options(&stopped, 5, 2);
    again.origin = Origin::Resume(stopped.clone());
    train::run(&again, &mut |_: &Event| {}).unwrap();
    let name = "ckpt_2.safetensors";
    assert_eq!(common::tensor_bytes(&stopped.join(name)), common::tensor_bytes(&straight.join(name)));
}
