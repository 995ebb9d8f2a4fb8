//! The character vocabulary: the sorted unique Unicode scalar values of a corpus
//! (Python's `sorted(set(text))`), ids 0..V-1 in that order.

use std::collections::BTreeSet;

use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    chars: Vec<char>,
}

impl Vocab {
    pub fn from_text(text: &str) -> Self {
        let set: BTreeSet<char> = text.chars().collect();
        Vocab { chars: set.into_iter().collect() }
    }

    /// A vocabulary read back from a checkpoint: characters must be unique and sorted.
    pub fn from_chars(chars: Vec<char>) -> Result<Self> {
        if chars.is_empty() {
            bail!("the vocabulary is empty");
        }
        if chars.windows(2).any(|w| w[0] >= w[1]) {
            bail!("the vocabulary is not sorted and unique");
        }
        Ok(Vocab { chars })
    }

    pub fn len(&self) -> usize {
        self.chars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    pub fn id(&self, c: char) -> Option<u32> {
        self.chars.binary_search(&c).ok().map(|i| i as u32)
    }

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
    fn checkpoint_vocab_must_be_sorted_and_unique() {
        assert!(Vocab::from_chars(vec!['a', 'b']).is_ok());
        assert!(Vocab::from_chars(vec!['b', 'a']).is_err());
        assert!(Vocab::from_chars(vec!['a', 'a']).is_err());
        assert!(Vocab::from_chars(vec![]).is_err());
    }
}
