//! A small team of threads that wait for the next product spinning, not sleeping: for batch-1
//! sampling, whose step is a few tens of microseconds. Waking a pool's sleeping workers costs
//! about as much again (an empty `rayon::broadcast` measured 14 µs on a 2-core VM), so each
//! sampler that needs it owns a team whose helpers spin between steps and park only after a
//! while without work (an idle server's sampler costs nothing).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper spins without work before it parks.
const SPIN: Duration = Duration::from_micros(500);

/// The work of one call: called once by each member with (member, members).
type Work<'a> = dyn Fn(usize, usize) + Sync + 'a;

struct Shared {
    /// Incremented for each call; a helper runs the work when it sees a new value.
    epoch: AtomicU64,
    /// Helpers done with the current call.
    done: AtomicUsize,
    /// A helper's work panicked in the current call.
    panicked: AtomicBool,
    /// The current call's work; written only while no helper reads it (between calls).
    work: UnsafeCell<Option<*const Work<'static>>>,
    /// Whether each helper is (about to be) parked.
    parked: Vec<AtomicBool>,
    stop: AtomicBool,
}

// SAFETY: `work` is written by the caller only between calls (every helper has finished the
// previous one and none starts the next before the epoch moves), and read by helpers only
// during a call; the rest are atomics.
unsafe impl Sync for Shared {}
// SAFETY: as for Sync; the raw pointer is to work the caller keeps alive for the whole call.
unsafe impl Send for Shared {}

/// The calling thread and `members − 1` helpers.
pub(crate) struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

impl Team {
    /// A team of `members` (at least 1: the caller alone).
    pub fn new(members: usize) -> Team {
        let helpers_count = members.max(1) - 1;
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            work: UnsafeCell::new(None),
            parked: (0..helpers_count).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
        });
        let helpers = (0..helpers_count)
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("charrnn-team-{}", i + 1))
                    .spawn(move || help(&shared, i, helpers_count + 1))
                    .expect("a thread for the sampler's team")
            })
            .collect();
        Team { shared, helpers }
    }

    /// Members, the caller included.
    pub fn members(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `work(member, members)` on every member at once (the caller is member 0) and
    /// returns when all are done.
    pub fn run(&self, work: &Work<'_>) {
        let n = self.members();
        if n == 1 {
            return work(0, 1);
        }
        let s = &*self.shared;
        // SAFETY: no helper reads `work` now: each finished the previous call (`done` reached
        // n − 1 before the last call returned) and waits for the epoch to move. The pointer's
        // lifetime is erased, but this function returns only after every helper is done with it.
        unsafe {
            *s.work.get() =
                Some(std::mem::transmute::<&Work<'_>, &Work<'static>>(work) as *const Work<'static>)
        };
        s.done.store(0, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for (i, parked) in s.parked.iter().enumerate() {
            if parked.load(Ordering::SeqCst) {
                self.helpers[i].thread().unpark();
            }
        }
        // The helpers hold `work` until they are done: wait for them even if this part panics.
        let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(0, n)));
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < n - 1 {
            spin(&mut spins);
        }
        if let Err(panic) = own {
            std::panic::resume_unwind(panic);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a helper of the sampler's team panicked");
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        for h in self.helpers.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// One turn of a wait: a pause, and every 1024th a yield of the core, so that a waiting
/// thread gives way where there are more threads than cores (several samplers, an emulator).
fn spin(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if spins.is_multiple_of(1024) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Helper `i`'s loop (member i + 1 of `members`).
fn help(s: &Shared, i: usize, members: usize) {
    let mut seen = 0;
    loop {
        let since = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Ordering::Acquire) == seen {
            spin(&mut spins);
            if spins.is_multiple_of(1024) && since.elapsed() > SPIN {
                // Announce the park, then look once more: the caller sets the epoch before
                // it reads the flag, so one of the two sees the other (both SeqCst).
                s.parked[i].store(true, Ordering::SeqCst);
                if s.epoch.load(Ordering::SeqCst) == seen {
                    std::thread::park();
                }
                s.parked[i].store(false, Ordering::SeqCst);
            }
        }
        seen = s.epoch.load(Ordering::Acquire);
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the caller wrote `work` before moving the epoch and keeps it alive until
        // this helper counts itself done.
        let work = unsafe { (*s.work.get()).expect("work for the call") };
        // SAFETY: as above: the pointer is valid for the whole call.
        let ran =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*work)(i + 1, members) }));
        if ran.is_err() {
            s.panicked.store(true, Ordering::SeqCst);
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_runs_each_call_once_and_the_call_waits_for_all() {
        for members in [1, 2, 3] {
            let team = Team::new(members);
            let counts: Vec<AtomicUsize> = (0..members).map(|_| AtomicUsize::new(0)).collect();
            for call in 0..300 {
                if call == 150 {
                    // Long enough for the helpers to park: they must wake for the next call.
                    std::thread::sleep(SPIN * 4);
                }
                team.run(&|m, n| {
                    assert_eq!(n, members);
                    counts[m].fetch_add(1, Ordering::Relaxed);
                });
                for c in &counts {
                    assert_eq!(c.load(Ordering::Relaxed), call + 1);
                }
            }
        }
    }
}
