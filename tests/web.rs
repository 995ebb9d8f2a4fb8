//! `charrnn export --web`: the page samples in a real browser, from a static server on
//! 127.0.0.1, the text `CHARRNN_KERNEL=portable charrnn generate` prints; and the export folder
//! is handled as every output is.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::browser::Browser;
use common::server::{train, train_with};
use common::{charrnn, charrnn_command, stderr};

/// Whether this binary carries the browser's module (scripts/build-web.sh builds it; CI sets
/// CHARRNN_REQUIRE_WEB so that its absence fails there instead of skipping).
fn module_built(ck: &Path) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let o = charrnn(&[
        "export",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--web",
        dir.path().join("x").to_str().unwrap(),
    ]);
    if o.status.success() {
        return true;
    }
    assert!(stderr(&o).contains("scripts/build-web.sh"), "{}", stderr(&o));
    assert!(
        std::env::var_os("CHARRNN_REQUIRE_WEB").is_none(),
        "the browser's module is not built in: {}",
        stderr(&o)
    );
    println!("skipped: this charrnn was built without the browser's module (scripts/build-web.sh)");
    false
}

/// A static file server for one folder, as any host would be: GET a file, with its type.
struct StaticServer {
    url: String,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl StaticServer {
    fn start(root: PathBuf) -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return; // the listener closes with the thread
                }
                let Ok(mut stream) = stream else { continue };
                let root = root.clone();
                std::thread::spawn(move || {
                    let mut line = String::new();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).map_or(true, |n| n == 0) || header == "\r\n" {
                            break;
                        }
                    }
                    let path =
                        line.split_whitespace().nth(1).unwrap_or("/").split('?').next().unwrap().to_string();
                    let name = if path == "/" {
                        "index.html".to_string()
                    } else {
                        path.trim_start_matches('/').to_string()
                    };
                    let kind = match name.rsplit('.').next() {
                        Some("html") => "text/html; charset=utf-8",
                        Some("js") => "text/javascript",
                        Some("css") => "text/css",
                        Some("wasm") => "application/wasm",
                        _ => "application/octet-stream",
                    };
                    let response = match std::fs::read(root.join(&name)) {
                        Ok(body) if !name.contains("..") => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend(body);
                            r
                        }
                        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec(),
                    };
                    let _ = stream.write_all(&response);
                });
            }
        });
        StaticServer { url: format!("http://127.0.0.1:{port}/"), stop, port }
    }

    /// Stops serving: later requests are refused.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        std::thread::sleep(Duration::from_millis(100));
        assert!(std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err(), "the server still answers");
    }
}

/// What the portable kernel's `generate` prints for these options, without its final newline.
fn portable_generate(ck: &Path, options: &[&str]) -> String {
    let mut args = vec!["generate", "--checkpoint", ck.to_str().unwrap()];
    args.extend(options);
    let o = charrnn_command(&args).env("CHARRNN_KERNEL", "portable").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    text.strip_suffix('\n').unwrap().to_string()
}

fn script(browser: &Browser, source: &str) -> Value {
    browser.post("/execute/sync", json!({ "script": source, "args": [] }))
}

/// Fills the form (sliders by script, as a user's drag would), submits with a click, and returns
/// the text the page shows and its status once done.
fn generate(
    browser: &Browser,
    start: &str,
    length: &str,
    temperature: &str,
    top_p: &str,
    seed: &str,
) -> (String, String) {
    browser.type_into("#start", start);
    browser.type_into("#length", length);
    browser.type_into("#seed", seed);
    script(
        browser,
        &format!(
            "for (const [id, v] of [['temperature', '{temperature}'], ['top-p', '{top_p}']]) {{ \
               const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event('input')); }}"
        ),
    );
    browser.post(&format!("{}/click", browser.element("#generate")), json!({}));
    let status = browser.wait_for_text("#status", |t| t.starts_with("Done") || t.starts_with("Error"));
    let text = script(browser, "return document.getElementById('text').textContent");
    (text.as_str().unwrap().to_string(), status)
}

