//! UTF-8 checking of text that arrives in chunks (a file read piece by piece, a download): a
//! character split between two chunks is not an error, a bad byte is, at its offset in the
//! whole stream.

/// How much of `buf`, the stream's bytes from `offset` on, is complete text: `Ok(n)` when
/// `buf[..n]` is valid UTF-8 and `buf[n..]` (at most 3 bytes) begins a character that the next
/// chunk continues — none may be left when `last`. `Err` holds the stream offset of the first
/// byte that is not UTF-8.
pub fn valid_prefix(buf: &[u8], offset: u64, last: bool) -> Result<usize, u64> {
    match std::str::from_utf8(buf) {
        Ok(_) => Ok(buf.len()),
        Err(e) if e.error_len().is_none() && !last => Ok(e.valid_up_to()),
        Err(e) => Err(offset + e.valid_up_to() as u64),
    }
}

/// A stream checked chunk by chunk as it is pushed in.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    /// The start of a character split at the end of the last chunk.
    carry: Vec<u8>,
    /// Stream offset of `carry`'s first byte.
    offset: u64,
}

impl Utf8Stream {
    /// Checks the next chunk; on failure returns the stream offset of the first invalid byte.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), u64> {
        self.carry.extend_from_slice(chunk);
        let valid = valid_prefix(&self.carry, self.offset, false)?;
        self.carry.drain(..valid);
        self.offset += valid as u64;
        Ok(())
    }

    /// Whether the stream so far ends on a character boundary (nothing left unfinished).
    pub fn complete(&self) -> bool {
        self.carry.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_carry_over_and_bad_bytes_are_placed_in_the_stream() {
        let text = "aé€😀b".as_bytes();
        // Every split into two chunks checks out, and ends complete.
        for cut in 0..=text.len() {
            let mut s = Utf8Stream::default();
            s.feed(&text[..cut]).unwrap();
            s.feed(&text[cut..]).unwrap();
            assert!(s.complete(), "cut at {cut}");
        }
        // Cut inside "€": incomplete until the rest comes.
        let mut s = Utf8Stream::default();
        s.feed(&text[..4]).unwrap();
        assert!(!s.complete());
        // A bad byte after 5 good ones, arriving in the second chunk.
        let mut s = Utf8Stream::default();
        s.feed(b"abc").unwrap();
        assert_eq!(s.feed(b"de\xffz"), Err(5));
        assert_eq!(valid_prefix("é".as_bytes()[..1].as_ref(), 10, true), Err(10));
        assert_eq!(valid_prefix("é".as_bytes()[..1].as_ref(), 10, false), Ok(0));
    }
}
