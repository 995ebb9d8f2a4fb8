//! The input pipeline, as the tutorial's tf.data one: chunk the id stream into sequences of
//! seq_len + 1, split each into input (all but last) and target (all but first), shuffle with
//! a fixed-size buffer, batch, drop the remainder. Plus the contiguous validation split.

pub mod cache;
pub mod ids;
pub mod sources;
pub mod utf8;
pub mod vocab;

pub use ids::Ids;

use rand::Rng;

/// The tutorial's corpus: where it is published and its SHA-256 (a download checks it).
pub mod tutorial {
    /// Where the TensorFlow tutorial's Shakespeare is published.
    pub const URL: &str = "https://storage.googleapis.com/download.tensorflow.org/data/shakespeare.txt";
    /// Its SHA-256.
    pub const SHA256: &str = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed";
}

/// Bytes as lowercase hexadecimal (SHA-256 digests).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits the id stream: the last `val_fraction` is held out, contiguous and unshuffled.
pub fn split_validation<'a>(ids: impl Into<Ids<'a>>, val_fraction: f64) -> (Ids<'a>, Ids<'a>) {
    let ids = ids.into();
    let train_len = ((ids.len() as f64) * (1.0 - val_fraction)).floor() as usize;
    ids.split_at(train_len.min(ids.len()))
}

/// Consecutive non-overlapping chunks of `seq_len + 1` ids; the remainder is dropped.
#[derive(Clone, Copy)]
pub struct Sequences<'a> {
    ids: Ids<'a>,
    seq_len: usize,
}

impl<'a> Sequences<'a> {
    /// The sequences of `seq_len + 1` ids in `ids`.
    pub fn new(ids: impl Into<Ids<'a>>, seq_len: usize) -> Self {
        Sequences { ids: ids.into(), seq_len }
    }

    /// How many sequences.
    pub fn len(&self) -> usize {
        self.ids.len() / (self.seq_len + 1)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Characters per input (and per target).
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Inputs and targets of the chosen sequences, row-major [indices.len(), seq_len].
    pub fn batch(&self, indices: &[usize]) -> Batch {
        let (t, n) = (self.seq_len, self.seq_len + 1);
        let mut inputs = Vec::with_capacity(indices.len() * t);
        let mut targets = Vec::with_capacity(indices.len() * t);
        for &i in indices {
            self.ids.extend(i * n..i * n + t, &mut inputs);
            self.ids.extend(i * n + 1..(i + 1) * n, &mut targets);
        }
        Batch { inputs, targets, batch_size: indices.len(), seq_len: self.seq_len }
    }
}

/// Truncated backpropagation through time as char-rnn does it: the stream is cut into `batch`
/// contiguous lanes, and batch k holds the k-th window of `seq_len` characters of every lane,
/// so a state carried from one batch to the next continues the same text. Never shuffled.
#[derive(Clone, Copy)]
pub struct Lanes<'a> {
    ids: Ids<'a>,
    batch: usize,
    seq_len: usize,
}

impl<'a> Lanes<'a> {
    /// `ids` cut into `batch` lanes, read `seq_len` characters at a time.
    pub fn new(ids: impl Into<Ids<'a>>, batch: usize, seq_len: usize) -> Self {
        Lanes { ids: ids.into(), batch, seq_len }
    }

    fn lane_len(&self) -> usize {
        self.ids.len() / self.batch
    }

    /// Batches per epoch (each window needs one more character for its last target).
    pub fn len(&self) -> usize {
        self.lane_len().saturating_sub(1) / self.seq_len
    }

    /// Whether there is not one batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The k-th window of every lane.
    pub fn batch(&self, k: usize) -> Batch {
        let (t, lane) = (self.seq_len, self.lane_len());
        let mut inputs = Vec::with_capacity(self.batch * t);
        let mut targets = Vec::with_capacity(self.batch * t);
        for b in 0..self.batch {
            let start = b * lane + k * t;
            self.ids.extend(start..start + t, &mut inputs);
            self.ids.extend(start + 1..start + t + 1, &mut targets);
        }
        Batch { inputs, targets, batch_size: self.batch, seq_len: t }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// One training batch: inputs and the targets they predict, row-major [batch_size, seq_len].
pub struct Batch {
    /// Input ids.
    pub inputs: Vec<u32>,
    /// Target ids: each input's next character.
    pub targets: Vec<u32>,
    /// Sequences.
    pub batch_size: usize,
    /// Characters per sequence.
    pub seq_len: usize,
}

/// tf.data's `shuffle(buffer_size)`: a buffer filled from the stream; each output is a
/// uniformly chosen buffer slot, which is then refilled with the next element (or removed once
/// the stream is exhausted). Yields an order of `0..n`, holding only the buffer: the memory does
/// not grow with the corpus.
pub struct ShuffleBuffer<R> {
    buffer: Vec<usize>,
    next: usize,
    n: usize,
    rng: R,
}

impl<R: Rng> ShuffleBuffer<R> {
    /// An order of `0..n` through a buffer of `buffer_size`, drawn with `rng`.
    pub fn new(n: usize, buffer_size: usize, rng: R) -> Self {
        let buffer: Vec<usize> = (0..n.min(buffer_size)).collect();
        ShuffleBuffer { next: buffer.len(), buffer, n, rng }
    }
}

impl<R: Rng> Iterator for ShuffleBuffer<R> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.buffer.is_empty() {
            return None;
        }
        let slot = self.rng.random_range(0..self.buffer.len());
        let out = self.buffer[slot];
        if self.next < self.n {
            self.buffer[slot] = self.next;
            self.next += 1;
        } else {
            self.buffer.swap_remove(slot);
        }
        Some(out)
    }
}

