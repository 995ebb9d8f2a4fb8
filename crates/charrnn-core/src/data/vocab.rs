//! The character vocabulary: the sorted unique Unicode scalar values of a corpus
//! (Python's `sorted(set(text))`), ids 0..V-1 in that order. A fine-tuned model's vocabulary
//! may continue past the sorted part with characters its new text added (`--extend-vocab`), so
//! that every old id keeps its meaning: unique, but not necessarily sorted.

use std::collections::BTreeSet;

use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
/// A model's characters: the id of each is its position.
pub struct Vocab {
    chars: Vec<char>,
    /// (character, id), sorted by character, for lookups.
    index: Vec<(char, u32)>,
}

impl Vocab {
    /// The sorted set of characters of `text`.
    pub fn from_text(text: &str) -> Self {
        let set: BTreeSet<char> = text.chars().collect();
        Vocab::from_chars(set.into_iter().collect())
            .unwrap_or_else(|_| Vocab { chars: Vec::new(), index: Vec::new() })
    }

    /// A vocabulary in a given order (read back from a checkpoint or a cache): the characters
    /// must be unique.
    pub fn from_chars(chars: Vec<char>) -> Result<Self> {
        if chars.is_empty() {
            bail!("the vocabulary is empty");
        }
        let mut index: Vec<(char, u32)> = chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
        index.sort_unstable();
        if let Some(w) = index.windows(2).find(|w| w[0].0 == w[1].0) {
            bail!("the vocabulary holds {:?} twice", w[0].0);
        }
        Ok(Vocab { chars, index })
    }

    /// This vocabulary followed by the characters of `more` it lacks, in sorted order: every
    /// id keeps its meaning.
    pub fn extended(&self, more: &BTreeSet<char>) -> Vocab {
        let mut chars = self.chars.clone();
        chars.extend(more.iter().filter(|&&c| self.id(c).is_none()));
        Vocab::from_chars(chars).expect("unique: only missing characters were added")
    }

    /// Characters in it.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// Every character, in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The id of `c`, if it has one.
    pub fn id(&self, c: char) -> Option<u32> {
        self.index.binary_search_by_key(&c, |&(ch, _)| ch).ok().map(|i| self.index[i].1)
    }

    /// The character of `id` (which must be below [`Vocab::len`]).
    pub fn char(&self, id: u32) -> char {
        self.chars[id as usize]
    }

    /// Encodes the characters of `text` that are in the vocabulary; returns their ids, how
    /// many characters were left out, and which ones.
    pub fn encode_known(&self, text: &str) -> (Vec<u32>, usize, BTreeSet<char>) {
        let mut ids = Vec::with_capacity(text.len());
        let mut unknown = BTreeSet::new();
        let mut skipped = 0;
        for c in text.chars() {
            match self.id(c) {
                Some(id) => ids.push(id),
                None => {
                    skipped += 1;
                    unknown.insert(c);
                }
            }
        }
        (ids, skipped, unknown)
    }

    /// Encodes text whose every character is in the vocabulary; otherwise names the strangers.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let (ids, _, unknown) = self.encode_known(text);
        if !unknown.is_empty() {
            let list: Vec<String> = unknown.iter().map(|c| format!("{c:?}")).collect();
            bail!("{} character(s) are not in the model's vocabulary: {}", unknown.len(), list.join(", "));
        }
        Ok(ids)
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter().map(|&i| self.char(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_unique_scalar_values_like_python() {
        let v = Vocab::from_text("hello, wörld 🌍 世界");
        // sorted(set("hello, wörld 🌍 世界")) in Python
        let want: Vec<char> = vec![' ', ',', 'd', 'e', 'h', 'l', 'o', 'r', 'w', 'ö', '世', '界', '🌍'];
        assert_eq!(v.chars(), &want[..]);
        let ids = v.encode("hö🌍").unwrap();
        assert_eq!(ids, vec![4, 9, 12]);
        assert_eq!(v.decode(&ids), "hö🌍");
    }

    #[test]
    fn unknown_characters_are_listed() {
        let v = Vocab::from_text("abc");
        let err = v.encode("abXcYX").unwrap_err().to_string();
        assert!(err.contains("'X'") && err.contains("'Y'") && err.starts_with("2 character"), "{err}");
    }

    #[test]
    fn a_stored_vocabulary_must_be_unique_and_keeps_its_order() {
        assert!(Vocab::from_chars(vec!['a', 'b']).is_ok());
        assert!(Vocab::from_chars(vec!['a', 'b', 'a']).unwrap_err().to_string().contains("'a' twice"));
        assert!(Vocab::from_chars(vec![]).is_err());
        let v = Vocab::from_chars(vec!['b', 'd', 'a']).unwrap();
        assert_eq!((v.id('b'), v.id('d'), v.id('a'), v.id('c')), (Some(0), Some(1), Some(2), None));
    }

    #[test]
    fn extending_keeps_every_old_id() {
        let old = Vocab::from_text("cab");
        let more: BTreeSet<char> = "zbxa".chars().collect();
        let new = old.extended(&more);
        assert_eq!(new.chars(), &['a', 'b', 'c', 'x', 'z']);
        for (i, &c) in old.chars().iter().enumerate() {
            assert_eq!(new.id(c), Some(i as u32));
        }
        assert_eq!(new.decode(&new.encode("zax").unwrap()), "zax");
    }
}
