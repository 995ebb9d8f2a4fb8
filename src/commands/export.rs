//! `charrnn export`: a trained model written out to run elsewhere — a static web page that
//! samples in the browser (`--web`), an ONNX graph (`--onnx`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use charrnn_core::compute::{Compute, Precision};
use charrnn_core::{atomic, checkpoint, Device, Kernel};

use crate::cli::ExportArgs;
use crate::onnx;

/// The browser's sampler (web/, built by scripts/build-web.sh), embedded by build.rs; empty
/// where it was not built.
const MODULE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/charrnn.wasm"));
const PAGE: &str = include_str!("../../web/page/index.html");
const WORKER: &str = include_str!("../../web/page/worker.js");
const STYLE: &str = include_str!("../../web/page/style.css");
/// The file that marks a folder as an export of ours, which `--force` may then replace.
const MARK: &str = ".charrnn-export";
/// What an export folder holds.
const FILES: [&str; 6] = ["index.html", "style.css", "worker.js", "charrnn.wasm", "model.safetensors", MARK];

pub(super) fn run(a: ExportArgs, kernel: Kernel) -> Result<()> {
    let path = checkpoint::resolve(&a.checkpoint)?;
    // Validated as any load is, so that a damaged checkpoint is refused before anything is
    // written.
    let (ckpt, bytes) =
        checkpoint::load_with_bytes(&path, &Compute::new(Device::Cpu, kernel, Precision::F32)?)?;
    eprintln!("checkpoint {} (epoch {})", path.display(), ckpt.provenance.epoch);
    if let Some(file) = &a.onnx {
        if file.exists() && !a.force {
            bail!("{} already exists; pass --force to replace it", file.display());
        }
        let bytes = onnx::write(file, &ckpt)?;
        eprintln!("wrote {} ({bytes} bytes, ONNX opset 17)", file.display());
    }
    if let Some(dir) = &a.web {
        web(dir, &bytes, a.force)?;
        eprintln!(
            "wrote {}: serve it with any static file server, e.g. `python3 -m http.server -d {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Writes the page, its worker, the module and the checkpoint (the bytes validated) into `dir`.
fn web(dir: &Path, model: &[u8], force: bool) -> Result<()> {
    if MODULE.is_empty() {
        bail!(
            "this charrnn was built without the browser's sampler; run scripts/build-web.sh, then \
             cargo build --release, and export again"
        );
    }
    prepare_folder(dir, force)?;
    let contents: [&[u8]; 6] =
        [PAGE.as_bytes(), STYLE.as_bytes(), WORKER.as_bytes(), MODULE, model, b"charrnn export --web\n"];
    for (name, bytes) in FILES.iter().zip(contents) {
        let file = dir.join(name);
        atomic::write(&file, bytes).with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(())
}

/// A folder for an export: made if missing; an empty one taken; one holding anything else only
/// with `force` (and then only the export's own files are replaced).
fn prepare_folder(dir: &Path, force: bool) -> Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot use {}", dir.display())),
        Ok(m) if !m.is_dir() => {
            bail!("{} is not a folder; give --web a folder to write the page into", dir.display())
        }
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
            if entries.next().is_none() || force {
                return Ok(());
            }
            match dir.join(MARK).exists() {
                true => bail!("{} holds an earlier export; pass --force to replace it", dir.display()),
                false => bail!(
                    "{} is not empty; choose a new or empty folder, or pass --force to write the export's \
                     files ({}) among what is there",
                    dir.display(),
                    FILES[..FILES.len() - 1].join(", ")
                ),
            }
        }
    }
}
