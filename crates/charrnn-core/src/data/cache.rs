//! The token cache: a corpus read once, as character ids in a file that training memory-maps,
//! so that neither the text nor its ids are ever held whole in memory.
//!
//! Preparing streams the sources twice in fixed-size chunks: the first pass checks that each
//! is UTF-8 and collects the characters (the vocabulary: the sorted set, as before); the second
//! writes the ids, 1 byte each when the vocabulary has at most 256 characters, 2 up to 65,536,
//! else 4, and the corpus's SHA-256. The file is
//!
//! ```text
//! "CRNNTOK1" | header length (u64 LE) | header (JSON) | zeros to a multiple of 8 | ids (LE)
//! ```
//!
//! where the header holds the format version, the vocabulary, each source's path, size and
//! modification time, the document separator, the id width and count, and the SHA-256. A
//! cache is used only when all of it checks out against the sources as they are now (and every
//! id is inside the vocabulary); otherwise it is rebuilt, atomically.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::sources::{self, SourceFile, Sources};
use super::utf8::valid_prefix;
use super::vocab::Vocab;
use super::Ids;
use crate::notice::{Notice, Notify};

const MAGIC: &[u8; 8] = b"CRNNTOK1";
const FORMAT: u32 = 1;
/// A header larger than this is not one of ours (10,000 sources take about 1 MB).
const MAX_HEADER: u64 = 256 << 20;
/// Bytes read at a time.
const CHUNK: usize = 8 << 20;

/// How sources become one text, and where its cache goes.
#[derive(Clone, Debug, Default)]
pub struct CacheOptions {
    /// The cache folder; None builds a temporary cache that is removed after the run.
    pub dir: Option<PathBuf>,
    /// Put between documents.
    pub separator: String,
    /// Leave out (and list) files that are not UTF-8 instead of refusing them.
    pub skip_invalid: bool,
    /// Encode with this vocabulary (a fine-tuned model's) instead of the text's own.
    pub base: Option<BaseVocab>,
}

/// A model's vocabulary that a new text is encoded with.
#[derive(Clone, Debug)]
pub struct BaseVocab {
    /// The model's characters, in id order.
    pub vocab: Vocab,
    /// Characters of the text that it lacks are appended (else they are an error).
    pub extend: bool,
}

impl CacheOptions {
    /// The base vocabulary as a cache's header records it, and whether it may be extended.
    fn base_fields(&self) -> (Option<Vec<char>>, bool) {
        match &self.base {
            Some(b) => (Some(b.vocab.chars().to_vec()), b.extend),
            None => (None, false),
        }
    }

