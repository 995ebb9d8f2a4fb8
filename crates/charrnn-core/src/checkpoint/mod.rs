//! The checkpoint format: one safetensors file with PyTorch's tensor names (f32), and in its
//! metadata everything needed to sample without the corpus — the vocabulary, the model
//! configuration and the provenance — plus a SHA-256 of the tensor data so that corruption
//! is caught on load rather than sampled from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod optim;

pub use crate::data::hex;
pub use optim::{load_optim, optim_path, save_optim};

use crate::compute::Compute;
use crate::data::vocab::Vocab;
use crate::model::{Config, Model};
use crate::notice::{Notice, Notify};

/// The `format` field of the metadata.
pub const FORMAT: &str = "charrnn";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The checkpoint of the best validation loss, in a run's folder.
pub const BEST: &str = "best.safetensors";
/// The resumable checkpoint of a run stopped mid-epoch, in its folder.
pub const INTERRUPTED: &str = "interrupted.safetensors";

/// Where a checkpoint came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimisation steps taken.
    pub step: u64,
    /// The mean training loss of the last epoch completed (in this invocation of the run).
    pub train_loss: Option<f64>,
    /// Its validation loss.
    pub val_loss: Option<f64>,
    /// The run's seed.
    pub seed: u64,
    /// SHA-256 of the text it was trained on.
    pub corpus_sha256: String,
    /// The version of charrnn that wrote it.
    pub charrnn_version: String,
    /// Names the training run that wrote it (random, made when the run starts; absent in
    /// files from before it existed), so that a run only ever prunes its own checkpoints and
    /// resumes with its own optimizer state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// SHA-256 of the checkpoint file a fine-tuned run started from (`train --init-from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_sha256: Option<String>,
}

/// A loaded checkpoint: the model, its characters and where it came from.
pub struct Checkpoint {
    /// The weights, on the device of the compute they were loaded for.
    pub model: Model,
    /// The characters, in id order.
    pub vocab: Vocab,
    /// Where it came from.
    pub provenance: Provenance,
}

/// A checkpoint file that cannot be used: truncated, corrupted, foreign or inconsistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCheckpoint {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl std::fmt::Display for InvalidCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid checkpoint {}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for InvalidCheckpoint {}

/// The file name of the checkpoint written after `epoch`.
pub fn file_name(epoch: usize) -> String {
    format!("ckpt_{epoch}.safetensors")
}

/// The epoch of a periodic checkpoint's file name (`ckpt_{epoch}.safetensors`).
pub fn epoch_of(name: &str) -> Option<usize> {
    name.strip_prefix("ckpt_")?.strip_suffix(".safetensors")?.parse().ok()
}

/// Whether `name` is a checkpoint a training run writes (`ckpt_{epoch}`, `best`,
/// `interrupted`) or the optimizer state beside one.
pub fn is_run_checkpoint(name: &str) -> bool {
    let model = name.strip_suffix(".optim.safetensors").or_else(|| name.strip_suffix(".safetensors"));
    let named = |file: &str| model.is_some_and(|m| Some(m) == file.strip_suffix(".safetensors"));
    named(BEST)
        || named(INTERRUPTED)
        || model.is_some_and(|m| m.strip_prefix("ckpt_").is_some_and(|e| e.parse::<usize>().is_ok()))
}

fn tensors_digest<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut sorted: Vec<_> = tensors.into_iter().collect();
    sorted.sort_by_key(|(name, _)| *name);
    let mut h = Sha256::new();
    for (name, data) in sorted {
        h.update(name.as_bytes());
        h.update(data);
    }
    hex(&h.finalize())
}

