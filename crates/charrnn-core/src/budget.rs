//! Memory a command will need, estimated from its sizes before anything is allocated, and
//! checked against the machine's memory: absurd sizes end as an error that names them, not as
//! an allocation failure that aborts the process.

use anyhow::Result;

use crate::model::Config;

const F32: u128 = 4;

/// Parameters of a model of `c`'s sizes (None when the count overflows).
fn parameters(c: &Config) -> Option<u128> {
    c.checked_parameter_count()
}

/// Training at `batch` sequences of `steps` characters: weights, gradients, Adam's two moments
/// and the packed copies (5 per parameter), each layer's tape and backward buffers (about
/// 3G + 3 values of H per character), and the output layer's logits and gradients.
pub fn training_bytes(c: &Config, batch: usize, steps: usize) -> Option<u128> {
    let chars = (batch as u128).checked_mul(steps as u128)?;
    let (v, e, h, l) = (c.vocab_size as u128, c.embedding_dim as u128, c.rnn_units as u128, c.layers as u128);
    let per_char = h
        .checked_mul(3 * c.cell.gates() as u128 + 3)?
        .checked_mul(l)?
        .checked_add(v.checked_mul(2)?)?
        .checked_add(h.checked_mul(2)?)?
        .checked_add(e)?;
    let values = parameters(c)?.checked_mul(5)?.checked_add(chars.checked_mul(per_char)?)?;
    values.checked_mul(F32)
}

/// Work refused because its memory estimate exceeds the machine's memory (or cannot even be
/// computed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLarge {
    /// The whole message: the work, its sizes, what it needs and what there is.
    pub message: String,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TooLarge {}

/// Sampling `batch` sequences at once: the model and the sampler's copy of it, and per
/// sequence each layer's state and gate buffers and the logits.
pub fn sampling_bytes(c: &Config, batch: usize) -> Option<u128> {
    let (v, h, l) = (c.vocab_size as u128, c.rnn_units as u128, c.layers as u128);
    let g = c.cell.gates() as u128;
    let per_sequence =
        g.checked_mul(h)?.checked_mul(2)?.checked_add(h.checked_mul(6)?)?.checked_mul(l)?.checked_add(v)?;
    let values = parameters(c)?.checked_mul(2)?.checked_add((batch as u128).checked_mul(per_sequence)?)?;
    values.checked_mul(F32)
}

/// This machine's memory in bytes (MemTotal), where the system says.
fn machine_bytes() -> Option<u128> {
    crate::system::proc_kib("/proc/meminfo", "MemTotal")?.checked_mul(1024)
}

fn human(bytes: u128) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

/// Refuses work whose estimate (`None`: too large to even compute) exceeds the machine's
/// memory, as [`TooLarge`]. `what` says what the work is, `sizes` the flags that set it.
pub fn check(what: &str, estimate: Option<u128>, sizes: &str) -> Result<()> {
    let refuse = |message: String| Err(anyhow::Error::new(TooLarge { message }));
    let Some(bytes) = estimate else {
        return refuse(format!("{what} with {sizes} is too large to compute its memory; lower these sizes"));
    };
    if let Some(have) = machine_bytes() {
        if bytes > have {
            return refuse(format!(
                "{what} with {sizes} needs about {} of memory, more than this machine's {}; lower these sizes",
                human(bytes),
                human(have)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tutorial_fits_and_absurd_sizes_do_not() {
        let tutorial = Config::gru(65, 256, 1024);
        let bytes = training_bytes(&tutorial, 64, 100).unwrap();
        // 4M parameters and ~6400 characters × 13 values of 1024: hundreds of MB, not GB.
        assert!((100 << 20..2 << 30).contains(&bytes), "{bytes}");
        assert!(check("training", Some(bytes), "the tutorial's sizes").is_ok());
        let wide = Config::gru(65, 256, 1_000_000);
        let err = check("training", training_bytes(&wide, 64, 100), "--rnn-units 1000000").unwrap_err();
        assert!(err.to_string().contains("--rnn-units 1000000 needs about"), "{err}");
        assert!(training_bytes(&Config::gru(65, usize::MAX, usize::MAX), 64, 100).is_none());
        assert!(sampling_bytes(&tutorial, usize::MAX).is_some_and(|b| b > 1 << 70));
    }
}
