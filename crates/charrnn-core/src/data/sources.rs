//! What `--data` names: files, folders (walked recursively in sorted path order, hidden entries
//! skipped) and glob patterns, resolved to the list of files that make the corpus, in order.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `--data` arguments as given. Saved with a run: one source as a plain path (the form
/// older runs saved), several as a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources(pub Vec<PathBuf>);

impl From<Vec<PathBuf>> for Sources {
    fn from(v: Vec<PathBuf>) -> Self {
        Sources(v)
    }
}

impl From<PathBuf> for Sources {
    fn from(p: PathBuf) -> Self {
        Sources(vec![p])
    }
}

impl fmt::Display for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(|p| p.display().to_string()).collect();
        f.write_str(&names.join(" "))
    }
}

impl Serialize for Sources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Sources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(PathBuf),
            Many(Vec<PathBuf>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(p) => Sources(vec![p]),
            OneOrMany::Many(v) => Sources(v),
        })
    }
}

/// One file of the corpus as it was when read: what a cache is checked against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch (0 where the system has none).
    pub mtime_ns: u128,
}

impl SourceFile {
    /// The file as it is now; a path that is not a readable regular file is an error.
    pub fn stat(path: &Path) -> Result<SourceFile> {
        // Only a regular file: a device or FIFO would be read without end, or block.
        let file = crate::files::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let m = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
        let mtime_ns =
            m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        Ok(SourceFile { path: path.to_path_buf(), size: m.len(), mtime_ns })
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// The files of a folder, recursively, sorted by path; hidden files and folders left out.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list the folder {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list the folder {}", dir.display()))?;
    entries.sort();
    for path in entries.into_iter().filter(|p| !hidden(p)) {
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// The corpus's files, in order, with the argument that named them: each argument's files in
/// turn (a folder's and a pattern's in sorted path order). An argument that names nothing is
/// an error that says so.
pub fn resolve(sources: &Sources) -> Result<Vec<(PathBuf, Vec<PathBuf>)>> {
    let mut groups = Vec::new();
    for arg in &sources.0 {
        let mut files = Vec::new();
        let text = arg.to_string_lossy();
        if arg.is_dir() {
            walk(arg, &mut files)?;
            if files.is_empty() {
                bail!(
                    "the folder {} holds no files (hidden ones are skipped); pass a folder of text files",
                    arg.display()
                );
            }
        } else if arg.exists() || !is_glob(&text) {
            // A missing plain path is reported when it is read, with the usual advice.
            files.push(arg.clone());
        } else {
            // Hidden files only where the pattern spells out the dot, as a shell does.
            let options = glob::MatchOptions { require_literal_leading_dot: true, ..Default::default() };
            let pattern = glob::glob_with(&text, options)
                .with_context(|| format!("--data {text}: not a valid pattern"))?;
            let mut matched: Vec<PathBuf> = pattern
                .collect::<std::result::Result<_, _>>()
                .with_context(|| format!("--data {text}: cannot read what it matches"))?;
            matched.retain(|p| p.is_file());
            matched.sort();
            if matched.is_empty() {
                bail!("--data {text} matches no file; check the pattern (quote it so the shell leaves it alone)");
            }
            files.extend(matched);
        }
        groups.push((arg.clone(), files));
    }
    if groups.is_empty() {
        bail!("--data names no file");
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(sources: Vec<PathBuf>) -> Result<Vec<PathBuf>> {
        Ok(resolve(&Sources(sources))?.into_iter().flat_map(|(_, files)| files).collect())
    }

    #[test]
    fn folders_walk_sorted_and_skip_hidden_and_globs_match_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["b/2.txt", "b/1.txt", "a.txt", ".hidden.txt", ".git/x.txt", "c/z.md"] {
            std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
            std::fs::write(d.join(f), "x").unwrap();
        }
        let files = flat(vec![d.to_path_buf()]).unwrap();
        let names: Vec<_> = files.iter().map(|p| p.strip_prefix(d).unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["a.txt", "b/1.txt", "b/2.txt", "c/z.md"]);
        let pattern = d.join("*/*.txt");
        let files = flat(vec![pattern, d.join("a.txt")]).unwrap();
        let names: Vec<_> = files.iter().map(|p| p.strip_prefix(d).unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["b/1.txt", "b/2.txt", "a.txt"]);
        let e = flat(vec![d.join("*.nothing")]).unwrap_err().to_string();
        assert!(e.contains("matches no file"), "{e}");
        std::fs::create_dir(d.join("empty")).unwrap();
        let e = flat(vec![d.join("empty")]).unwrap_err().to_string();
        assert!(e.contains("holds no files"), "{e}");
    }

    #[test]
    fn one_source_is_saved_as_a_plain_path() {
        let one = Sources(vec![PathBuf::from("data/shakespeare.txt")]);
        assert_eq!(serde_json::to_string(&one).unwrap(), r#""data/shakespeare.txt""#);
        let two = Sources(vec![PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(serde_json::to_string(&two).unwrap(), r#"["a","b"]"#);
        for s in [one, two] {
            assert_eq!(serde_json::from_str::<Sources>(&serde_json::to_string(&s).unwrap()).unwrap(), s);
        }
    }
}
