//! Ctrl-C and SIGTERM for the commands that own them (`serve` listens on its own runtime): one
//! handler for the process, installed once, running what the command in progress asked for.

use std::path::Path;
use std::sync::{Mutex, Once};

use anyhow::{anyhow, Result};
use charrnn_core::train::StopFlag;

type Action = Box<dyn FnMut() + Send>;

static ACTION: Mutex<Option<Action>> = Mutex::new(None);
static INSTALL: Once = Once::new();

/// From now on a signal runs `action` (instead of ending the process).
fn on_signal(action: impl FnMut() + Send + 'static) -> Result<()> {
    *ACTION.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(action));
    let mut installed = Ok(());
    INSTALL.call_once(|| {
        installed = ctrlc::set_handler(|| {
            if let Some(action) = ACTION.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                action();
            }
        });
    });
    installed.map_err(|e| anyhow!("cannot install the Ctrl-C handler: {e}"))
}

/// From now on the first signal raises a training run's stop `flag` (the run stops after the
/// current batch and saves a resumable checkpoint); a second one exits now, after removing any
/// temporary file a checkpoint write may have left in `checkpoint_dir`. `quiet`: says nothing
/// and leaves the folder alone (a rank of a run but the first, which speaks and writes for it).
pub fn stop_training(checkpoint_dir: &Path, flag: &StopFlag, quiet: bool) -> Result<()> {
    let (raised, dir) = (flag.clone(), checkpoint_dir.to_path_buf());
    on_signal(move || {
        if raised.raise() {
            if !quiet {
                charrnn_core::atomic::remove_temporaries(&dir);
                eprintln!("\naborted");
            }
            std::process::exit(130);
        }
        if !quiet {
            eprintln!("\nstopping after this batch (press Ctrl-C again to abort now)");
        }
    })
}

/// From now on a signal removes the file at `path` (if it is still there) and exits with status
/// 130, saying nothing was written: for a download in progress.
pub fn remove_on_interrupt(path: &Path) -> Result<()> {
    let path = path.to_path_buf();
    on_signal(move || {
        let _ = std::fs::remove_file(&path);
        eprintln!("\ninterrupted; nothing was written");
        std::process::exit(130);
    })
}
