//! `train --fit-minutes`: after the first whole epoch, the run's epochs become those that fit
//! the budget at that epoch's pace; the plan is saved, so a resumed run keeps it, and the epochs
//! it trains are those of a run asked for them outright.

mod common;
use common::{charrnn, stderr, tensor_bytes, Runs};

const SMALL: &[&str] = &[
    "--batch-size",
    "4",
    "--seq-len",
    "20",
    "--embedding-dim",
    "8",
    "--rnn-units",
    "16",
    "--device",
    "cpu",
    "--seed",
    "5",
    "--lr-schedule",
    "cosine",
];

/// A budget shorter than one epoch ends the run after its first, with its checkpoint: the same
/// weights as the first epoch of the run asked for, and a saved plan that resuming keeps.
#[test]
fn a_budget_below_one_epoch_ends_the_run_after_it_and_resuming_keeps_the_plan() {
    let runs = Runs::new(SMALL);
    let log = runs.train("fitted", &["--epochs", "3", "--fit-minutes", "0.00001"]);
    assert!(log.contains("--fit-minutes 0.00001: 1 of the 3 epochs fit"), "{log}");
    assert!(log.contains("end after epoch 1"), "{log}");
    let files = common::file_names(&runs.folder("fitted"));
    assert!(files.contains(&"ckpt_1.safetensors".to_string()), "{files:?}");
    assert!(!files.iter().any(|f| f.starts_with("ckpt_2")), "{files:?}");
    runs.train("asked", &["--epochs", "3"]);
    assert_eq!(
        tensor_bytes(&runs.folder("fitted").join("ckpt_1.safetensors")),
        tensor_bytes(&runs.folder("asked").join("ckpt_1.safetensors")),
        "the epoch before the plan is the run's as asked"
    );
    let o = charrnn(&["train", "--resume", runs.folder("fitted").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("already trained 1 epochs"), "{}", stderr(&o));
}

/// A budget that holds every epoch asked for trains exactly the run asked for.
#[test]
fn a_budget_that_holds_every_epoch_changes_nothing() {
    let runs = Runs::new(SMALL);
    let log = runs.train("fitted", &["--epochs", "2", "--fit-minutes", "600"]);
    assert!(log.contains("--fit-minutes 600: all 2 epochs fit"), "{log}");
    runs.train("asked", &["--epochs", "2"]);
    for file in ["ckpt_2.safetensors", "ckpt_2.optim.safetensors"] {
        assert_eq!(
            tensor_bytes(&runs.folder("fitted").join(file)),
            tensor_bytes(&runs.folder("asked").join(file)),
            "{file}"
        );
    }
}

#[test]
fn a_budget_must_be_a_positive_number_of_minutes() {
    let runs = Runs::new(SMALL);
    for bad in ["0", "-1", "nan", "inf"] {
        let o = charrnn(&["train", "--data", &runs.data, "--fit-minutes", bad, "--device", "cpu"]);
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("--fit-minutes") && !err.contains("panicked"),
            "{bad}: {err}"
        );
    }
}
