//! The one thread that samples for every request, on the core's sampling engine. Requests
//! join the running batch between steps (at the zero state, warming on their start) and leave
//! when done, cancelled or out of time; each step feeds every present sample at once, so the
//! weights are read once per step however many clients there are. A request's text depends
//! only on its own options and seed (see `charrnn_core::sample::job`), never on what else is
//! running.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use charrnn_core::sample::{Engine, Job, JobId, SampleOptions};
use tokio::sync::mpsc::UnboundedSender;

/// What a request hears from the batcher, in order: one `Text` per sample with its start (the
/// request is running), more `Text` as it is produced, then `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Text { sample: usize, text: String },
    Done { samples: Vec<String>, chars_per_s: f64 },
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

/// Sample rows reserved for a request; given back when it is dropped, wherever that happens.
pub struct Slot {
    rows: usize,
    in_use: Arc<AtomicUsize>,
}

impl Slot {
    /// Reserves `rows` of at most `limit`, or None when that many are not free.
    pub fn reserve(in_use: &Arc<AtomicUsize>, rows: usize, limit: usize) -> Option<Slot> {
        in_use
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_add(rows).filter(|&t| t <= limit))
            .ok()?;
        Some(Slot { rows, in_use: in_use.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_use.fetch_sub(self.rows, Ordering::SeqCst);
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

/// A model to serve from the next moment no request is running, and what to do then.
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

/// Serves commands until `Shutdown` or until every sender is gone.
pub fn run(mut engine: Engine, commands: Receiver<Command>) {
    let mut running: Vec<Running> = Vec::new();
    let mut waiting: Vec<Request> = Vec::new();
    let mut switch: Option<Switch> = None;
    loop {
        if running.is_empty() {
            if let Some(next) = switch.take() {
                engine = *next.engine;
                (next.announce)();
            }
        }
        // Block for work when idle; otherwise take what has arrived and keep stepping.
        let mut arrived = Vec::new();
        if running.is_empty() && waiting.is_empty() {
            match commands.recv() {
                Ok(c) => arrived.push(c),
                Err(_) => return,
            }
        }
        loop {
            match commands.try_recv() {
                Ok(c) => arrived.push(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if arrived.is_empty() && running.is_empty() => return,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        for command in arrived {
            match command {
                Command::Run(request) => waiting.push(request),
                Command::Switch(next) => switch = Some(next),
                Command::Shutdown => {
                    for r in &running {
                        r.request.fail(Failure::ShuttingDown);
                    }
                    for r in waiting {
                        r.fail(Failure::ShuttingDown);
                    }
                    return;
                }
            }
        }
        // A model switch waits for the running requests to finish; new ones wait for it.
        if switch.is_none() {
            for request in waiting.drain(..) {
                admit(&mut engine, &mut running, request);
            }
        }
        if running.is_empty() {
            continue;
        }
        let stepped = catch_unwind(AssertUnwindSafe(|| step(&mut engine, &mut running)));
        if !matches!(stepped, Ok(Ok(()))) {
            // A bug, not a client's doing: fail what was running and carry on from a clean
            // state rather than take the server down.
            let why = match stepped {
                Ok(Err(e)) => format!(": {e:#}"),
                _ => String::new(),
            };
            eprintln!("error: the sampler failed{why}; {} request(s) were ended", running.len());
            for r in &running {
                r.request.fail(Failure::SamplerFailed);
            }
            running.clear();
            engine.clear();
        }
    }
}

/// Starts a request: its rows join at the zero state, and each sample's start is sent.
fn admit(engine: &mut Engine, running: &mut Vec<Running>, request: Request) {
    let job = match Job::new(engine.vocab(), &request.options) {
        Ok(job) => job,
        Err(e) => return request.fail(Failure::BadStart(e.to_string())),
    };
    let (samples, start) = (job.samples(), job.start().to_string());
    let id = match engine.admit(job) {
        Ok(id) => id,
        Err(refusal) => return request.fail(Failure::Full(refusal.to_string())),
    };
    let r = Running { id, request, started: Instant::now(), sent_at: Instant::now() };
    for sample in 0..samples {
        r.send(Event::Text { sample, text: start.clone() });
    }
    running.push(r);
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
        r.send(Event::Done { samples: job.texts(), chars_per_s });
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
