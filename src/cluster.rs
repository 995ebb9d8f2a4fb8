//! `train` on several processes: under an MPI launcher (`mpirun -n N charrnn train …`) each
//! process is one rank of an MPI world, which carries the core's collective operations. Built
//! without the `mpi` feature, a launch of several ranks is refused rather than run as N
//! separate trainings fighting over one folder.

/// How many ranks the launcher started, when it is an MPI launcher (Open MPI, MPICH's Hydra,
/// PMIx): its environment says so before MPI is initialised.
pub fn launched_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse().ok())
}

#[cfg(feature = "mpi")]
pub use with_mpi::{join, World};

#[cfg(feature = "mpi")]
mod with_mpi {
    use std::sync::Mutex;
    use std::time::Instant;

    use anyhow::{bail, Result};
    use charrnn_core::collective::Collective;
    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    /// The MPI world of this job, initialised once per process and finalised when dropped.
    pub struct World {
        comm: SimpleCommunicator,
        /// MPI is initialised for serialised calls (training calls from a rayon worker, not
        /// the main thread); this lock is the serialisation.
        calls: Mutex<Traffic>,
        rank: usize,
        size: usize,
        // Dropped last: finalises MPI.
        _universe: Universe,
    }

    // SAFETY: the communicator is a handle owned by MPI, which was initialised at
    // MPI_THREAD_SERIALIZED or above (checked in `join`); every call through it takes `calls`,
    // so no two threads are ever inside MPI at once.
    unsafe impl Send for World {}
    // SAFETY: as for Send: all use goes through `calls`.
    unsafe impl Sync for World {}

    /// The gradients' all-reduces since the last look: how many, their bytes, their seconds
    /// (waiting for the slowest rank included).
    #[derive(Default)]
    struct Traffic {
        sums: u64,
        bytes: u64,
        seconds: f64,
    }

    /// The MPI world when the process was started by an MPI launcher; None otherwise (one
    /// process alone, MPI not initialised).
    pub fn join() -> Result<Option<World>> {
        if super::launched_ranks().is_none() {
            return Ok(None);
        }
        let Some((universe, threading)) = mpi::initialize_with_threading(mpi::Threading::Serialized) else {
            bail!("MPI could not be initialised (it was already)");
        };
        if threading < mpi::Threading::Serialized {
            bail!(
                "this MPI library offers only {threading:?} threading; charrnn needs Serialized or Multiple"
            );
        }
        let comm = universe.world();
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        Ok(Some(World { comm, calls: Mutex::new(Traffic::default()), rank, size, _universe: universe }))
    }

    impl World {
        /// Ends every rank of the job with `code`: a rank that fails must not leave the others
        /// waiting in a collective.
        pub fn abort(&self, code: i32) -> ! {
            self.comm.abort(code)
        }

        /// What the gradients' all-reduces cost since the last call, as a line for the log:
        /// None when there were none (one rank, or the sums went through NCCL).
        pub fn traffic_note(&self, epoch_seconds: f64) -> Option<String> {
            let mut t = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            let Traffic { sums, bytes, seconds } = std::mem::take(&mut *t);
            (sums > 0).then(|| {
                format!(
                    "all-reduce over {} ranks: {:.1} MB of gradients per step, {:.1} ms per step ({:.1}% of the epoch's {epoch_seconds:.1} s)",
                    self.size,
                    bytes as f64 / sums as f64 / 1e6,
                    seconds / sums as f64 * 1e3,
                    100.0 * seconds / epoch_seconds.max(1e-9)
                )
            })
        }

        /// `values` reduced by `op` over every rank, in place; `counted` (the gradients' sums)
        /// for [`World::traffic_note`].
        fn reduce<T: Copy + Equivalence>(&self, values: &mut [T], op: SystemOperation, counted: bool) {
            let mut traffic = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            let started = Instant::now();
            let send = values.to_vec();
            self.comm.all_reduce_into(&send[..], values, op);
            if counted {
                traffic.sums += 1;
                traffic.bytes += std::mem::size_of_val(values) as u64;
                traffic.seconds += started.elapsed().as_secs_f64();
            }
        }
    }

    // MPI's default error handler ends the job on any failure (a rank gone included), so each
    // call returns only when it worked.
    impl Collective for World {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        /// The gradients (the only f32 sums).
        fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
            self.reduce(values, SystemOperation::sum(), true);
            Ok(())
        }
        fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
            self.reduce(values, SystemOperation::sum(), false);
            Ok(())
        }
        fn max_u64(&self, values: &mut [u64]) -> Result<()> {
            self.reduce(values, SystemOperation::max(), false);
            Ok(())
        }
        fn broadcast_u64(&self, values: &mut [u64]) -> Result<()> {
            let _serial = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            self.comm.process_at_rank(0).broadcast_into(values);
            Ok(())
        }
    }
}

/// Without MPI there is only one process: refuses a launch of several.
#[cfg(not(feature = "mpi"))]
pub fn refuse_several() -> anyhow::Result<()> {
    match launched_ranks() {
        Some(n) if n > 1 => anyhow::bail!(
            "started as one of {n} MPI ranks, but this charrnn was built without MPI: build it with `cargo build --release --features mpi` (needs an MPI library, e.g. Debian's libopenmpi-dev)"
        ),
        _ => Ok(()),
    }
}
