//! `charrnn serve`: a checkpoint behind a small HTTP API (and OpenAI's completions API) and a
//! page to try it. Its own accept loop (`conn`) keeps hostile clients in check; every request
//! passes the access checks (`access`); the HTTP side (axum on tokio) checks requests and
//! relays text; one sampling thread (`batcher`) runs every request in one batch, within the
//! server's and each client's share of rows (`streams`).

mod access;
mod api;
pub mod batcher;
mod conn;
mod openai;
mod reload;
mod streams;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use charrnn_core::data::vocab::Vocab;
use charrnn_core::info;
use charrnn_core::sample::Engine;
use charrnn_core::{budget, checkpoint, Compute};

pub use access::Access;
pub use conn::Timeouts;

/// What a server allows one request and all of them together.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_length: usize,
    pub max_samples: usize,
    /// Samples generating at once, over all requests.
    pub max_streams: usize,
    /// Samples generating at once for one client.
    pub max_streams_per_client: usize,
    /// Characters of a request's start.
    pub max_start_chars: usize,
    pub time_limit: Duration,
    /// From a request's headers to the end of its body.
    pub body_timeout: Duration,
}

pub struct ServeOptions {
    pub checkpoint: PathBuf,
    pub addr: SocketAddr,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long running requests get to end when the server stops.
    pub shutdown_timeout: Duration,
    pub access: Access,
    /// Serve an address other machines reach without an API key.
    pub no_auth: bool,
    /// Watch the checkpoint folder for newer files.
    pub reload: bool,
    /// Where and how the sampling products run.
    pub compute: Compute,
}

/// The model being served, as requests see it.
pub struct Served {
    pub path: PathBuf,
    /// The checkpoint's file name: what clients are shown of where it is.
    pub name: String,
    pub vocab: Vocab,
    /// What `info --json` shows, serialised once.
    pub info_json: Bytes,
}

pub struct State {
    pub limits: Limits,
    pub compute: Compute,
    pub access: Access,
    pub commands: mpsc::Sender<batcher::Command>,
    pub streams: Arc<streams::Streams>,
    pub served: RwLock<Arc<Served>>,
    /// True while the sampling thread runs.
    pub sampling: Arc<AtomicBool>,
}

impl State {
    /// Whether the sampling thread is running.
    pub fn sampler_alive(&self) -> bool {
        self.sampling.load(Ordering::SeqCst)
    }
}

/// Loads a checkpoint for serving: its sampling engine (room for `streams` samples at once,
/// none running yet) and its description.
fn load(path: &Path, streams: usize, compute: &Compute) -> Result<(Engine, Served)> {
    let ckpt = checkpoint::load(path, compute)?;
    let info = info::info_of(path, &ckpt, &mut |n| eprintln!("{n}"))?;
    budget::check(
        "sampling",
        budget::sampling_bytes(&ckpt.model.config, streams),
        &format!("--max-streams {streams}"),
    )?;
    let engine = Engine::new(&ckpt.model, &ckpt.vocab, streams)?;
    let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let info_json = Bytes::from(serde_json::to_vec(&info)?);
    Ok((engine, Served { path: path.to_path_buf(), name, vocab: ckpt.vocab, info_json }))
}

/// Refuses what could never work or would expose the model unasked: a request size no
/// stream budget can hold, and an address other machines reach with no API key.
fn check(o: &ServeOptions) -> Result<()> {
    if o.limits.max_samples > o.limits.max_streams {
        bail!(
            "--max-samples {} is more than --max-streams {}: such a request could never run; lower --max-samples",
            o.limits.max_samples,
            o.limits.max_streams
        );
    }
    if !o.addr.ip().is_loopback() && !o.access.needs_key() && !o.no_auth {
        bail!(
            "--host {} lets every machine that can reach this one use the model, and no API key is set; give one with --api-key (or CHARRNN_API_KEY, --api-key-file), or pass --no-auth if that is what you want",
            o.addr.ip()
        );
    }
    Ok(())
}

/// Runs the server until Ctrl-C or SIGTERM: then it stops accepting, ends the running requests
/// with an error event, and exits within `shutdown_timeout` whatever the clients do; a second
/// signal exits at once.
pub fn run(o: ServeOptions) -> Result<()> {
    check(&o)?;
    let path = checkpoint::resolve(&o.checkpoint)?;
    let (engine, served) = load(&path, o.limits.max_streams, &o.compute)?;
    let parameters = serde_json::from_slice::<serde_json::Value>(&served.info_json)?["parameters"].clone();
    eprintln!("serving {} ({parameters} parameters)", path.display());
    let (commands, receive) = mpsc::channel();
    let sampling = Arc::new(AtomicBool::new(true));
    let alive = sampling.clone();
    let sampler = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || batcher::run(engine, receive, alive))
        .context("cannot start the sampling thread")?;
    let state = Arc::new(State {
        limits: o.limits.clone(),
        compute: o.compute.clone(),
        access: o.access.clone(),
        commands,
        streams: streams::Streams::new(o.limits.max_streams, o.limits.max_streams_per_client),
        served: RwLock::new(Arc::new(served)),
        sampling,
    });
    if o.reload {
        reload::watch(o.checkpoint.clone(), state.clone());
    }
    let max_connections = connection_cap(o.max_connections);
    // One thread is plenty for relaying text; more would take CPU from the sampler, whose
    // products already use every core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(o.addr)
            .await
            .with_context(|| format!("cannot listen on {}; is the port in use? try --port 0", o.addr))?;
        eprintln!("listening on http://{}", listener.local_addr()?);
        let connections = conn::Connections::new(max_connections, o.timeouts);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let shut = state.clone();
        tokio::spawn(async move {
            stop_signal().await;
            eprintln!("shutting down: ending the running requests (a second Ctrl-C exits now)");
            let _ = shut.commands.send(batcher::Command::Shutdown);
            let _ = stop.send(true);
            stop_signal().await;
            eprintln!("exiting now");
            std::process::exit(130);
        });
        conn::accept(listener, api::router(state.clone()), connections.clone(), stopped).await;
        // The connections finish their answers (the sampler has ended every request), unless
        // their clients keep them past the deadline.
        let deadline = Instant::now() + o.shutdown_timeout;
        while connections.count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    })?;
    // Whatever connections are left are dropped with the runtime, not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    drop(state);
    let _ = sampler.join();
    Ok(())
}

/// The most connections to keep open: `wanted`, below the open-file limit (raised to its
/// ceiling first), leaving room for the checkpoint, reloads and the sampler's own files.
fn connection_cap(wanted: usize) -> usize {
    match raise_file_limit() {
        Some(files) => wanted.min(files.saturating_sub((files / 4).clamp(8, 64)).max(1)),
        None => wanted,
    }
}

/// Raises this process's open-file limit to its hard ceiling; the limit now.
fn raise_file_limit() -> Option<usize> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct it is given, which lives on this frame.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            // SAFETY: setrlimit reads the struct it is given; failing leaves the limit as it was.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        Some(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
    }
    #[cfg(not(unix))]
    None
}

/// Ctrl-C, or SIGTERM where there is one.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