#[test]
fn the_exported_page_samples_in_the_browser_what_the_portable_kernel_prints() {
    let dir = tempfile::tempdir().unwrap();
    let ck = train(dir.path(), "ck", "2", "1");
    if !module_built(&ck) {
        return;
    }
    let Some(browser) = Browser::start() else { return };
    let site = dir.path().join("site");
    let o = charrnn(&["export", "--checkpoint", ck.to_str().unwrap(), "--web", site.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let server = StaticServer::start(site.clone());
    browser.post("/url", json!({ "url": server.url }));
    let summary = browser.wait_for_text("#summary", |t| t.contains("parameters"));
    assert!(summary.contains("sampled in this browser"), "{summary}");
    let unlabelled = script(
        &browser,
        "return [...document.querySelectorAll('input, textarea, button')].filter(e => e.tagName === 'BUTTON' ? !e.textContent.trim() : !document.querySelector(`label[for=\"${e.id}\"]`)).map(e => e.id)",
    );
    assert_eq!(unlabelled, json!([]));

    for (start, length, temperature, top_p, seed) in [
        ("the ", "300", "1", "1", "5"),
        ("dog", "400", "0.7", "0.9", "18446744073709551615"),
        ("fox ", "200", "0", "1", "3"),
    ] {
        let (shown, status) = generate(&browser, start, length, temperature, top_p, seed);
        assert!(status.starts_with("Done"), "{status}");
        let mut options =
            vec!["--start", start, "--length", length, "--temperature", temperature, "--seed", seed];
        if top_p != "1" {
            options.extend(["--top-p", top_p]);
        }
        assert_eq!(shown, portable_generate(&ck, &options), "{options:?}");
    }

    // The keyboard alone: Enter in the seed field submits; a character the model lacks is the
    // sampler's error.
    browser.type_into("#start", "THE");
    let seed = browser.element("#seed");
    browser.post(&format!("{seed}/value"), json!({ "text": "\u{E007}" }));
    let status = browser.wait_for_text("#status", |t| t.starts_with("Error"));
    assert!(status.contains("'E', 'H', 'T'"), "{status}");

    // Every cell, deeper models: a two-layer LSTM and a two-layer RNN, exported over the first.
    for cell in ["lstm", "rnn"] {
        let run = train_with(dir.path(), cell, "1", "2", &["--layers", "2", "--cell", cell]);
        let o = charrnn(&[
            "export",
            "--checkpoint",
            run.to_str().unwrap(),
            "--web",
            site.to_str().unwrap(),
            "--force",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        browser.post("/url", json!({ "url": server.url }));
        let summary = browser.wait_for_text("#summary", |t| t.contains("parameters"));
        assert!(summary.contains(cell) && summary.contains("2×16"), "{summary}");
        let (shown, status) = generate(&browser, "the ", "300", "0.9", "0.95", "21");
        assert!(status.starts_with("Done"), "{status}");
        let options =
            ["--start", "the ", "--length", "300", "--temperature", "0.9", "--top-p", "0.95", "--seed", "21"];
        assert_eq!(shown, portable_generate(&run, &options), "{cell}");
    }

    // With its server gone, the page goes on sampling: nothing it needs comes over the network.
    server.stop();
    let (shown, status) = generate(&browser, "the ", "2000", "1", "1", "11");
    assert!(status.starts_with("Done"), "{status}");
    let last = dir.path().join("rnn");
    assert_eq!(shown, portable_generate(&last, &["--start", "the ", "--length", "2000", "--seed", "11"]));
    println!("page: {status}");
}

#[test]
fn an_export_writes_only_where_it_may() {
    let dir = tempfile::tempdir().unwrap();
    let ck = train(dir.path(), "ck", "1", "1");
    let ck = ck.to_str().unwrap();
    // An ONNX file that exists is kept unless --force.
    let onnx = dir.path().join("model.onnx");
    std::fs::write(&onnx, "mine").unwrap();
    let o = charrnn(&["export", "--checkpoint", ck, "--onnx", onnx.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&onnx).unwrap(), "mine");
    let o = charrnn(&["export", "--checkpoint", ck, "--onnx", onnx.to_str().unwrap(), "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(&onnx).unwrap(), b"mine");
    // A damaged checkpoint is refused before anything is written.
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a checkpoint").unwrap();
    let fresh = dir.path().join("fresh.onnx");
    let o = charrnn(&["export", "--checkpoint", bad.to_str().unwrap(), "--onnx", fresh.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("invalid checkpoint"), "{}", stderr(&o));
    assert!(!fresh.exists());
    // No format: clap says which flags there are.
    let o = charrnn(&["export", "--checkpoint", ck]);
    assert!(!o.status.success() && stderr(&o).contains("--web"), "{}", stderr(&o));

    if !module_built(Path::new(ck)) {
        return;
    }
    // A folder that holds something else is not written into; a file is not a folder.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep").unwrap();
    let o = charrnn(&["export", "--checkpoint", ck, "--web", other.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("not empty"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    let o = charrnn(&["export", "--checkpoint", ck, "--web", other.join("notes.txt").to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("not a folder"), "{}", stderr(&o));
    // An earlier export is replaced only with --force, and what else is there stays.
    let site = dir.path().join("site");
    assert!(charrnn(&["export", "--checkpoint", ck, "--web", site.to_str().unwrap()]).status.success());
    let o = charrnn(&["export", "--checkpoint", ck, "--web", site.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("earlier export"), "{}", stderr(&o));
    std::fs::write(site.join("README"), "keep").unwrap();
    let o = charrnn(&["export", "--checkpoint", ck, "--web", site.to_str().unwrap(), "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(site.join("README")).unwrap(), "keep");
    for name in ["index.html", "style.css", "worker.js", "charrnn.wasm", "model.safetensors"] {
        assert!(site.join(name).is_file(), "{name}");
    }
    let o = charrnn(&["export", "--checkpoint", ck, "--web", other.to_str().unwrap(), "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(other.join("notes.txt")).unwrap(), "keep");
}

/// The page's characters per second for the checkpoint in CHARRNN_WEB_SPEED (a file or run
/// folder), beside the portable kernel's `generate` on the same machine: `cargo test --release
/// --test web -- --ignored --nocapture`. A measurement, not a check.
#[test]
#[ignore]
fn page_speed() {
    let Some(ck) = std::env::var_os("CHARRNN_WEB_SPEED").map(PathBuf::from) else {
        panic!("set CHARRNN_WEB_SPEED to a checkpoint");
    };
    let Some(browser) = Browser::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let o = charrnn(&["export", "--checkpoint", ck.to_str().unwrap(), "--web", site.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let server = StaticServer::start(site);
    browser.post("/url", json!({ "url": server.url }));
    browser.wait_for_text("#summary", |t| t.contains("parameters"));
    for _ in 0..2 {
        let (_, status) = generate(&browser, "ROMEO: ", "5000", "1", "1", "1");
        let started = std::time::Instant::now();
        let printed = portable_generate(&ck, &["--length", "5000", "--seed", "1"]);
        let seconds = started.elapsed().as_secs_f64();
        println!("page: {status}; portable generate: {:.0} characters/s (whole command)", 5000.0 / seconds);
        assert!(printed.starts_with("ROMEO: "));
    }
}