/// A named tensor as the files store it: f32, little-endian.
struct Stored {
    name: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Stored {
    fn new(name: String, t: &Tensor) -> Result<Self> {
        let values = crate::model::to_host(t)?;
        Ok(Stored {
            name,
            shape: t.dims().to_vec(),
            bytes: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
    }
}

fn serialize(stored: &[Stored], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let views = stored
        .iter()
        .map(|s| Ok((s.name.as_str(), TensorView::new(Dtype::F32, s.shape.clone(), &s.bytes)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, Some(metadata))?)
}

/// The stored f32 tensor `name` back on `device`.
fn tensor_from(name: &str, view: &TensorView, device: &Device) -> Result<Tensor> {
    if view.dtype() != Dtype::F32 {
        bail!("tensor {name} is {:?}, expected F32", view.dtype());
    }
    let values: Vec<f32> =
        view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    // A valid checksum says the file is as written, not that what was written is usable: NaN
    // or infinite weights would sample one repeated character and score NaN.
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!("tensor {name} holds a non-finite value ({} at index {i}); the file cannot be used", values[i]);
    }
    Ok(Tensor::from_vec(values, view.shape(), device)?)
}

/// The model's tensors as its checkpoint stores them.
fn stored(model: &Model) -> Result<Vec<Stored>> {
    model.named().map(|(name, var)| Stored::new(name, var.as_tensor())).collect()
}

fn stored_digest(stored: &[Stored]) -> String {
    tensors_digest(stored.iter().map(|s| (s.name.as_str(), s.bytes.as_slice())))
}

/// The `tensors_sha256` a checkpoint of `model` carries: the SHA-256 of its tensors' names and
/// f32 bytes, in name order, as lowercase hex.
pub fn tensors_sha256(model: &Model) -> Result<String> {
    Ok(stored_digest(&stored(model)?))
}

/// Serialises a model to safetensors bytes.
pub fn to_bytes(model: &Model, vocab: &Vocab, provenance: &Provenance) -> Result<Vec<u8>> {
    let stored = stored(model)?;
    let digest = stored_digest(&stored);
    let vocab_json: Vec<String> = vocab.chars().iter().map(|c| c.to_string()).collect();
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("vocab".to_string(), serde_json::to_string(&vocab_json)?),
        ("config".to_string(), serde_json::to_string(&model.config)?),
        ("provenance".to_string(), serde_json::to_string(provenance)?),
        ("tensors_sha256".to_string(), digest),
    ]);
    serialize(&stored, metadata)
}

/// Saves atomically: the previous file at `path` survives any failure.
pub fn save(path: &Path, model: &Model, vocab: &Vocab, provenance: &Provenance) -> Result<()> {
    crate::atomic::write(path, &to_bytes(model, vocab, provenance)?)
}

/// Loads and validates a checkpoint for `compute` (its device gets the weights); every problem
/// is an error naming the file, an [`InvalidCheckpoint`] where the file itself is at fault.
pub fn load(path: &Path, compute: &Compute) -> Result<Checkpoint> {
    Ok(load_with_bytes(path, compute)?.0)
}

/// [`load`], also returning the file's bytes, read once: the very bytes that were validated
/// (for a copy of the checkpoint that cannot differ from what was checked).
pub fn load_with_bytes(path: &Path, compute: &Compute) -> Result<(Checkpoint, Vec<u8>)> {
    let bytes = crate::files::read(path).with_context(|| {
        format!(
            "cannot read checkpoint {}; pass --checkpoint FILE, or train one with `charrnn train`",
            path.display()
        )
    })?;
    let ckpt = from_bytes(&bytes, compute).map_err(|e| {
        anyhow::Error::new(InvalidCheckpoint { path: path.to_path_buf(), problem: format!("{e:#}") })
    })?;
    Ok((ckpt, bytes))
}

/// A checkpoint from the bytes of its file, validated; see [`load`].
pub fn from_bytes(bytes: &[u8], compute: &Compute) -> Result<Checkpoint> {
    let device = compute.device();
    let corrupt = |e: safetensors::SafeTensorError| {
        anyhow!("not a readable safetensors file (truncated or corrupted?): {e}")
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
    let st = SafeTensors::deserialize(bytes).map_err(corrupt)?;
    let meta =
        header.metadata().as_ref().ok_or_else(|| anyhow!("no charrnn metadata (not written by charrnn?)"))?;
    let field = |key: &str| meta.get(key).ok_or_else(|| anyhow!("metadata field `{key}` is missing"));
    if field("format")? != FORMAT {
        bail!("metadata says format `{}`, expected `{FORMAT}`", field("format")?);
    }
    let version: u32 = field("format_version")?.parse().context("bad format_version")?;
    if version != FORMAT_VERSION {
        bail!("format version {version} is not supported (this charrnn reads version {FORMAT_VERSION})");
    }
    let vocab_strings: Vec<String> = serde_json::from_str(field("vocab")?).context("bad vocab metadata")?;
    let mut chars = Vec::with_capacity(vocab_strings.len());
    for s in &vocab_strings {
        let mut it = s.chars();
        match (it.next(), it.next()) {
            (Some(c), None) => chars.push(c),
            _ => bail!("vocab entry {s:?} is not a single character"),
        }
    }
    let vocab = Vocab::from_chars(chars).context("bad vocab metadata")?;
    let config: Config = serde_json::from_str(field("config")?).context("bad config metadata")?;
    let provenance: Provenance =
        serde_json::from_str(field("provenance")?).context("bad provenance metadata")?;
    if config.vocab_size != vocab.len() {
        bail!("config says {} characters but the vocabulary has {}", config.vocab_size, vocab.len());
    }
    config.validate()?;
    // Sizes in the metadata are checked against what the file holds before anything is built
    // from them (each layer has 4 tensors), so a crafted layer count cannot make us allocate a
    // name list the file does not back.
    let held = st.len();
    if config.layers > held {
        bail!("config says {} layers but the file holds only {held} tensors", config.layers);
    }

    let expected = config.parameter_shapes();
    let mut found: Vec<(String, TensorView)> = st.tensors();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let extra: Vec<&str> =
        found.iter().map(|(n, _)| n.as_str()).filter(|n| !expected.iter().any(|(e, _)| e == n)).collect();
    if !extra.is_empty() {
        bail!("unexpected tensors: {}", extra.join(", "));
    }
    let mut tensors = Vec::new();
    for (name, shape) in &expected {
        let view = found
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| anyhow!("tensor {name} is missing"))?;
        if view.shape() != shape.as_slice() {
            bail!(
                "tensor {name} has shape {:?} but the metadata (vocab {}, config {:?}) implies {shape:?}",
                view.shape(),
                vocab.len(),
                config
            );
        }
        let tensor = tensor_from(name, view, device)?;
        tensors.push((name.to_string(), tensor));
    }
    let digest = tensors_digest(found.iter().map(|(n, v)| (n.as_str(), v.data())));
    if &digest != field("tensors_sha256")? {
        bail!("tensor data does not match its checksum: the file is corrupted");
    }
    let model = Model::from_tensors(config, tensors, compute)?;
    Ok(Checkpoint { model, vocab, provenance })
}

/// A checkpoint file given directly, or the newest `ckpt_{epoch}.safetensors` in a folder.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let entries = std::fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?;
    let newest = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let epoch = epoch_of(&e.file_name().into_string().ok()?)?;
            Some((epoch, e.path()))
        })
        .max_by_key(|(epoch, _)| *epoch);
    match newest {
        Some((_, p)) => Ok(p),
        // A missing file, as callers (Python's FileNotFoundError) should see it.
        None => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no checkpoint (ckpt_N.safetensors) in {}; train one with `charrnn train` or pass --checkpoint FILE",
                path.display()
            ),
        )
        .into()),
    }
}

