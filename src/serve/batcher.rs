//! The one thread that samples for every request. Requests join the running batch between
//! steps (at the zero state, warming on their start) and leave when done, cancelled or out of
//! time; each step feeds every present sample at once, so the weights are read once per step
//! however many clients there are. A request's text depends only on its own options and seed
//! (see `model::job`), never on what else is running.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::data::vocab::Vocab;
use crate::model::job::{Job, SampleOptions};
use crate::model::sample::Sampler;

/// What a request hears from the batcher, in order: one `Text` per sample with its start (the
/// request is running), more `Text` as it is produced, then `Done` or `Error`.
#[derive(Debug)]
pub enum Event {
    Text { sample: usize, text: String },
    Done { samples: Vec<String>, chars_per_s: f64 },
    Error { status: u16, message: String },
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
    fn fail(&self, status: u16, message: &str) {
        let _ = self.events.send(Event::Error { status, message: message.to_string() });
    }
}

/// A model to sample from: the weights, ready to step, and the characters they know.
pub struct Engine {
    pub sampler: Sampler,
    pub vocab: Vocab,
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
    job: Job,
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
                        r.request.fail(503, "the server is shutting down");
                    }
                    for r in waiting {
                        r.fail(503, "the server is shutting down");
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
        if stepped.is_err() {
            // A bug, not a client's doing: fail what was running and carry on from a clean
            // state rather than take the server down.
            eprintln!("error: the sampler failed; {} request(s) were ended", running.len());
            for r in &running {
                r.request.fail(500, "the sampler failed on this request; please report it");
            }
            running.clear();
            engine.sampler.retain_rows(|_| false);
        }
    }
}

/// Starts a request: its rows join at the zero state, and each sample's start is sent.
fn admit(engine: &mut Engine, running: &mut Vec<Running>, request: Request) {
    let job = match Job::new(&engine.vocab, &request.options) {
        Ok(job) => job,
        Err(e) => {
            request.fail(400, &format!("start: {e}"));
            return;
        }
    };
    if let Err(e) = engine.sampler.add_rows(job.samples()) {
        request.fail(503, &e.to_string());
        return;
    }
    let r = Running { job, request, started: Instant::now(), sent_at: Instant::now() };
    for sample in 0..r.job.samples() {
        r.send(Event::Text { sample, text: r.job.start().to_string() });
    }
    running.push(r);
}

/// One step of every running request: warm on the start, or draw, hand out the new text and
/// feed the draws back. Requests that end leave the batch.
fn step(engine: &mut Engine, running: &mut Vec<Running>) {
    let v = engine.sampler.vocab_size();
    let mut ids = Vec::with_capacity(engine.sampler.rows());
    let mut keep_rows = Vec::with_capacity(engine.sampler.rows());
    let mut keep = Vec::with_capacity(running.len());
    let mut first_row = 0;
    for r in running.iter_mut() {
        let n = r.job.samples();
        let logits = &engine.sampler.logits()[first_row * v..(first_row + n) * v];
        first_row += n;
        let alive = if r.request.events.is_closed() {
            false // the client has gone: stop at once
        } else if r.started.elapsed() > r.request.time_limit {
            let limit = r.request.time_limit.as_secs_f64();
            r.request.fail(
                503,
                &format!("the request ran past the {limit} s time limit; ask for fewer characters"),
            );
            false
        } else if let Some(id) = r.job.next_prime() {
            ids.extend(std::iter::repeat_n(id, n));
            true
        } else {
            let before = ids.len();
            r.job.pick(logits, &mut ids);
            let over = r.job.accept(&ids[before..], &engine.vocab);
            let mut sent = true;
            if over || r.sent_at.elapsed() >= SEND_EVERY {
                for (sample, text) in r.job.take_new_text(over) {
                    sent &= r.send(Event::Text { sample, text });
                }
                r.sent_at = Instant::now();
            }
            if over {
                let seconds = r.started.elapsed().as_secs_f64().max(1e-9);
                let chars_per_s = r.job.produced_chars() as f64 / seconds;
                r.send(Event::Done { samples: r.job.texts(), chars_per_s });
            }
            if over || !sent {
                ids.truncate(before);
            }
            !over && sent
        };
        keep_rows.extend(std::iter::repeat_n(alive, n));
        keep.push(alive);
    }
    engine.sampler.retain_rows(|row| keep_rows[row]);
    let mut kept = keep.iter();
    running.retain(|_| *kept.next().expect("one flag per request"));
    if !ids.is_empty() {
        engine.sampler.step(&ids);
    }
}
