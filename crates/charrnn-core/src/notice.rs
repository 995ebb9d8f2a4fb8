//! What the library has to say along the way that is not a result: a file passed over, a cache
//! rebuilt, a leftover removed. The library prints nothing; a function that may have something
//! to say takes a [`Notify`] and hands it [`Notice`]s, which front ends show (their `Display` is
//! the line the command line prints) or ignore.

use std::path::PathBuf;

/// Where notices go: a closure called with each.
pub type Notify<'a> = &'a mut dyn FnMut(Notice);

/// Something worth saying, with what it is about.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// A token cache did not check out against its sources and is being rebuilt.
    CacheRebuilt {
        /// The cache file.
        path: PathBuf,
        /// What did not check out.
        why: String,
    },
    /// A token cache was built.
    CachePrepared {
        /// Characters in the corpus.
        characters: u64,
        /// Source files read.
        files: usize,
        /// Bytes read.
        bytes: u64,
        /// How long it took.
        seconds: f64,
    },
    /// A source file that is not UTF-8 was left out (`--skip-invalid`).
    SkippedNotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// A fine-tuned model's vocabulary grew by the new text's other characters.
    VocabularyExtended {
        /// Characters added.
        added: usize,
    },
    /// A checkpoint that does not load was passed over while looking for one to resume.
    CheckpointSkipped {
        /// The checkpoint.
        path: PathBuf,
        /// Why it does not load.
        why: String,
    },
    /// A line of a metrics file that is not a record was skipped.
    MetricsLineSkipped {
        /// The metrics file.
        path: PathBuf,
        /// Its line number, from 1.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// A temporary file an interrupted write left behind was removed.
    RemovedTemporary {
        /// The file.
        path: PathBuf,
    },
    /// `--overwrite` removed the previous run's files from a folder.
    RemovedPreviousRun {
        /// Files removed.
        files: usize,
        /// The folder.
        dir: PathBuf,
    },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::CacheRebuilt { path, why } => {
                write!(f, "token cache {}: {why}; rebuilding it", path.display())
            }
            Notice::CachePrepared { characters, files, bytes, seconds } => write!(
                f,
                "prepared {characters} characters from {files} file(s) in {seconds:.1} s ({:.0} MB/s)",
                *bytes as f64 / 1e6 / seconds.max(1e-9)
            ),
            Notice::SkippedNotUtf8 { path } => write!(f, "skipping {}: not UTF-8", path.display()),
            Notice::VocabularyExtended { added } => {
                write!(f, "extending the vocabulary by {added} character(s)")
            }
            Notice::CheckpointSkipped { path, why } => write!(f, "skipped {}: {why}", path.display()),
            Notice::MetricsLineSkipped { path, line, why } => {
                write!(f, "warning: {} line {line}: not a metrics record, skipped ({why})", path.display())
            }
            Notice::RemovedTemporary { path } => {
                write!(f, "removed {}, left by an interrupted write", path.display())
            }
            Notice::RemovedPreviousRun { files, dir } => {
                write!(f, "--overwrite: removed the previous run's {files} files from {}", dir.display())
            }
        }
    }
}

/// A [`Notify`] that drops every notice.
pub fn ignore(_: Notice) {}
