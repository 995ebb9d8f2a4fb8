//! Fitting a run into a time budget (`fit_minutes`): once one whole epoch has been timed, the
//! run's epochs become those of that length that fit, so the learning-rate schedule ends with
//! the budget on whatever machine runs it, instead of being cut off half-way by a time limit.

/// Epochs of `epoch_seconds` each that fit into `minutes`, counting the whole run's epochs:
/// at least `done` (those already trained, as the plan cannot undo them) and at most `most`
/// (the epochs asked for).
pub fn epochs_that_fit(minutes: f64, epoch_seconds: f64, done: usize, most: usize) -> usize {
    let fit = (minutes * 60.0 / epoch_seconds).floor();
    // A zero-length epoch fits without end; a NaN cannot come from positive inputs, but it
    // would keep the epochs asked for rather than end the run.
    let fit = if fit < most as f64 { fit as usize } else { most };
    fit.max(done).min(most)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epochs_that_fit_are_the_budget_over_the_pace_within_done_and_asked() {
        // 60 minutes at 115 s per epoch: 31.3 epochs, 31 whole ones.
        assert_eq!(epochs_that_fit(60.0, 115.0, 1, 40), 31);
        assert_eq!(epochs_that_fit(60.0, 115.0, 1, 28), 28, "never more than asked");
        assert_eq!(epochs_that_fit(1.0, 600.0, 1, 10), 1, "never fewer than trained");
        assert_eq!(epochs_that_fit(10.0, 60.0, 3, 20), 10);
        assert_eq!(epochs_that_fit(10.0, 0.0, 1, 20), 20, "an instant epoch fits all");
        assert_eq!(epochs_that_fit(f64::MAX, 1e-300, 1, usize::MAX), usize::MAX);
    }
}
