//! The optimizer-state file beside a resumable checkpoint: Adam's state, the carried
//! recurrent state of a stateful run and the training position.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use safetensors::SafeTensors;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{serialize, tensor_from, Stored, FORMAT, FORMAT_VERSION};
use crate::optim::{Adam, AdamState};

/// The optimizer-state file that sits beside a checkpoint for an exact resume.
pub fn optim_path(model_path: &Path) -> PathBuf {
    model_path.with_extension("optim.safetensors")
}

/// Adam's state (its update count and moments `m.NAME`, `v.NAME`), the recurrent state
/// carried between batches by a stateful run (`carried.l{k}`, if any) and the training position
/// (JSON under `state` in the metadata, its keys sorted), written atomically.
pub fn save_optim<P: Serialize>(path: &Path, adam: &Adam, position: &P, carried: &[Tensor]) -> Result<()> {
    // Through a JSON value, whose keys are sorted: the files written before this was typed
    // have them so.
    let state = serde_json::to_value(position)?;
    let saved = adam.export();
    let mut stored = Vec::new();
    for (l, t) in carried.iter().enumerate() {
        stored.push(Stored::new(format!("carried.l{l}"), t)?);
    }
    for (name, t) in &saved.moments {
        stored.push(Stored::new(name.clone(), t)?);
    }
    let metadata = HashMap::from([
        ("format".to_string(), format!("{FORMAT}-optim")),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("adam_step".to_string(), saved.updates.to_string()),
        ("state".to_string(), serde_json::to_string(&state)?),
    ]);
    crate::atomic::write(path, &serialize(&stored, metadata)?)
}

/// Reads what [`save_optim`] wrote: the training position, then the optimizer `adam_for`
/// makes for that position (which says, for one, whether the model's weights are tied), its
/// moments read in (each checked against its parameter before it is read), and the carried
/// states (empty when none were saved).
pub fn load_optim<P: DeserializeOwned>(
    path: &Path,
    adam_for: impl FnOnce(&P) -> Result<Adam>,
) -> Result<(P, Adam, Vec<Tensor>)> {
    let ctx = || format!("invalid optimizer state {}", path.display());
    let bytes = crate::files::read(path)
        .with_context(|| format!("cannot read the optimizer state {} needed to resume", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{e}")).with_context(ctx)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{e}")).with_context(ctx)?;
    let meta = header.metadata().as_ref().ok_or_else(|| anyhow!("no metadata")).with_context(ctx)?;
    let get =
        |k: &str| meta.get(k).ok_or_else(|| anyhow!("metadata field `{k}` is missing")).with_context(ctx);
    let updates = get("adam_step")?.parse().with_context(ctx)?;
    let state: P = serde_json::from_str(get("state")?)
        .context("bad training position in the optimizer state")
        .with_context(ctx)?;
    let mut adam = adam_for(&state)?;
    let mut moments = Vec::new();
    let mut device = None;
    for (key, var) in adam.expected() {
        let view = st.tensor(&key).map_err(|e| anyhow!("{key}: {e}")).with_context(ctx)?;
        if view.shape() != var.dims() {
            return Err(anyhow!("{key} has the wrong shape")).with_context(ctx);
        }
        moments.push((key.clone(), tensor_from(&key, &view, var.device()).with_context(ctx)?));
        device.get_or_insert_with(|| var.device().clone());
    }
    adam.import(AdamState { updates, moments }).with_context(ctx)?;
    let device = device.unwrap_or(Device::Cpu);
    let mut carried = Vec::new();
    loop {
        let key = format!("carried.l{}", carried.len());
        let Ok(view) = st.tensor(&key) else { break };
        carried.push(tensor_from(&key, &view, &device).with_context(ctx)?);
    }
    Ok((state, adam, carried))
}
