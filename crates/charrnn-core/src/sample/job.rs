//! One request for samples: its start, its own random stream and picking rule, its length and
//! stop strings, and the text each sample has produced. The [`super::Engine`] runs jobs:
//! `generate` one, the server many in one batch. A job draws its random numbers in the same
//! order however it is run (every step, one per sample, in sample order, until the job ends),
//! so the same options and seed give the same text alone, beside other jobs, on the CPU or on a
//! GPU.
//!
//! The sampling defaults and rules live here, once, for every front end.

use anyhow::{anyhow, bail, Result};
use rand::{rngs::StdRng, SeedableRng};

use super::picker::Picker;
use crate::data::vocab::Vocab;

/// The start text when none is given (the tutorial's).
pub const DEFAULT_START: &str = "ROMEO: ";
/// Characters per sample when no length is given.
pub const DEFAULT_LENGTH: usize = 1000;
/// The softmax temperature when none is given: the model's own distribution.
pub const DEFAULT_TEMPERATURE: f32 = 1.0;

/// Why a stop string cannot be one (None when it can): a stop string needs a character.
pub fn stop_problem(stop: &str) -> Option<&'static str> {
    stop.is_empty().then_some("give at least one character")
}

/// What a job is asked for: the `generate` command's options.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// Text the samples continue (and begin with).
    pub start: String,
    /// Characters to draw per sample, unless a stop string ends it first.
    pub length: usize,
    /// Softmax temperature; 0 always takes the most likely character.
    pub temperature: f32,
    /// Draw only from the k most likely characters.
    pub top_k: Option<usize>,
    /// Draw only from the most likely characters that together have probability p.
    pub top_p: Option<f32>,
    /// Seeds the job's random stream.
    pub seed: u64,
    /// Samples drawn together, each with the same options.
    pub num_samples: usize,
    /// A sample ends at the first of these it produces.
    pub stop: Vec<String>,
    /// Keep the stop string that ended a sample at its end.
    pub include_stop: bool,
}

impl SampleOptions {
    /// `length` characters after `start`, with the defaults for the rest (temperature 1, no cut
    /// of the tail, seed 0, one sample, no stop strings).
    pub fn new(start: &str, length: usize) -> Self {
        SampleOptions {
            start: start.to_string(),
            length,
            temperature: DEFAULT_TEMPERATURE,
            top_k: None,
            top_p: None,
            seed: 0,
            num_samples: 1,
            stop: Vec::new(),
            include_stop: false,
        }
    }
}

/// The text one sample has produced after its start.
#[derive(Default)]
struct Produced {
    text: String,
    /// Bytes of `text` already handed out.
    handed_out: usize,
    /// Where the text ends for good: set when a stop string appears.
    end: Option<usize>,
}

impl Produced {
    /// The text that stays: all of it, or up to the stop string's cut.
    fn kept(&self) -> &str {
        &self.text[..self.end.unwrap_or(self.text.len())]
    }
}

/// A request for samples being run: see the module notes.
pub struct Job {
    /// The characters that warm the state before the first draw.
    prime: Vec<u32>,
    primed: usize,
    picker: Picker,
    rng: StdRng,
    left: usize,
    stop: Vec<String>,
    include_stop: bool,
    start: String,
    samples: Vec<Produced>,
}

impl Job {
    /// Checks the options against the vocabulary: characters of the start that it lacks are an
    /// error that lists them. An empty start primes the state with a newline.
    pub fn new(vocab: &Vocab, o: &SampleOptions) -> Result<Job> {
        let prime = if o.start.is_empty() {
            match vocab.id('\n') {
                Some(id) => vec![id],
                None => bail!(
                    "the start is empty and the vocabulary has no newline to start from; give a start text"
                ),
            }
        } else {
            vocab
                .encode(&o.start)
                .map_err(|e| anyhow!("{e}; use only characters the model was trained on"))?
        };
        if let Some(problem) = o.stop.iter().find_map(|s| stop_problem(s)) {
            bail!("a stop string is empty; {problem}");
        }
        Ok(Job {
            prime,
            primed: 0,
            picker: Picker::new(o.temperature, o.top_k, o.top_p),
            rng: StdRng::seed_from_u64(o.seed),
            left: o.length,
            stop: o.stop.clone(),
            include_stop: o.include_stop,
            start: o.start.clone(),
            samples: (0..o.num_samples).map(|_| Produced::default()).collect(),
        })
    }

    /// The text the samples begin with.
    pub fn start(&self) -> &str {
        &self.start
    }

    /// Samples drawn together.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// Characters still to draw per sample, unless stop strings end the job first.
    pub fn left(&self) -> usize {
        self.left
    }

    /// Whether start characters are still to be fed.
    pub(crate) fn is_priming(&self) -> bool {
        self.primed < self.prime.len()
    }

    /// The next start character to feed, while the state is being warmed step by step.
    pub(crate) fn next_prime(&mut self) -> Option<u32> {
        let id = self.prime.get(self.primed).copied();
        self.primed += id.is_some() as usize;
        id
    }

