//! The one thread that samples for every request, on the core's sampling engine. Requests
//! join the running batch between steps (at the zero state, warming on their start) and leave
//! when done, cancelled or out of time; each step feeds every present sample at once, so the
//! weights are read once per step however many clients there are. A request's text depends
//! only on its own options and seed (see `charrnn_core::sample::job`), never on what else is
//! running. After a reload the new model takes new requests at once, while the old one
//! finishes its own.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use charrnn_core::sample::{Engine, Job, JobId, SampleOptions};
use tokio::sync::mpsc::UnboundedSender;

use super::streams::Slot;

/// What a request hears from the batcher, in order: one `Text` per sample with its start (the
/// request is running), more `Text` as it is produced, then `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Text {
        sample: usize,
        text: String,
    },
    /// Each sample's whole text (the start first), whether a stop string ended it (else its
    /// length did), and the request's rate.
    Done {
        samples: Vec<String>,
        stopped: Vec<bool>,
        chars_per_s: f64,
    },
    Failed(Failure),
}

/// Why a request ended without its samples.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Its start has characters the model lacks (the message says which).
    BadStart(String),
    /// The sampler had no room for its samples.
    Full(String),
    /// It ran past the time limit, in seconds.
    TimeLimit(f64),
    /// The server is stopping.
    ShuttingDown,
    /// The sampler failed (a bug, not the client's doing).
    SamplerFailed,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::BadStart(why) => write!(f, "start: {why}"),
            Failure::Full(why) => f.write_str(why),
            Failure::TimeLimit(limit) => {
                write!(f, "the request ran past the {limit} s time limit; ask for fewer characters")
            }
            Failure::ShuttingDown => f.write_str("the server is shutting down"),
            Failure::SamplerFailed => f.write_str("the sampler failed on this request; please report it"),
        }
    }
}

pub struct Request {
    pub options: SampleOptions,
    pub time_limit: Duration,
    pub events: UnboundedSender<Event>,
    pub slot: Slot,
}

impl Request {
    /// Ends the request with an error (unheard if its client has gone).
    fn fail(&self, failure: Failure) {
        let _ = self.events.send(Event::Failed(failure));
    }
}

/// A newer model to serve: new requests go to it from now on; `announce` runs when it does.
pub struct Switch {
    pub engine: Box<Engine>,
    pub announce: Box<dyn FnOnce() + Send>,
}

pub enum Command {
    Run(Request),
    Switch(Switch),
    Shutdown,
}

struct Running {
    /// Its job in the engine.
    id: JobId,
    request: Request,
    started: Instant,
    /// When text was last sent (the job keeps what has not been).
    sent_at: Instant,
}

/// How long produced text may wait to be sent with more. One event per character would cost
/// the HTTP side as much CPU as the sampling; a reader does not see 20 ms.
const SEND_EVERY: Duration = Duration::from_millis(20);

impl Running {
    fn send(&self, event: Event) -> bool {
        self.request.events.send(event).is_ok()
    }
}

/// A model in service and the requests it runs.
struct Live {
    engine: Engine,
    running: Vec<Running>,
}