    /// The default cache folder: `$CHARRNN_CACHE_DIR`, else `$XDG_CACHE_HOME/charrnn`, else
    /// `~/.cache/charrnn`, else a folder of this user's own in the system's temporary folder.
    pub fn default_dir() -> PathBuf {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("CHARRNN_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("charrnn")))
            .or_else(|| env("HOME").map(|d| d.join(".cache").join("charrnn")))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("charrnn-{}", user_id())))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Header {
    format: u32,
    vocab: Vec<char>,
    files: Vec<SourceFile>,
    /// Characters each file gave (0 for one left out or empty).
    file_chars: Vec<u64>,
    skipped: Vec<PathBuf>,
    separator: String,
    skip_invalid: bool,
    /// The vocabulary given to encode with, and whether it could be extended.
    base_vocab: Option<Vec<char>>,
    extend_vocab: bool,
    width: usize,
    count: u64,
    sha256: String,
}

/// A prepared corpus: its vocabulary, its ids (memory-mapped, or in memory for a text given
/// directly), and where they came from.
pub struct Corpus {
    /// Its characters, in id order.
    pub vocab: Vocab,
    /// SHA-256 of the text (the sources joined by the separator), in hex.
    pub sha256: String,
    /// What the text is, for messages: the `--data` arguments, or "the text given".
    pub label: String,
    /// The source files, in order.
    pub files: Vec<SourceFile>,
    /// Characters each file gave.
    pub file_chars: Vec<u64>,
    /// Each `--data` argument with how many of `files` it named, in order.
    pub groups: Vec<(PathBuf, usize)>,
    /// Files left out by `skip_invalid`.
    pub skipped: Vec<PathBuf>,
    /// The cache file, when it is kept.
    pub cache: Option<PathBuf>,
    storage: Storage,
}

/// Where a corpus's ids are.
enum Storage {
    /// A token cache's ids, `width` bytes each from `offset`.
    Mapped {
        map: memmap2::Mmap,
        offset: usize,
        width: usize,
        count: usize,
        /// A temporary cache, removed when the corpus is dropped.
        _temporary: Option<tempfile::TempPath>,
    },
    /// A text given directly.
    Memory(Vec<u32>),
}

impl Corpus {
    /// A corpus of `text` itself, held in memory (no files, no cache): its vocabulary is its
    /// sorted set of characters, as for a file of that text, or `base` (extended where it may
    /// be) for a model being fine-tuned.
    pub fn from_text(text: &str, base: Option<&BaseVocab>, notify: Notify) -> Result<Corpus> {
        if text.is_empty() {
            bail!("the text is empty; give some text to train on");
        }
        let options = CacheOptions { base: base.cloned(), ..CacheOptions::default() };
        let vocab = choose_vocabulary(text.chars().collect(), &options, notify)?;
        let ids = vocab.encode(text)?;
        Ok(Corpus {
            sha256: super::hex(&Sha256::digest(text.as_bytes())),
            label: "the text given".to_string(),
            files: Vec::new(),
            file_chars: Vec::new(),
            groups: Vec::new(),
            skipped: Vec::new(),
            cache: None,
            storage: Storage::Memory(ids),
            vocab,
        })
    }

    /// The character ids, in order.
    pub fn ids(&self) -> Ids<'_> {
        match &self.storage {
            Storage::Mapped { map, offset, width, count, .. } => {
                Ids::Packed { bytes: &map[*offset..offset + count * width], width: *width }
            }
            Storage::Memory(ids) => Ids::Wide(ids),
        }
    }

    /// Characters in the corpus.
    pub fn len(&self) -> usize {
        self.ids().len()
    }

    /// Whether it has no characters (a prepared corpus never is).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What came from where, for the log: the totals and the cache, then (for several files)
    /// each `--data` argument's files, bytes and characters, then any files left out.
    pub fn describe(&self) -> String {
        let bytes: u64 = self.files.iter().map(|f| f.size).sum();
        let mut s = format!(
            "corpus {}: {} file(s), {bytes} bytes, {} characters, {} unique",
            self.label,
            self.files.len(),
            self.len(),
            self.vocab.len()
        );
        if let Some(c) = &self.cache {
            s += &format!("; token cache {}", c.display());
        }
        if self.files.len() > 1 {
            let mut first = 0;
            for (arg, n) in &self.groups {
                let chars: u64 = self.file_chars[first..first + n].iter().sum();
                let bytes: u64 = self.files[first..first + n].iter().map(|f| f.size).sum();
                s += &format!("\n  {}: {n} file(s), {bytes} bytes, {chars} characters", arg.display());
                first += n;
            }
        }
        if !self.skipped.is_empty() {
            let names: Vec<String> = self.skipped.iter().map(|p| p.display().to_string()).collect();
            s += &format!(
                "\n  skipped {} file(s) that are not UTF-8: {}",
                self.skipped.len(),
                names.join(", ")
            );
        }
        s
    }
}