/// One epoch's batches as they are needed: shuffled sequence indices in groups of
/// `batch_size`, the remainder dropped (the tutorial's `batch(drop_remainder=True)`).
pub struct EpochBatches<R> {
    order: ShuffleBuffer<R>,
    batch_size: usize,
    left: usize,
}

impl<R: Rng> EpochBatches<R> {
    /// The batches of an epoch over `n_sequences`, shuffled through a buffer of `buffer_size`.
    pub fn new(n_sequences: usize, batch_size: usize, buffer_size: usize, rng: R) -> Self {
        EpochBatches {
            order: ShuffleBuffer::new(n_sequences, buffer_size, rng),
            batch_size,
            left: n_sequences / batch_size,
        }
    }
}

impl<R: Rng> Iterator for EpochBatches<R> {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        self.left = self.left.checked_sub(1)?;
        Some(self.order.by_ref().take(self.batch_size).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn the_tutorials_hello_example() {
        let vocab = crate::data::vocab::Vocab::from_text("Hello");
        let ids = vocab.encode("Hello").unwrap();
        let seqs = Sequences::new(&ids, 4);
        assert_eq!(seqs.len(), 1);
        let b = seqs.batch(&[0]);
        assert_eq!(vocab.decode(&b.inputs), "Hell");
        assert_eq!(vocab.decode(&b.targets), "ello");
    }

    #[test]
    fn chunks_drop_the_remainder() {
        let ids: Vec<u32> = (0..23).collect();
        let seqs = Sequences::new(&ids, 4);
        assert_eq!(seqs.len(), 4);
        let b = seqs.batch(&[3]);
        assert_eq!((b.inputs, b.targets), (vec![15, 16, 17, 18], vec![16, 17, 18, 19]));
        let b = seqs.batch(&[2, 0]);
        assert_eq!(b.inputs, vec![10, 11, 12, 13, 0, 1, 2, 3]);
        assert_eq!(b.targets, vec![11, 12, 13, 14, 1, 2, 3, 4]);
    }

    #[test]
    fn shuffle_is_a_bounded_seeded_permutation() {
        let (n, buf) = (500, 37);
        let order = |seed| ShuffleBuffer::new(n, buf, StdRng::seed_from_u64(seed)).collect::<Vec<_>>();
        let (a, b, c) = (order(1), order(1), order(2));
        assert_eq!(a, b, "same seed, same order");
        assert_ne!(a, c, "different seed, different order");
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
        for (pos, &elem) in a.iter().enumerate() {
            assert!(elem < pos + buf, "element {elem} came out at {pos}: too early");
        }
        // The bound is tight: some element does come out exactly buffer_size - 1 early.
        assert!(a.iter().enumerate().any(|(pos, &e)| e == pos + buf - 1));
    }

    #[test]
    fn each_epoch_reshuffles() {
        let mut rng = StdRng::seed_from_u64(7);
        let e1: Vec<_> = EpochBatches::new(100, 8, 50, &mut rng).collect();
        let e2: Vec<_> = EpochBatches::new(100, 8, 50, &mut rng).collect();
        assert_eq!(e1.len(), 12);
        assert!(e1.iter().all(|b| b.len() == 8));
        assert_ne!(e1, e2);
    }

    #[test]
    fn lanes_continue_from_batch_to_batch() {
        let ids: Vec<u32> = (0..23).collect();
        // two lanes of 11: 0..11 and 11..22; windows of 3 need 3 + 1 characters
        let lanes = Lanes::new(&ids, 2, 3);
        assert_eq!(lanes.len(), 3);
        let b0 = lanes.batch(0);
        assert_eq!(b0.inputs, vec![0, 1, 2, 11, 12, 13]);
        assert_eq!(b0.targets, vec![1, 2, 3, 12, 13, 14]);
        let b2 = lanes.batch(2);
        assert_eq!(b2.inputs, vec![6, 7, 8, 17, 18, 19]);
        assert_eq!(b2.targets, vec![7, 8, 9, 18, 19, 20]);
    }

    #[test]
    fn validation_is_the_contiguous_tail() {
        let ids: Vec<u32> = (0..100).collect();
        let (train, val) = split_validation(&ids, 0.1);
        assert_eq!(train.len(), 90);
        assert_eq!(val.to_vec(), &ids[90..]);
        let (train, val) = split_validation(&ids, 0.0);
        assert_eq!((train.len(), val.len()), (100, 0));
    }
}
