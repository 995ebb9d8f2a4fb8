//! Fitting a run into a time budget (`fit_minutes`): once one whole epoch has been timed, the
//! run's epochs become those of that length that fit, so the learning-rate schedule ends with
//! the budget on whatever machine runs it, instead of being cut off half-way by a time limit.

/// The share of the timed epoch's length that the plan leaves spare for each epoch. Later
/// epochs of one run drift from the first one's pace on a shared host: 75–83 s against the
/// 78.8 s timed over 45 epochs on a 2-core Xeon, which without a margin ended 30 s past its
/// 60 minutes.
pub const PACE_MARGIN: f64 = 0.03;

/// Epochs of `epoch_seconds` each (plus [`PACE_MARGIN`]) that fit into `minutes` once
/// `other_seconds` (the time this invocation spent outside its epochs: loading, saving) are
/// taken from it, counting the whole run's epochs: at least `done` (those already trained, as
/// the plan cannot undo them) and at most `most` (the epochs asked for).
pub fn epochs_that_fit(
    minutes: f64,
    epoch_seconds: f64,
    other_seconds: f64,
    done: usize,
    most: usize,
) -> usize {
    let left = minutes * 60.0 - other_seconds.max(0.0);
    let fit = (left / (epoch_seconds * (1.0 + PACE_MARGIN))).floor();
    // A zero-length epoch fits without end; a NaN cannot come from positive inputs, but it
    // would keep the epochs asked for rather than end the run. A negative `fit` (the other
    // work alone took the budget) keeps the epochs done.
    let fit = if fit < most as f64 { fit.max(0.0) as usize } else { most };
    fit.max(done).min(most)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epochs_that_fit_are_the_budget_left_over_the_pace_within_done_and_asked() {
        // 60 minutes at 115 s per epoch and its margin: 3600 / 118.45 = 30.4 epochs, 30 whole.
        assert_eq!(epochs_that_fit(60.0, 115.0, 0.0, 1, 40), 30);
        // 60 minutes at 78.8 s: 44.35 with the margin, where 45 would end past the hour.
        assert_eq!(epochs_that_fit(60.0, 78.8, 0.0, 1, 45), 44);
        // The time spent loading and saving comes off the budget: 3500 / 118.45 = 29.5.
        assert_eq!(epochs_that_fit(60.0, 115.0, 100.0, 1, 40), 29);
        assert_eq!(epochs_that_fit(60.0, 115.0, 0.0, 1, 28), 28, "never more than asked");
        assert_eq!(epochs_that_fit(1.0, 600.0, 0.0, 1, 10), 1, "never fewer than trained");
        assert_eq!(epochs_that_fit(1.0, 6.0, 120.0, 3, 10), 3, "nor when the budget is spent");
        assert_eq!(epochs_that_fit(10.0, 0.0, 0.0, 1, 20), 20, "an instant epoch fits all");
        assert_eq!(epochs_that_fit(f64::MAX, 1e-300, 0.0, 1, usize::MAX), usize::MAX);
    }
}