/// Marks the sampler as stopped when the thread ends, however it ends: `/healthz` reads it.
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Serves commands until `Shutdown` or until every sender is gone; `alive` is true while it
/// does.
pub fn run(engine: Engine, commands: Receiver<Command>, alive: Arc<AtomicBool>) {
    let _alive = Alive(alive);
    // The newest model last: it takes the new requests.
    let mut models = vec![Live { engine, running: Vec::new() }];
    let mut waiting: Vec<Request> = Vec::new();
    loop {
        // An older model leaves once its last request has; the newest stays.
        let newest = models.len() - 1;
        let mut index = 0..;
        models.retain(|m| index.next() == Some(newest) || !m.running.is_empty());
        let idle = models.iter().all(|m| m.running.is_empty());
        // Block for work when idle; otherwise take what has arrived and keep stepping.
        let mut arrived = Vec::new();
        if idle && waiting.is_empty() {
            match commands.recv() {
                Ok(c) => arrived.push(c),
                Err(_) => return,
            }
        }
        loop {
            match commands.try_recv() {
                Ok(c) => arrived.push(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if arrived.is_empty() && idle => return,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        for command in arrived {
            match command {
                Command::Run(request) => waiting.push(request),
                Command::Switch(next) => {
                    models.push(Live { engine: *next.engine, running: Vec::new() });
                    (next.announce)();
                }
                Command::Shutdown => {
                    for r in models.iter().flat_map(|m| &m.running) {
                        r.request.fail(Failure::ShuttingDown);
                    }
                    for r in waiting {
                        r.fail(Failure::ShuttingDown);
                    }
                    return;
                }
            }
        }
        let newest = models.last_mut().expect("a model in service");
        for request in waiting.drain(..) {
            guarded(newest, |live| admit(&mut live.engine, &mut live.running, request));
        }
        for live in models.iter_mut().filter(|m| !m.running.is_empty()) {
            guarded(live, |live| step(&mut live.engine, &mut live.running));
        }
    }
}

/// Runs `work` on a model; a panic or an error there (a bug, not a client's doing) fails the
/// model's running requests and leaves it clean, rather than taking the server down.
fn guarded(live: &mut Live, work: impl FnOnce(&mut Live) -> anyhow::Result<()>) {
    let done = catch_unwind(AssertUnwindSafe(|| work(&mut *live)));
    if matches!(done, Ok(Ok(()))) {
        return;
    }
    let why = match done {
        Ok(Err(e)) => format!(": {e:#}"),
        _ => String::new(),
    };
    eprintln!("error: the sampler failed{why}; {} request(s) were ended", live.running.len());
    for r in &live.running {
        r.request.fail(Failure::SamplerFailed);
    }
    live.running.clear();
    live.engine.clear();
}

/// Starts a request: its rows join at the zero state, and each sample's start is sent.
fn admit(engine: &mut Engine, running: &mut Vec<Running>, request: Request) -> anyhow::Result<()> {
    let job = match Job::new(engine.vocab(), &request.options) {
        Ok(job) => job,
        Err(e) => {
            request.fail(Failure::BadStart(e.to_string()));
            return Ok(());
        }
    };
    let (samples, start) = (job.samples(), job.start().to_string());
    let id = match engine.admit(job) {
        Ok(id) => id,
        Err(refusal) => {
            request.fail(Failure::Full(refusal.to_string()));
            return Ok(());
        }
    };
    let r = Running { id, request, started: Instant::now(), sent_at: Instant::now() };
    for sample in 0..samples {
        r.send(Event::Text { sample, text: start.clone() });
    }
    running.push(r);
    Ok(())
}

/// One step of every running request: those whose client has gone or whose time is up leave
/// first; the engine warms or draws the others; new text is handed out every `SEND_EVERY`,
/// and a request that ended gets the rest of its text and its samples.
fn step(engine: &mut Engine, running: &mut Vec<Running>) -> anyhow::Result<()> {
    running.retain(|r| {
        let limit = r.request.time_limit;
        let gone = if r.request.events.is_closed() {
            true // the client has gone: stop at once
        } else if r.started.elapsed() > limit {
            r.request.fail(Failure::TimeLimit(limit.as_secs_f64()));
            true
        } else {
            false
        };
        if gone {
            engine.remove(r.id);
        }
        !gone
    });
    for (id, mut job) in engine.step()? {
        let Some(at) = running.iter().position(|r| r.id == id) else { continue };
        let r = running.remove(at);
        for (sample, text) in job.take_new_text(true) {
            r.send(Event::Text { sample, text });
        }
        let seconds = r.started.elapsed().as_secs_f64().max(1e-9);
        let chars_per_s = job.produced_chars() as f64 / seconds;
        let stopped = (0..job.samples()).map(|s| job.stopped(s)).collect();
        r.send(Event::Done { samples: job.texts(), stopped, chars_per_s });
    }
    running.retain_mut(|r| {
        if r.sent_at.elapsed() < SEND_EVERY {
            return true;
        }
        let Some(job) = engine.job_mut(r.id) else { return false };
        let sent =
            job.take_new_text(false).into_iter().all(|(sample, text)| r.send(Event::Text { sample, text }));
        r.sent_at = Instant::now();
        if !sent {
            engine.remove(r.id);
        }
        sent
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However the sampling thread ends, a panic included, the flag `/healthz` reads turns
    /// false.
    #[test]
    fn the_sampler_is_marked_stopped_when_its_thread_ends() {
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let ended = std::thread::spawn(move || {
            let _alive = Alive(flag);
            panic!("a bug in the sampler");
        })
        .join();
        assert!(ended.is_err());
        assert!(!alive.load(Ordering::SeqCst));
    }
}
