//! `charrnn serve`: a checkpoint behind a small HTTP API and a page to try it. The HTTP side
//! (axum on tokio) checks requests and relays text; one sampling thread ([`batcher`]) runs
//! every request in one batch.

mod api;
pub mod batcher;
mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use charrnn_core::data::vocab::Vocab;
use charrnn_core::info::{self, Info};
use charrnn_core::sample::Engine;
use charrnn_core::{budget, checkpoint, Compute};

/// What a server allows one request and all of them together.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_length: usize,
    pub max_samples: usize,
    /// Samples generating at once, over all requests.
    pub max_streams: usize,
    pub time_limit: Duration,
}

pub struct ServeOptions {
    pub checkpoint: PathBuf,
    pub addr: SocketAddr,
    pub limits: Limits,
    /// Watch the checkpoint folder for newer files.
    pub reload: bool,
    /// Where and how the sampling products run.
    pub compute: Compute,
}

/// The model being served, as requests see it.
pub struct Served {
    pub path: PathBuf,
    pub vocab: Vocab,
    /// What `info --json` shows.
    pub info: Info,
}

pub struct State {
    pub limits: Limits,
    pub compute: Compute,
    pub commands: mpsc::Sender<batcher::Command>,
    pub streams_in_use: Arc<AtomicUsize>,
    pub served: RwLock<Arc<Served>>,
}

/// Loads a checkpoint for serving: its sampling engine (room for `streams` samples at once,
/// none running yet) and its description.
fn load(path: &std::path::Path, streams: usize, compute: &Compute) -> Result<(Engine, Served)> {
    let ckpt = checkpoint::load(path, compute)?;
    let info = info::info_of(path, &ckpt, &mut |n| eprintln!("{n}"))?;
    budget::check(
        "sampling",
        budget::sampling_bytes(&ckpt.model.config, streams),
        &format!("--max-streams {streams}"),
    )?;
    let engine = Engine::new(&ckpt.model, &ckpt.vocab, streams)?;
    Ok((engine, Served { path: path.to_path_buf(), vocab: ckpt.vocab, info }))
}

/// Runs the server until Ctrl-C or SIGTERM.
pub fn run(o: ServeOptions) -> Result<()> {
    if o.limits.max_samples > o.limits.max_streams {
        anyhow::bail!(
            "--max-samples {} is more than --max-streams {}: such a request could never run; lower --max-samples",
            o.limits.max_samples,
            o.limits.max_streams
        );
    }
    let path = checkpoint::resolve(&o.checkpoint)?;
    let (engine, served) = load(&path, o.limits.max_streams, &o.compute)?;
    eprintln!("serving {} ({} parameters)", path.display(), served.info.parameters);
    let (commands, receive) = mpsc::channel();
    let sampling = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || batcher::run(engine, receive))
        .context("cannot start the sampling thread")?;
    let state = Arc::new(State {
        limits: o.limits.clone(),
        compute: o.compute.clone(),
        commands,
        streams_in_use: Arc::new(AtomicUsize::new(0)),
        served: RwLock::new(Arc::new(served)),
    });
    if o.reload {
        reload::watch(o.checkpoint.clone(), state.clone());
    }
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
        let local = listener.local_addr()?;
        eprintln!("listening on http://{local}");
        let shut = state.clone();
        axum::serve(listener, api::router(state.clone()))
            .with_graceful_shutdown(async move {
                stop_signal().await;
                eprintln!("shutting down: ending the running requests");
                let _ = shut.commands.send(batcher::Command::Shutdown);
            })
            .await
            .context("the server failed")
    })?;
    drop(state);
    let _ = sampling.join();
    Ok(())
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
