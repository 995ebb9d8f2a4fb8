//! The value rules of the settings, shared by the command-line parsers and by every source of
//! settings read back from disk (a resumed run's optimizer file), so both refuse the same
//! values with the same words.

use std::fmt::Display;

/// A rule a setting's value must satisfy, and how to say it.
pub struct Rule<T> {
    /// Whether a value is allowed.
    pub ok: fn(T) -> bool,
    /// Completes "must be …".
    pub expected: &'static str,
}

impl<T: Display + Copy> Rule<T> {
    /// The value, or `Err("must be …, got v")` when it breaks the rule.
    pub fn check(&self, value: T) -> Result<T, String> {
        match (self.ok)(value) {
            true => Ok(value),
            false => Err(format!("must be {}, got {value}", self.expected)),
        }
    }

    /// [`Rule::check`] for a named flag: `Err("--flag must be …, got v")`.
    pub fn check_flag(&self, flag: &str, value: T) -> Result<T, String> {
        self.check(value).map_err(|e| format!("{flag} {e}"))
    }
}

/// A count: 1 or more.
pub const AT_LEAST_ONE: Rule<usize> = Rule { ok: |n| n > 0, expected: "at least 1" };
/// A count: 1 or more.
pub const AT_LEAST_ONE_U64: Rule<u64> = Rule { ok: |n| n > 0, expected: "at least 1" };
/// A positive, finite number.
pub const POSITIVE: Rule<f64> = Rule { ok: |x| x.is_finite() && x > 0.0, expected: "a positive number" };
/// A finite number, 0 or more.
pub const NON_NEGATIVE: Rule<f64> = Rule { ok: |x| x.is_finite() && x >= 0.0, expected: "0 or more" };
/// A share: 0 or more, below 1.
pub const FRACTION: Rule<f64> = Rule { ok: |x| (0.0..1.0).contains(&x), expected: "in [0, 1)" };
/// A probability above 0, at most 1.
pub const PROBABILITY: Rule<f32> = Rule { ok: |x| x > 0.0 && x <= 1.0, expected: "in (0, 1]" };
/// A softmax temperature: 0 (greedy) or a positive, finite number.
pub const TEMPERATURE: Rule<f32> =
    Rule { ok: |x| x.is_finite() && x >= 0.0, expected: "0 (greedy) or a positive number" };
