//! Training metrics: `metrics.jsonl` (one JSON object per logged step and per epoch) and
//! `loss.svg` (train and validation loss against step), both rewritten atomically.
//!
//! The plot is a small hand-written SVG: it needs no fonts or drawing library and is the same
//! bytes for the same numbers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::notice::{Notice, Notify};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
/// One line of `metrics.jsonl`.
pub enum Record {
    /// A logged training step (every 100th batch).
    Step {
        /// The epoch (from 1).
        epoch: usize,
        /// Steps taken.
        step: u64,
        /// The batch's loss, nats per character.
        loss: f64,
        /// The step's learning rate.
        learning_rate: f64,
        /// Training characters per second.
        chars_per_s: f64,
    },
    /// An epoch's end.
    Epoch {
        /// The epoch (from 1).
        epoch: usize,
        /// Steps taken.
        step: u64,
        /// Mean training loss of the epoch.
        train_loss: f64,
        /// Validation loss, nats per character.
        val_loss: Option<f64>,
        /// The same in bits.
        val_bits_per_char: Option<f64>,
        /// Seconds the epoch took.
        seconds: f64,
    },
}

impl Record {
    /// Steps taken when it was written.
    pub fn step(&self) -> u64 {
        match self {
            Record::Step { step, .. } | Record::Epoch { step, .. } => *step,
        }
    }
}

/// A run's metrics file and plot, with the records so far.
pub struct Metrics {
    jsonl: PathBuf,
    svg: PathBuf,
    /// Every record, oldest first.
    pub records: Vec<Record>,
}

impl Metrics {
    /// The file's name in the run's folder.
    pub const FILE: &'static str = "metrics.jsonl";
    /// The plot's name in the run's folder.
    pub const PLOT: &'static str = "loss.svg";

    /// A fresh log in `dir`, or, when resuming, the existing one cut back to `upto_step`.
    pub fn open(dir: &Path, resume_from: Option<u64>, notify: Notify) -> Result<Self> {
        let jsonl = dir.join(Self::FILE);
        let mut records = Vec::new();
        if let Some(upto) = resume_from {
            if jsonl.exists() {
                records = read(&jsonl, notify)?.into_iter().filter(|r| r.step() <= upto).collect();
            }
        }
        Ok(Metrics { jsonl, svg: dir.join(Self::PLOT), records })
    }

    /// Adds a record and rewrites the file.
    pub fn push(&mut self, record: Record) -> Result<()> {
        self.records.push(record);
        let mut text = String::new();
        for r in &self.records {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        crate::atomic::write(&self.jsonl, text.as_bytes())
    }

    /// Rewrites the plot.
    pub fn plot(&self) -> Result<()> {
        crate::atomic::write(&self.svg, svg(&self.records).as_bytes())
    }
}

/// The records of a metrics file; lines that are not records are noticed and skipped.
pub fn read(path: &Path, notify: Notify) -> Result<Vec<Record>> {
    let text =
        crate::files::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // The file is rewritten whole and atomically, but it is a text a person may edit: a
    // damaged line costs that record, not the run.
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(r) => records.push(r),
            Err(e) => notify(Notice::MetricsLineSkipped {
                path: path.to_path_buf(),
                line: i + 1,
                why: e.to_string(),
            }),
        }
    }
    Ok(records)
}

/// Train loss (logged steps and epoch means) and validation loss against step.
pub fn svg(records: &[Record]) -> String {
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Step { step, loss, .. } => Some((*step as f64, *loss)),
            _ => None,
        })
        .collect();
    let val: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Epoch { step, val_loss: Some(v), .. } => Some((*step as f64, *v)),
            _ => None,
        })
        .collect();
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 60.0, 20.0, 20.0, 40.0);
    let all: Vec<&(f64, f64)> = train.iter().chain(&val).collect();
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.iter().map(|p| p.1).fold(0.5, f64::max).ceil();
    let x = |v: f64| left + v / x_max * (w - left - right);
    let y = |v: f64| top + (1.0 - v / y_max) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.2}</text>"##,
            w - right,
            y(v),
            y(v),
            left - 6.0,
            y(v) + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">step (of {x_max:.0})</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">loss (nats/char)</text>"#,
        (left + w - right) / 2.0,
        h - 10.0,
        h / 2.0,
        h / 2.0
    );
    for (points, colour, label, dy) in
        [(&train, "#1f77b4", "train", 0.0), (&val, "#d62728", "validation", 16.0)]
    {
        if points.is_empty() {
            continue;
        }
        let path: Vec<String> =
            points.iter().map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py))).collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/><text x="{:.1}" y="{:.1}" fill="{colour}" text-anchor="end">{label}</text>"#,
            path.join(" "),
            w - right - 4.0,
            top + 14.0 + dy
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trips_and_resume_cuts_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Metrics::open(dir.path(), None, &mut crate::notice::ignore).unwrap();
        m.push(Record::Step { epoch: 1, step: 1, loss: 4.0, learning_rate: 1e-3, chars_per_s: 10.0 })
            .unwrap();
        let epoch = Record::Epoch {
            epoch: 1,
            step: 2,
            train_loss: 3.0,
            val_loss: Some(2.0),
            val_bits_per_char: Some(2.0 / std::f64::consts::LN_2),
            seconds: 1.5,
        };
        m.push(epoch.clone()).unwrap();
        m.push(Record::Step { epoch: 2, step: 3, loss: 2.5, learning_rate: 1e-3, chars_per_s: 10.0 })
            .unwrap();
        assert_eq!(read(&dir.path().join(Metrics::FILE), &mut crate::notice::ignore).unwrap(), m.records);
        let text = std::fs::read_to_string(dir.path().join(Metrics::FILE)).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().nth(1).unwrap().starts_with(r#"{"kind":"epoch","epoch":1,"step":2"#));
        let resumed = Metrics::open(dir.path(), Some(2), &mut crate::notice::ignore).unwrap();
        assert_eq!(resumed.records.len(), 2);
        assert_eq!(resumed.records[1], epoch);
    }

    #[test]
    fn the_plot_has_both_curves() {
        let records = vec![
            Record::Step { epoch: 1, step: 0, loss: 4.2, learning_rate: 1e-3, chars_per_s: 1.0 },
            Record::Step { epoch: 1, step: 100, loss: 2.0, learning_rate: 1e-3, chars_per_s: 1.0 },
            Record::Epoch {
                epoch: 1,
                step: 150,
                train_loss: 2.5,
                val_loss: Some(2.2),
                val_bits_per_char: None,
                seconds: 1.0,
            },
        ];
        let s = svg(&records);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains(">train<") && s.contains(">validation<"));
        // The first training point sits at the left edge, at loss 4.2 of an axis up to 5.
        assert!(s.contains("points=\"60.0,77.6 "), "{s}");
    }
}