/// Reads the sources into a corpus: from a valid cache when there is one, else by building it.
pub fn prepare(sources: &Sources, o: &CacheOptions, notify: Notify) -> Result<Corpus> {
    let each = sources::resolve(sources)?;
    let groups: Vec<(PathBuf, usize)> = each.iter().map(|(arg, files)| (arg.clone(), files.len())).collect();
    let files: Vec<SourceFile> = (each.iter().flat_map(|(_, files)| files))
        .map(|p| SourceFile::stat(p).with_context(|| unreadable(p)))
        .collect::<Result<_>>()?;
    let corpus = match &o.dir {
        Some(dir) => cached(dir, &files, o, notify)?,
        None => {
            let tmp = crate::atomic::private_temporary(&std::env::temp_dir())
                .context("cannot make a temporary token cache")?
                .into_temp_path();
            build(&tmp, &files, o, notify)?;
            let mut corpus = open(&tmp, &files, o, Check::Written)?;
            if let Storage::Mapped { _temporary, .. } = &mut corpus.storage {
                *_temporary = Some(tmp);
            }
            Corpus { cache: None, ..corpus }
        }
    };
    Ok(Corpus { groups, label: sources.to_string(), ..corpus })
}

/// This user's id (0 where the system has none).
fn user_id() -> u32 {
    #[cfg(unix)]
    // SAFETY: geteuid only reads the process's credentials.
    return unsafe { libc::geteuid() };
    #[cfg(not(unix))]
    0
}

/// Makes `dir` for token caches, readable by its owner only (0700), or checks the one there: in
/// a folder another user could write to, they could plant a cache, so one that is not this
/// user's own, or that others may write to, is refused.
pub fn make_cache_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir)?;
        if m.uid() != user_id() || m.mode() & 0o022 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "it belongs to another user or others may write to it",
            ));
        }
    }
    Ok(())
}

/// The corpus from the cache in `dir`: the one there if it checks out, else a new one written
/// under a temporary name and renamed into place.
fn cached(dir: &Path, files: &[SourceFile], o: &CacheOptions, notify: Notify) -> Result<Corpus> {
    let advice = "pass --cache-dir DIR or --no-cache";
    make_cache_dir(dir)
        .with_context(|| format!("cannot use the cache folder {}; {advice}", dir.display()))?;
    let path = dir.join(format!("{}.tokens", key(files, o)));
    if path.exists() {
        match open(&path, files, o, Check::Unchecked) {
            Ok(corpus) => return Ok(corpus),
            Err(rejected) => notify(Notice::CacheRebuilt { path: path.clone(), why: rejected.why }),
        }
    }
    let tmp = crate::atomic::private_temporary(dir)
        .with_context(|| format!("cannot write in the cache folder {}; {advice}", dir.display()))?
        .into_temp_path();
    build(&tmp, files, o, notify)?;
    tmp.persist(&path).with_context(|| format!("cannot write the token cache {}", path.display()))?;
    open(&path, files, o, Check::Written)
        .map_err(|r| anyhow::anyhow!("the token cache {} just written {}", path.display(), r.why))
}

/// A token cache that does not check out against what it must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The cache file.
    pub path: PathBuf,
    /// What is wrong with it ("is truncated …").
    pub why: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the token cache {} {}", self.path.display(), self.why)
    }
}

impl std::error::Error for Rejected {}

/// Why a source cannot be read, and what to do.
fn unreadable(path: &Path) -> String {
    format!("cannot read the corpus {}; run `charrnn download` or pass --data FILE", path.display())
}

/// The cache's name: a digest of the sources' paths and the joining options.
fn key(files: &[SourceFile], o: &CacheOptions) -> String {
    let mut h = Sha256::new();
    for f in files {
        let abs = std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone());
        h.update(abs.to_string_lossy().as_bytes());
        h.update([0]);
    }
    h.update(o.separator.as_bytes());
    h.update([o.skip_invalid as u8]);
    if let Some(b) = &o.base {
        h.update(b.vocab.chars().iter().collect::<String>().as_bytes());
        h.update([b.extend as u8]);
    }
    h.update(FORMAT.to_le_bytes());
    super::hex(&h.finalize()[..10])
}

/// Bytes per id for a vocabulary of `v` characters.
fn width_for(v: usize) -> usize {
    match v {
        0..=256 => 1,
        257..=65_536 => 2,
        _ => 4,
    }
}

