//! `serve --reload`: a thread that looks for a newer checkpoint in the served folder and hands
//! it to the sampler, which switches to it between requests. A file that does not load is
//! refused once (logged) and the model in service stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use charrnn_core::checkpoint;

use super::{batcher, load, State};

/// How often the folder is looked at.
const EVERY: Duration = Duration::from_millis(500);

/// A file as last seen: its path, size and modification time.
type Seen = (PathBuf, u64, Option<SystemTime>);

fn seen(path: &Path) -> Option<Seen> {
    let m = std::fs::metadata(path).ok()?;
    Some((path.to_path_buf(), m.len(), m.modified().ok()))
}

pub fn watch(folder: PathBuf, state: Arc<State>) {
    let current = state.served.read().map(|s| seen(&s.path)).unwrap_or_default();
    let spawned = std::thread::Builder::new().name("reload".into()).spawn(move || {
        let mut last = current;
        loop {
            std::thread::sleep(EVERY);
            let Ok(path) = checkpoint::resolve(&folder) else { continue };
            let now = seen(&path);
            if now.is_none() || now == last {
                continue;
            }
            // A file being written is replaced atomically by `train`, but wait for its size to
            // settle in case something else copies it in.
            std::thread::sleep(Duration::from_millis(100));
            if seen(&path) != now {
                continue;
            }
            last = now;
            match load(&path, state.limits.max_streams, &state.compute) {
                Ok((engine, served)) => {
                    eprintln!("reload: {} loaded; switching between requests", path.display());
                    let shared = state.clone();
                    let announce = Box::new(move || {
                        eprintln!("reload: now serving {}", served.path.display());
                        if let Ok(mut s) = shared.served.write() {
                            *s = Arc::new(served);
                        }
                    });
                    if state
                        .commands
                        .send(batcher::Command::Switch(batcher::Switch {
                            engine: Box::new(engine),
                            announce,
                        }))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    eprintln!("reload: refusing {}: {e:#}; still serving the previous model", path.display())
                }
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("reload: cannot start the watcher ({e}); serving without --reload");
    }
}
