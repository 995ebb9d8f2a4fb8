//! A trained model behind a running `charrnn serve`, for the tests that talk to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::charrnn;

/// Trains a small model on a small text into `dir`, `epochs` epochs; returns its folder.
pub fn train(dir: &Path, name: &str, epochs: &str, seed: &str) -> PathBuf {
    train_with(dir, name, epochs, seed, &[])
}

/// [`train`] with more flags (another cell, more layers).
pub fn train_with(dir: &Path, name: &str, epochs: &str, seed: &str, more: &[&str]) -> PathBuf {
    let mut args = tiny_train_args(dir, name, seed);
    args.extend(["--epochs", epochs].iter().chain(more).map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = charrnn(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    dir.join(name)
}

/// `train`'s arguments for a small model on a small text (written to `dir` as tiny.txt) into
/// `dir/name`, with `seed`: 34 batches of 4 sequences per epoch.
pub fn tiny_train_args(dir: &Path, name: &str, seed: &str) -> Vec<String> {
    let data = dir.join("tiny.txt");
    if !data.exists() {
        std::fs::write(&data, super::tiny_text()).unwrap();
    }
    let (data, ck) = (data.to_string_lossy().into_owned(), dir.join(name).to_string_lossy().into_owned());
    let args = ["train", "--data", &data, "--checkpoint-dir", &ck, "--batch-size", "4", "--seq-len", "20"];
    let model = ["--embedding-dim", "8", "--rnn-units", "16", "--device", "cpu", "--seed", seed];
    args.iter().chain(&model).map(|s| s.to_string()).collect()
}

/// A running server; killed when dropped. Its stderr lines arrive on `log`.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub log: std::sync::Mutex<mpsc::Receiver<String>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_charrnn"));
        command.args(["serve", "--port", "0"]).args(args);
        Server::start_command(command)
    }

    /// `charrnn serve` with `args` under `sh -c "$setup; exec charrnn serve …"` (a `ulimit`,
    /// say).
    pub fn start_after(setup: &str, args: &[&str]) -> Server {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{setup}; exec \"$0\" serve --port 0 \"$@\""))
            .arg(env!("CARGO_BIN_EXE_charrnn"))
            .args(args);
        Server::start_command(command)
    }

    /// A server `command` starts (it must run `charrnn serve --port 0 …`).
    pub fn start_command(mut command: Command) -> Server {
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let (send, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        let until = Instant::now() + Duration::from_secs(30);
        let mut said = Vec::new();
        while let Ok(line) = log.recv_timeout(until.saturating_duration_since(Instant::now())) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                return Server { child, url: addr.to_string(), log: std::sync::Mutex::new(log) };
            }
            said.push(line);
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server never said where it listens; it said:\n{}", said.join("\n"));
    }

    pub fn get(&self, path: &str) -> Value {
        serde_json::from_slice(
            &reqwest::blocking::get(format!("{}{path}", self.url)).unwrap().bytes().unwrap(),
        )
        .unwrap()
    }

    /// POSTs a body; the status, the Retry-After header, and the JSON answer.
    pub fn post(&self, body: &str) -> (u16, Option<String>, Value) {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/v1/generate", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        let status = r.status().as_u16();
        (status, retry, serde_json::from_slice(&r.bytes().unwrap()).unwrap())
    }

    /// The host and port it listens on.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// Any request: the status, the headers and the body.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut r = reqwest::blocking::Client::new().request(method, format!("{}{path}", self.url));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        let r = r.send().unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        (status, headers, r.text().unwrap())
    }

    /// Whether the process has exited within `within`; its status if so.
    pub fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Opens a streaming request and returns its events as they come: (event name, data).
    pub fn stream(&self, body: Value) -> impl Iterator<Item = (String, Value)> {
        let r = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .unwrap()
            .post(format!("{}/v1/generate", self.url))
            .header("accept", "text/event-stream")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut lines = BufReader::new(r).lines().map_while(Result::ok);
        std::iter::from_fn(move || {
            let mut name = String::new();
            for line in lines.by_ref() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    return Some((name.clone(), serde_json::from_str(d).unwrap()));
                }
            }
            None
        })
    }

    /// Every sample's text of a streamed request, and its `done` event.
    pub fn streamed(&self, body: Value) -> (Vec<String>, Value) {
        let mut texts = Vec::new();
        for (name, data) in self.stream(body) {
            match name.as_str() {
                "text" => {
                    let i = data["sample"].as_u64().unwrap() as usize;
                    texts.resize(texts.len().max(i + 1), String::new());
                    texts[i] += data["text"].as_str().unwrap();
                }
                "done" => return (texts, data),
                other => panic!("unexpected event {other}: {data}"),
            }
        }
        panic!("the stream ended without a done event");
    }

    pub fn active_streams(&self) -> u64 {
        self.get("/healthz")["active_streams"].as_u64().unwrap()
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let line = self
                .log
                .lock()
                .unwrap()
                .recv_timeout(until.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn samples(v: &Value) -> Vec<String> {
    v["samples"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// What `charrnn generate` prints for these options.
pub fn generated(ck: &Path, extra: &[&str]) -> String {
    let mut args = vec!["generate", "--checkpoint", ck.to_str().unwrap(), "--device", "cpu"];
    args.extend_from_slice(extra);
    let o = charrnn(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}