/// The provenance of a checkpoint, read from its header only (pruning reads every checkpoint
/// of a folder, whose tensors may be hundreds of megabytes each).
pub fn read_provenance(path: &Path) -> Result<Provenance> {
    let header =
        read_header(path).map_err(|e| anyhow!("{}: not a readable checkpoint: {e}", path.display()))?;
    let text = header
        .get("__metadata__")
        .and_then(|m| m.get("provenance"))
        .and_then(|p| p.as_str())
        .ok_or_else(|| anyhow!("{}: no provenance metadata", path.display()))?;
    serde_json::from_str(text).with_context(|| format!("{}: bad provenance metadata", path.display()))
}

/// A safetensors file's JSON header: its 8-byte little-endian length, then that many bytes,
/// which must lie inside the file (and below a bound: a header is kilobytes).
fn read_header(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    const MAX_HEADER: u64 = 100 << 20;
    let mut file = crate::files::open(path)?;
    let size = file.metadata()?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).context("shorter than a safetensors header")?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER || len > size.saturating_sub(8) {
        bail!("its header length {len} runs past the end of the file ({size} bytes)");
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).context("its header is cut short")?;
    serde_json::from_slice(&header).context("its header is not JSON")
}

/// What a resume may start from: a file given directly, or, in a folder, every checkpoint with
/// its optimizer state beside it, the most trained first. A checkpoint whose header cannot be
/// read is noticed and left out, so one damaged file does not stop the run.
pub fn resumable_candidates(path: &Path, notify: Notify) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))? {
        let p = entry?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !p.is_file()
            || !name.ends_with(".safetensors")
            || name.ends_with(".optim.safetensors")
            || !optim_path(&p).exists()
        {
            continue;
        }
        match read_provenance(&p) {
            Ok(prov) => found.push((prov.step, p)),
            Err(e) => notify(Notice::CheckpointSkipped { path: p.clone(), why: format!("{e:#}") }),
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    if found.is_empty() {
        bail!("nothing to resume in {}: no checkpoint with its .optim.safetensors beside it", path.display());
    }
    Ok(found.into_iter().map(|(_, p)| p).collect())
}