/// Whether a cache's ids still need checking against its vocabulary.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Found on disk: read every one before trusting it.
    Unchecked,
    /// Just written by [`build`], which encoded only characters of the vocabulary.
    Written,
}

/// A cache checked against what it must hold.
fn open(path: &Path, files: &[SourceFile], o: &CacheOptions, check: Check) -> Result<Corpus, Rejected> {
    check_cache(path, files, o, check).map_err(|why| Rejected { path: path.to_path_buf(), why })
}

/// [`open`]; the reason when it does not check out.
fn check_cache(path: &Path, files: &[SourceFile], o: &CacheOptions, check: Check) -> Result<Corpus, String> {
    let file = File::open(path).map_err(|e| format!("cannot be opened ({e})"))?;
    // SAFETY: the map is read-only, and every byte pattern is a valid u8. A cache file is only
    // ever written under a temporary name and renamed into place, never modified afterwards,
    // so the mapped pages do not change under us (a rebuild replaces the name, not the file).
    // Someone truncating it by hand would make reads past the new end fault; nothing we write
    // does that.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("cannot be mapped ({e})"))?;
    if map.len() < 16 || &map[..8] != MAGIC {
        return Err("is not a token cache of this version".into());
    }
    let header_len = u64::from_le_bytes(map[8..16].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER || header_len > (map.len() - 16) as u64 {
        return Err("is truncated (its header runs past the end)".into());
    }
    let header_end = 16 + header_len as usize;
    let header: Header =
        serde_json::from_slice(&map[16..header_end]).map_err(|e| format!("has a damaged header ({e})"))?;
    if header.format != FORMAT {
        return Err(format!("has format {} (this build reads {FORMAT})", header.format));
    }
    if header.files != files {
        return Err("was made from sources that have changed since (path, size or modification time)".into());
    }
    if header.separator != o.separator || header.skip_invalid != o.skip_invalid {
        return Err("was made with another --doc-separator or --skip-invalid".into());
    }
    if (header.base_vocab.clone(), header.extend_vocab) != o.base_fields() {
        return Err("was encoded with another model's vocabulary".into());
    }
    let vocab = Vocab::from_chars(header.vocab).map_err(|e| format!("has a bad vocabulary ({e})"))?;
    if header.width != width_for(vocab.len()) {
        return Err(format!("has {}-byte ids for {} characters", header.width, vocab.len()));
    }
    let offset = header_end.div_ceil(8) * 8;
    let count = usize::try_from(header.count).map_err(|_| "holds more ids than this machine can address")?;
    let expected = count.checked_mul(header.width).and_then(|n| n.checked_add(offset));
    if expected != Some(map.len()) {
        return Err(format!(
            "is {} bytes where its header says {:?}: truncated or damaged",
            map.len(),
            expected
        ));
    }
    if header.file_chars.len() != header.files.len() || header.file_chars.iter().sum::<u64>() > header.count {
        return Err("has damaged per-file counts".into());
    }
    if header.sha256.len() != 64 || !header.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("has a damaged checksum".into());
    }
    let corpus = Corpus {
        vocab,
        sha256: header.sha256,
        label: String::new(),
        files: header.files,
        file_chars: header.file_chars,
        groups: Vec::new(),
        skipped: header.skipped,
        cache: Some(path.to_path_buf()),
        storage: Storage::Mapped { map, offset, width: header.width, count, _temporary: None },
    };
    if check == Check::Unchecked {
        verify_ids(&corpus)?;
    }
    Ok(corpus)
}

