//! A corpus's character ids as the pipeline reads them: in memory (`u32`s) or straight from a
//! memory-mapped token cache (1, 2 or 4 little-endian bytes each). Batches copy out only the
//! ids they use.

use std::ops::Range;

#[derive(Clone, Copy, Debug)]
/// A run of character ids.
pub enum Ids<'a> {
    /// Ids in memory.
    Wide(&'a [u32]),
    /// `bytes.len() / width` ids of `width` bytes each.
    Packed {
        /// The little-endian bytes.
        bytes: &'a [u8],
        /// Bytes per id: 1, 2 or 4.
        width: usize,
    },
}

impl<'a> From<&'a [u32]> for Ids<'a> {
    fn from(ids: &'a [u32]) -> Self {
        Ids::Wide(ids)
    }
}

impl<'a> From<&'a Vec<u32>> for Ids<'a> {
    fn from(ids: &'a Vec<u32>) -> Self {
        Ids::Wide(ids)
    }
}

impl<'a> Ids<'a> {
    /// How many ids.
    pub fn len(&self) -> usize {
        match self {
            Ids::Wide(ids) => ids.len(),
            Ids::Packed { bytes, width } => bytes.len() / width,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `at` ids and the rest.
    pub fn split_at(&self, at: usize) -> (Ids<'a>, Ids<'a>) {
        match *self {
            Ids::Wide(ids) => {
                let (a, b) = ids.split_at(at);
                (Ids::Wide(a), Ids::Wide(b))
            }
            Ids::Packed { bytes, width } => {
                let (a, b) = bytes.split_at(at * width);
                (Ids::Packed { bytes: a, width }, Ids::Packed { bytes: b, width })
            }
        }
    }

    /// Appends the ids in `range` to `out`.
    pub fn extend(&self, range: Range<usize>, out: &mut Vec<u32>) {
        match *self {
            Ids::Wide(ids) => out.extend_from_slice(&ids[range]),
            Ids::Packed { bytes, width: 1 } => out.extend(bytes[range].iter().map(|&b| b as u32)),
            Ids::Packed { bytes, width: 2 } => out.extend(
                bytes[range.start * 2..range.end * 2]
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32),
            ),
            Ids::Packed { bytes, width } => out.extend(
                bytes[range.start * width..range.end * width]
                    .chunks_exact(width)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
        }
    }

    /// All the ids, copied (for small corpora and tests).
    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len());
        self.extend(0..self.len(), &mut out);
        out
    }

    /// The largest id, or None for no ids.
    pub fn max(&self) -> Option<u32> {
        use rayon::prelude::*;
        match *self {
            Ids::Wide(ids) => ids.par_iter().copied().max(),
            Ids::Packed { bytes, width: 1 } => bytes.par_iter().copied().max().map(u32::from),
            Ids::Packed { bytes, width: 2 } => {
                bytes.par_chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).max()
            }
            Ids::Packed { bytes, width } => {
                bytes.par_chunks_exact(width).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).max()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_reads_the_same_ids() {
        let ids: Vec<u32> = (0..200).map(|i| i * 7 % 256).collect();
        let wide = Ids::from(&ids);
        let narrow: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        let half: Vec<u8> = ids.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect();
        let full: Vec<u8> = ids.iter().flat_map(|&i| i.to_le_bytes()).collect();
        for (bytes, width) in [(&narrow, 1), (&half, 2), (&full, 4)] {
            let packed = Ids::Packed { bytes, width };
            assert_eq!(packed.len(), 200);
            assert_eq!(packed.to_vec(), ids);
            let (a, b) = packed.split_at(150);
            let mut out = Vec::new();
            b.extend(10..30, &mut out);
            a.extend(0..3, &mut out);
            assert_eq!(out, [&ids[160..180], &ids[0..3]].concat());
            assert_eq!(packed.max(), wide.max());
        }
    }
}