    /// The picking rule and the job's random stream, for an engine that draws by itself.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn picker_and_rng(&mut self) -> (&mut Picker, &mut StdRng) {
        (&mut self.picker, &mut self.rng)
    }

    /// Draws one character per sample from `logits` ([samples, V]) into `ids`.
    pub(crate) fn pick(&mut self, logits: &[f32], ids: &mut Vec<u32>) {
        let vocab = logits.len() / self.samples.len();
        self.picker.pick_rows(logits, vocab, &mut self.rng, ids);
    }

    /// Takes one drawn character per sample. Returns true when the job is over: its length is
    /// reached or every sample has met a stop string.
    pub(crate) fn accept(&mut self, ids: &[u32], vocab: &Vocab) -> bool {
        for (s, &id) in self.samples.iter_mut().zip(ids) {
            if s.end.is_some() {
                continue;
            }
            s.text.push(vocab.char(id));
            if let Some(stop) =
                self.stop.iter().filter(|p| s.text.ends_with(p.as_str())).max_by_key(|p| p.len())
            {
                let at = s.text.len() - stop.len();
                s.end = Some(if self.include_stop { s.text.len() } else { at });
            }
        }
        self.left = self.left.saturating_sub(1);
        self.left == 0 || self.samples.iter().all(|s| s.end.is_some())
    }

    /// The text of each sample that is final and not yet handed out, as (sample, text). Text
    /// that could be the beginning of a stop string is held back until it is known not to be.
    /// With `finished`, everything left is handed out.
    pub fn take_new_text(&mut self, finished: bool) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, s) in self.samples.iter_mut().enumerate() {
            let upto = match s.end {
                Some(end) => end,
                None if finished => s.text.len(),
                None => s.text.len() - held_back(&s.text[s.handed_out..], &self.stop),
            };
            if upto > s.handed_out {
                out.push((i, s.text[s.handed_out..upto].to_string()));
                s.handed_out = upto;
            }
        }
        out
    }

    /// Each sample's whole text, the start first.
    pub fn texts(&self) -> Vec<String> {
        (self.samples.iter()).map(|s| format!("{}{}", self.start, s.kept())).collect()
    }

    /// Whether a stop string ended sample `sample` (else its length did, or it runs on).
    pub fn stopped(&self, sample: usize) -> bool {
        self.samples.get(sample).is_some_and(|s| s.end.is_some())
    }

    /// Characters produced so far, over all samples (for a rate).
    pub fn produced_chars(&self) -> usize {
        self.samples.iter().map(|s| s.kept().chars().count()).sum()
    }
}

/// The length in bytes of the longest end of `text` that begins some stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut held = 0;
    for stop in stops {
        for (k, _) in stop.char_indices().skip(1) {
            if k > held && text.ends_with(&stop[..k]) {
                held = k;
            }
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(stop: &[&str], include_stop: bool) -> SampleOptions {
        SampleOptions {
            num_samples: 2,
            stop: stop.iter().map(|s| s.to_string()).collect(),
            include_stop,
            ..SampleOptions::new("a", 100)
        }
    }

    /// Feeds two samples' texts character by character and returns what was handed out.
    fn run(job: &mut Job, vocab: &Vocab, a: &str, b: &str) -> (Vec<String>, bool) {
        let mut out = vec![String::new(), String::new()];
        let mut over = false;
        for (x, y) in a.chars().zip(b.chars()) {
            over = job.accept(&[vocab.id(x).unwrap(), vocab.id(y).unwrap()], vocab);
            for (i, t) in job.take_new_text(over) {
                out[i] += &t;
            }
            if over {
                break;
            }
        }
        (out, over)
    }

    #[test]
    fn stop_strings_end_each_sample_and_are_held_back_until_decided() {
        let vocab = Vocab::from_text("abcde\n");
        let mut job = Job::new(&vocab, &options(&["cd", "\n\n"], false)).unwrap();
        let (out, over) = run(&mut job, &vocab, "abcdeeee", "abceeeee");
        assert!(!over, "the second sample has not stopped");
        assert_eq!(out, ["ab", "abceeeee"]);
        // A text that only begins a stop is held back: "abc" may become "abcd".
        let mut job = Job::new(&vocab, &options(&["cd"], false)).unwrap();
        let (a, c) = (vocab.id('a').unwrap(), vocab.id('c').unwrap());
        job.accept(&[c, c], &vocab);
        job.accept(&[c, a], &vocab);
        assert_eq!(job.take_new_text(false), [(0, "c".to_string()), (1, "ca".to_string())]);
        // Both samples stopping ends the job; the stop string is kept when asked.
        let mut job = Job::new(&vocab, &options(&["\n\n"], true)).unwrap();
        let (out, over) = run(&mut job, &vocab, "ab\n\ncc", "a\n\nccc");
        assert!(over);
        assert_eq!(out, ["ab\n\n", "a\n\n"]);
        assert_eq!(job.texts(), ["aab\n\n", "aa\n\n"]);
    }
}