/// Reads every id of a cache found on disk before it is trusted: each must be inside the
/// vocabulary, and the text they spell must have the checksum the header records (a cache
/// rewritten in place, header untouched, is caught here, not trained on).
fn verify_ids(corpus: &Corpus) -> Result<(), String> {
    let utf8: Vec<Vec<u8>> = corpus.vocab.chars().iter().map(|c| c.to_string().into_bytes()).collect();
    let (ids, mut chunk, mut text) = (corpus.ids(), Vec::new(), Vec::new());
    let mut sha = Sha256::new();
    for start in (0..ids.len()).step_by(CHUNK) {
        chunk.clear();
        ids.extend(start..(start + CHUNK).min(ids.len()), &mut chunk);
        text.clear();
        for &id in &chunk {
            let Some(bytes) = utf8.get(id as usize) else {
                return Err("holds ids outside its vocabulary".into());
            };
            text.extend_from_slice(bytes);
        }
        sha.update(&text);
    }
    if super::hex(&sha.finalize()) != corpus.sha256 {
        return Err("holds ids that do not match its checksum (changed after it was written?)".into());
    }
    Ok(())
}

/// A source that is not UTF-8.
#[derive(Debug)]
struct NotUtf8 {
    path: PathBuf,
    offset: u64,
}

impl std::fmt::Display for NotUtf8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the corpus {} is not valid UTF-8 (bad byte at offset {}); convert it to UTF-8, e.g. with iconv, or pass --skip-invalid to leave such files out",
            self.path.display(),
            self.offset
        )
    }
}

impl std::error::Error for NotUtf8 {}

/// Calls `each` with the text of `path` in chunks that end on character boundaries, until it
/// fails (its error is returned) or the file ends; a file that is not UTF-8 is an error naming
/// it and the offset of the first bad byte.
fn for_each_text(path: &Path, mut each: impl FnMut(&str, &[u8]) -> Result<()>) -> Result<()> {
    let mut file = crate::files::open(path).with_context(|| unreadable(path))?;
    // No larger than the file needs: zeroing 8 MB for each of 10,000 small files would cost
    // more than reading them.
    let size = file.metadata().map_or(CHUNK as u64, |m| m.len());
    let mut buf = vec![0u8; CHUNK.min(size as usize + 8)];
    let (mut kept, mut offset) = (0usize, 0u64);
    loop {
        let n = file.read(&mut buf[kept..]).with_context(|| format!("cannot read {}", path.display()))?;
        let filled = kept + n;
        // An incomplete character at the end of the chunk continues in the next read (the
        // prefix is checked again, which happens only where a chunk splits a character).
        let valid = valid_prefix(&buf[..filled], offset, n == 0)
            .map_err(|offset| NotUtf8 { path: path.to_path_buf(), offset })?;
        if valid > 0 {
            let text = std::str::from_utf8(&buf[..valid]).expect("checked just above");
            each(text, &buf[..valid])?;
        }
        offset += valid as u64;
        buf.copy_within(valid..filled, 0);
        kept = filled - valid;
        if n == 0 {
            return Ok(());
        }
    }
}

/// Ids of characters: a table for ASCII, the vocabulary's lookup for others.
struct Encoder<'a> {
    /// The id of each ASCII byte, `UNKNOWN` for one the vocabulary lacks; indexed by any byte
    /// so that the lookup needs no bounds check.
    ascii: [u32; 256],
    vocab: &'a Vocab,
}

const UNKNOWN: u32 = u32::MAX;

impl<'a> Encoder<'a> {
    fn new(vocab: &'a Vocab) -> Self {
        let mut ascii = [UNKNOWN; 256];
        for (i, a) in ascii.iter_mut().enumerate().take(128) {
            *a = vocab.id(i as u8 as char).unwrap_or(UNKNOWN);
        }
        Encoder { ascii, vocab }
    }

    /// Appends the ids of `text`. A character the vocabulary lacks (only possible if a source
    /// changed between the passes, which `build` checks afterwards) gets an id past it.
    fn encode(&self, text: &str, width: usize, out: &mut Vec<u8>) {
        let id = |c: char| match c as u32 {
            a @ 0..=127 => self.ascii[a as usize],
            _ => self.vocab.id(c).unwrap_or(UNKNOWN),
        };
        match width {
            // Most text: a table lookup per byte.
            1 if text.is_ascii() => out.extend(text.bytes().map(|b| self.ascii[b as usize] as u8)),
            1 => out.extend(text.chars().map(|c| id(c) as u8)),
            2 => out.extend(text.chars().flat_map(|c| (id(c) as u16).to_le_bytes())),
            _ => out.extend(text.chars().flat_map(|c| id(c).to_le_bytes())),
        }
    }
}

