//! Several processes training one model together (data parallelism), behind the few collective
//! operations training needs. Each process (a rank) takes its share of every global batch; the
//! gradients are summed across ranks and every rank applies the same optimizer step, so the
//! weights stay identical without ever being sent.
//!
//! The core implements no transport: a front end supplies one (the binary's MPI world, NCCL
//! for GPU memory). [`Alone`] is the world of one process, in which every operation is the
//! identity and training runs exactly as it does without this module.

use std::ops::Range;

use anyhow::{bail, Result};
use candle_core::Tensor;

use crate::model::{to_host, Model};

#[cfg(feature = "nccl")]
mod nccl;
#[cfg(feature = "nccl")]
pub use nccl::Nccl;

/// The processes of one training run and the collective operations among them. Every rank
/// calls the same operations in the same order with buffers of the same lengths; each call
/// returns once every rank has made it (or fails when one cannot).
pub trait Collective: Send + Sync {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// How many ranks train together.
    fn size(&self) -> usize;
    /// Replaces each element by its sum over every rank; every rank gets the same sums.
    fn sum_f32(&self, values: &mut [f32]) -> Result<()>;
    /// As [`Collective::sum_f32`], in f64.
    fn sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// Replaces each element by its maximum over every rank.
    fn max_u64(&self, values: &mut [u64]) -> Result<()>;
    /// Replaces the values by rank 0's.
    fn broadcast_u64(&self, values: &mut [u64]) -> Result<()>;

    /// A tensor's element-wise sum over every rank, on its device and in its dtype. Through
    /// host memory by default; a transport for device memory (NCCL) sums it where it is.
    fn sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        sum_through_host(self, t)
    }
}

/// [`Collective::sum_tensor`] by [`Collective::sum_f32`] on a copy in host memory.
pub fn sum_through_host<C: Collective + ?Sized>(world: &C, t: &Tensor) -> Result<Tensor> {
    let mut values = to_host(t)?;
    world.sum_f32(&mut values)?;
    Ok(Tensor::from_vec(values, t.shape(), t.device())?.to_dtype(t.dtype())?)
}

/// The world of one process: nothing to agree with.
#[derive(Clone, Copy, Debug, Default)]
pub struct Alone;

impl Collective for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn max_u64(&self, _: &mut [u64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_u64(&self, _: &mut [u64]) -> Result<()> {
        Ok(())
    }
    fn sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
}

/// Rank `rank`'s rows of a global batch of `rows` split over `size` ranks: contiguous, in rank
/// order, their sizes differing by at most one.
pub fn share(rows: usize, rank: usize, size: usize) -> Range<usize> {
    rows * rank / size..rows * (rank + 1) / size
}

/// Rank 0's value, on every rank.
pub fn agree(world: &dyn Collective, value: u64) -> Result<u64> {
    let mut v = [value];
    world.broadcast_u64(&mut v)?;
    Ok(v[0])
}

/// Fails on every rank unless every rank has the same `value` for `what`.
pub fn require_same(world: &dyn Collective, what: &str, value: u64) -> Result<()> {
    // max(v) and max(!v) = !min(v): one call gives both ends of the range.
    let mut v = [value, !value];
    world.max_u64(&mut v)?;
    let (max, min) = (v[0], !v[1]);
    if max != min {
        bail!(
            "the {what} differ between the {} ranks (fingerprints from {min:016x} to {max:016x}; this is rank {}'s, {value:016x}): they must run the same build on the same data and settings",
            world.size(),
            world.rank()
        );
    }
    Ok(())
}

/// A fingerprint of the model's weights: the leading 64 bits of the `tensors_sha256` its
/// checkpoint would carry, so a mismatch can be read against the files.
pub fn weights_fingerprint(model: &Model) -> Result<u64> {
    let digest = crate::checkpoint::tensors_sha256(model)?;
    Ok(u64::from_str_radix(&digest[..16], 16)?)
}

/// The first 8 bytes of a digest as a number.
pub fn fingerprint(digest: &[u8]) -> u64 {
    u64::from_le_bytes(digest[..8].try_into().expect("a digest has 8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_in_order_and_differ_by_at_most_one() {
        for rows in 1..40 {
            for size in 1..=rows {
                let shares: Vec<_> = (0..size).map(|r| share(rows, r, size)).collect();
                assert_eq!(shares[0].start, 0);
                assert_eq!(shares[size - 1].end, rows);
                for w in shares.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<_> = shares.iter().map(|s| s.len()).collect();
                let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(hi - lo <= 1 && *lo >= 1, "{rows} over {size}: {lens:?}");
            }
        }
    }
}
