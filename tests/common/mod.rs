//! Helpers shared by the integration tests. Each test crate uses some of them.
#![allow(dead_code)]

pub mod browser;
pub mod server;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The built `charrnn` binary with `args`, to run (after any more settings).
pub fn charrnn_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_charrnn"));
    command.args(args);
    command
}

/// Runs the built `charrnn` binary with `args`.
pub fn charrnn(args: &[&str]) -> Output {
    charrnn_command(args).output().expect("the binary runs")
}

/// What a run printed on stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A small text that repeats: enough for a few batches of the tests' tiny models.
pub fn tiny_text() -> String {
    "the quick brown fox jumps over the lazy dog.\nthe dog sleeps; the fox runs away.\n".repeat(40)
}

/// A server on 127.0.0.1 that answers one request with a 200 and no length, then sends
/// `chunk` every `every` for at most `for_at_most` (a slow or endless body). Returns its URL.
pub fn trickling_server(chunk: &'static [u8], every: Duration, for_at_most: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/trickle.txt", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else { return };
        // Read the request first: a client sent an answer before its request gives up.
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            line.clear();
        }
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let until = Instant::now() + for_at_most;
        while Instant::now() < until && stream.write_all(chunk).is_ok() {
            std::thread::sleep(every);
        }
    });
    url
}

/// Every tensor's name and raw bytes, sorted by name.
pub fn tensor_bytes(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

/// ‖a − b‖ / ‖a‖ over every weight of two checkpoints of one model (f32 tensors).
pub fn relative_difference(a: &std::path::Path, b: &std::path::Path) -> f64 {
    let (a, b) = (tensor_bytes(a), tensor_bytes(b));
    assert_eq!(a.iter().map(|t| &t.0).collect::<Vec<_>>(), b.iter().map(|t| &t.0).collect::<Vec<_>>());
    let values = |bytes: &[u8]| {
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect::<Vec<_>>()
    };
    let (mut diff, mut norm) = (0.0, 0.0);
    for ((_, x), (_, y)) in a.iter().zip(&b) {
        for (x, y) in values(x).into_iter().zip(values(y)) {
            diff += (x - y).powi(2);
            norm += x.powi(2);
        }
    }
    (diff / norm).sqrt()
}

/// The names of the entries of a folder, sorted.
pub fn file_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Whether /proc/cpuinfo lists the CPU flag `flag` (false where there is no such file).
pub fn cpu_has(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().split_whitespace().any(|w| w == flag)
}

/// The CPU with the kernel `CHARRNN_KERNEL` names (CI runs some tests once per kernel), in f32.
pub fn compute() -> charrnn_core::Compute {
    let kernel = charrnn_core::Kernel::from_env().unwrap();
    charrnn_core::Compute::new(candle_core::Device::Cpu, kernel, charrnn_core::Precision::F32).unwrap()
}

/// The same on `device`.
pub fn compute_on(device: &candle_core::Device) -> charrnn_core::Compute {
    let kernel = charrnn_core::Kernel::from_env().unwrap();
    charrnn_core::Compute::new(device.clone(), kernel, charrnn_core::Precision::F32).unwrap()
}

/// Training runs side by side on the tiny text, each in its own folder of one temporary
/// directory, all with the same `settings` (a test's small model).
pub struct Runs {
    dir: tempfile::TempDir,
    /// The tiny text's file.
    pub data: String,
    settings: &'static [&'static str],
}

impl Runs {
    pub fn new(settings: &'static [&'static str]) -> Runs {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("tiny.txt");
        std::fs::write(&data, tiny_text()).unwrap();
        Runs { data: data.to_string_lossy().into_owned(), dir, settings }
    }

    pub fn folder(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `charrnn train` into folder `name`, checkpoints every epoch, with the settings and
    /// `extra`; returns its stderr.
    pub fn train(&self, name: &str, extra: &[&str]) -> String {
        let dir = self.folder(name).to_string_lossy().into_owned();
        let run = ["train", "--data", &self.data, "--save-every", "1", "--checkpoint-dir", &dir];
        let o = charrnn(&[&run[..], self.settings, extra].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    }
}