/// The characters seen: a flag per ASCII character, a set for the others.
struct CharSet {
    ascii: [bool; 128],
    others: BTreeSet<char>,
}

impl CharSet {
    fn new() -> Self {
        CharSet { ascii: [false; 128], others: BTreeSet::new() }
    }

    fn insert(&mut self, c: char) {
        match c as u32 {
            a @ 0..=127 => self.ascii[a as usize] = true,
            _ => {
                self.others.insert(c);
            }
        }
    }

    /// All of them, sorted.
    fn sorted(self) -> BTreeSet<char> {
        (0..128u8).filter(|&b| self.ascii[b as usize]).map(char::from).chain(self.others).collect()
    }
}

/// What the first pass found: the characters, the files that give text, and the count.
struct Scan<'a> {
    seen: CharSet,
    /// The files that are UTF-8 and not empty, in order.
    documents: Vec<&'a SourceFile>,
    /// Files left out as not UTF-8 (`skip_invalid`).
    skipped: Vec<PathBuf>,
    /// Characters each file gave (0 for one left out or empty).
    file_chars: Vec<u64>,
    /// Characters of the whole text, separators included.
    chars: u64,
}

/// Writes the cache for `files` at `path` (a temporary file; the caller renames it): the
/// characters first, then the vocabulary they make, then the ids and the checksum.
fn build(path: &Path, files: &[SourceFile], o: &CacheOptions, notify: Notify) -> Result<()> {
    let started = std::time::Instant::now();
    let scan = scan_characters(files, o, notify)?;
    let vocab = choose_vocabulary(scan.seen.sorted(), o, notify)?;
    let width = width_for(vocab.len());
    let (base_vocab, extend_vocab) = o.base_fields();
    let header = Header {
        format: FORMAT,
        vocab: vocab.chars().to_vec(),
        files: files.to_vec(),
        file_chars: scan.file_chars,
        skipped: scan.skipped,
        separator: o.separator.clone(),
        skip_invalid: o.skip_invalid,
        base_vocab,
        extend_vocab,
        width,
        count: scan.chars,
        sha256: "0".repeat(64),
    };
    write_ids(path, header, &vocab, &scan.documents, o)?;
    notify(Notice::CachePrepared {
        characters: scan.chars,
        files: files.len(),
        bytes: files.iter().map(|f| f.size).sum(),
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(())
}

/// Pass 1: the characters, and which files are UTF-8 and not empty.
fn scan_characters<'a>(files: &'a [SourceFile], o: &CacheOptions, notify: Notify) -> Result<Scan<'a>> {
    let mut scan = Scan {
        seen: CharSet::new(),
        documents: Vec::new(),
        skipped: Vec::new(),
        file_chars: Vec::with_capacity(files.len()),
        chars: 0,
    };
    for f in files {
        let mut n = 0u64;
        let seen = &mut scan.seen;
        let read = for_each_text(&f.path, |text, bytes| {
            if text.is_ascii() {
                for &b in bytes {
                    seen.ascii[b as usize] = true;
                }
                n += bytes.len() as u64;
            } else {
                for c in text.chars() {
                    seen.insert(c);
                    n += 1;
                }
            }
            Ok(())
        });
        scan.file_chars.push(if read.is_ok() { n } else { 0 });
        match read {
            Ok(()) if n > 0 => {
                scan.documents.push(f);
                scan.chars += n;
            }
            Ok(()) => {}
            Err(e) if o.skip_invalid && e.is::<NotUtf8>() => {
                notify(Notice::SkippedNotUtf8 { path: f.path.clone() });
                scan.skipped.push(f.path.clone());
            }
            Err(e) => return Err(e),
        }
    }
    if scan.documents.is_empty() {
        match files {
            [one] => bail!("the corpus {} is empty; pass a text file with --data", one.path.display()),
            _ => bail!("the corpus's {} files hold no text; pass text files with --data", files.len()),
        }
    }
    if scan.documents.len() > 1 {
        o.separator.chars().for_each(|c| scan.seen.insert(c));
        scan.chars += (scan.documents.len() as u64 - 1) * o.separator.chars().count() as u64;
    }
    Ok(scan)
}

/// The vocabulary of a text with the characters `all`: their sorted set, or a model's own
/// vocabulary, extended by the ones it lacks where that is allowed.
fn choose_vocabulary(all: BTreeSet<char>, o: &CacheOptions, notify: Notify) -> Result<Vocab> {
    let Some(base) = &o.base else { return Vocab::from_chars(all.into_iter().collect()) };
    let missing: BTreeSet<char> = all.into_iter().filter(|&c| base.vocab.id(c).is_none()).collect();
    if !missing.is_empty() && !base.extend {
        let list: Vec<String> = missing.iter().take(20).map(|c| format!("{c:?}")).collect();
        let more = if missing.len() > 20 { ", …" } else { "" };
        bail!(
            "the new text has {} character(s) the model was not trained on: {}{more}; pass --extend-vocab to add them (or leave out the text that has them)",
            missing.len(),
            list.join(", ")
        );
    }
    if !missing.is_empty() {
        notify(Notice::VocabularyExtended { added: missing.len() });
    }
    Ok(base.vocab.extended(&missing))
}

/// The file's first bytes: magic, header length, header, zero padding to a multiple of 8.
fn write_header(out: &mut dyn Write, h: &Header) -> Result<()> {
    let json = serde_json::to_vec(h)?;
    out.write_all(MAGIC)?;
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    let pad = (16 + json.len()).div_ceil(8) * 8 - (16 + json.len());
    out.write_all(&[0u8; 8][..pad])?;
    Ok(())
}

/// Pass 2: the header, the ids and the checksum, which is filled into the header at the end
/// (it has a fixed length, so the header's size does not change). A source that changed since
/// the first pass is an error.
fn write_ids(
    path: &Path,
    mut header: Header,
    vocab: &Vocab,
    documents: &[&SourceFile],
    o: &CacheOptions,
) -> Result<()> {
    let fail = || format!("cannot write the token cache {}", path.display());
    let width = header.width;
    let mut out = std::io::BufWriter::with_capacity(CHUNK, File::create(path).with_context(fail)?);
    write_header(&mut out, &header).with_context(fail)?;
    let encoder = Encoder::new(vocab);
    let mut sha = Sha256::new();
    let mut ids = Vec::with_capacity(CHUNK * width);
    let mut written = 0u64;
    for (i, f) in documents.iter().enumerate() {
        if i > 0 {
            sha.update(o.separator.as_bytes());
            encoder.encode(&o.separator, width, &mut ids);
        }
        // A failed write (a full disk) ends the reading at once, before more ids pile up.
        for_each_text(&f.path, |text, bytes| {
            sha.update(bytes);
            encoder.encode(text, width, &mut ids);
            if ids.len() >= CHUNK {
                written += (ids.len() / width) as u64;
                out.write_all(&ids).with_context(fail)?;
                ids.clear();
            }
            Ok(())
        })?;
    }
    written += (ids.len() / width) as u64;
    out.write_all(&ids).with_context(fail)?;
    // A source written to during the passes could give characters the first pass did not
    // see: its size or modification time shows it, checked here rather than per character.
    let unchanged = documents.iter().all(|f| SourceFile::stat(&f.path).is_ok_and(|now| now == **f));
    if written != header.count || !unchanged {
        bail!("a source of the corpus changed while it was read; try again once it is written");
    }
    header.sha256 = super::hex(&sha.finalize());
    let mut file = out.into_inner().map_err(|e| e.into_error()).with_context(fail)?;
    file.seek(SeekFrom::Start(0)).with_context(fail)?;
    write_header(&mut file, &header).with_context(fail)?;
    file.sync_all().with_context(fail)?;
    Ok(())
}
