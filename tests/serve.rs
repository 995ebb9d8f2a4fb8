//! `charrnn serve` through a real HTTP client against the real binary on an ephemeral port.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::browser::Browser;
use common::charrnn;
use common::server::{generated, samples, train, Server};

#[test]
fn endpoints_answer_and_text_matches_generate_alone_and_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let ck = train(dir.path(), "ck", "1", "1");
    let server = Server::start(&["--checkpoint", ck.to_str().unwrap()]);

    let health = server.get("/healthz");
    assert_eq!((health["status"].as_str(), health["active_streams"].as_u64()), (Some("ok"), Some(0)));
    let info = charrnn(&["info", ck.join("ckpt_1.safetensors").to_str().unwrap(), "--json"]);
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(server.get("/v1/model"), info, "/v1/model is what `info --json` shows");
    let page = reqwest::blocking::get(&server.url).unwrap().text().unwrap();
    assert!(page.contains("<button id=\"generate\"") && page.contains("/v1/generate"), "the page");

    // One sample: what `generate` prints, less its final newline.
    let (status, _, v) = server.post(r#"{"start": "the ", "length": 120, "seed": 3, "temperature": 0.9}"#);
    assert_eq!(status, 200, "{v}");
    let want = generated(&ck, &["--start", "the ", "--length", "120", "--seed", "3", "--temperature", "0.9"]);
    assert_eq!(format!("{}\n", samples(&v)[0]), want);
    assert!(v["chars_per_s"].as_f64().unwrap() > 0.0);

    // Several samples with stop strings and top-p: the same as the command's, one by one.
    let body = json!({"start": "the ", "length": 150, "seed": 4, "num_samples": 3, "stop": ["fox", "\n"], "top_p": 0.9});
    let (status, _, v) = server.post(&body.to_string());
    assert_eq!(status, 200, "{v}");
    let want = generated(
        &ck,
        &[
            "--start",
            "the ",
            "--length",
            "150",
            "--seed",
            "4",
            "--num-samples",
            "3",
            "--stop",
            "fox",
            "--stop",
            "\n",
            "--top-p",
            "0.9",
        ],
    );
    let got: String = samples(&v)
        .iter()
        .enumerate()
        .map(|(i, s)| format!("--- sample {} of 3 ---\n{s}\n", i + 1))
        .collect();
    assert_eq!(got, want);
    assert!(samples(&v).iter().all(|s| !s[4..].contains("fox") && !s.contains('\n')), "{v}");

    // Streaming gives the same text as the whole answer, start first.
    let (texts, done) =
        server.streamed(json!({"start": "the ", "length": 120, "seed": 3, "temperature": 0.9}));
    assert_eq!(format!("{}\n", texts[0]), want_one(&ck));
    assert_eq!(samples(&done), texts);

    // Eight clients at once: each one's text is what it gets alone.
    let alone: Vec<Vec<String>> = (0..8)
        .map(|s| {
            samples(&server.post(&json!({"length": 300, "seed": 10 + s, "start": "the "}).to_string()).2)
        })
        .collect();
    let together: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|s| {
                let server = &server;
                scope
                    .spawn(move || server.streamed(json!({"length": 300, "seed": 10 + s, "start": "the "})).0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    assert_eq!(server.active_streams(), 0, "every stream has ended");
}

fn want_one(ck: &Path) -> String {
    generated(ck, &["--start", "the ", "--length", "120", "--seed", "3", "--temperature", "0.9"])
}

#[test]
fn bad_requests_and_limits_get_clear_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ck = train(dir.path(), "ck", "1", "1");
    let server = Server::start(&[
        "--checkpoint",
        ck.to_str().unwrap(),
        "--max-streams",
        "2",
        "--max-samples",
        "2",
        "--max-length",
        "100000000",
        "--max-body-bytes",
        "1000",
        "--time-limit",
        "1",
    ]);
    let cases = [
        (r#"{"temperature": "hot"}"#, "temperature"),
        (r#"{"temperature": -1}"#, "temperature"),
        (r#"{"top_p": 0}"#, "top_p"),
        (r#"{"top_k": 0}"#, "top_k"),
        (r#"{"length": 0}"#, "length"),
        (r#"{"num_samples": 3}"#, "num_samples"),
        (r#"{"seed": -4}"#, "seed"),
        (r#"{"stop": [""]}"#, "stop"),
        (r#"{"stop": "x"}"#, "stop"),
        (r#"{"colour": "red"}"#, "colour"),
        (r#"{"start": "ROMEO: ZZ"}"#, "start"),
    ];
    for (body, field) in cases {
        let (status, _, v) = server.post(body);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["field"].as_str(), Some(field), "{body}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(field), "{body}: {v}");
    }
    let (_, _, v) = server.post(r#"{"start": "ROMEO: ZZ"}"#);
    assert!(
        v["error"].as_str().unwrap().contains("'E', 'M', 'O', 'R', 'Z'"),
        "unknown characters listed: {v}"
    );
    for body in ["{", "[1, 2]", "null", "\u{0}"] {
        let (status, _, v) = server.post(body);
        assert_eq!(status, 400, "{body:?}: {v}");
        assert!(v["error"].as_str().unwrap().contains("not a valid request"), "{v}");
    }
    let (status, _, v) = server.post(&format!(r#"{{"start": "{}"}}"#, "t".repeat(2000)));
    assert_eq!(status, 413, "{v}");

    // Two samples fill the server: a third is told to come back.
    let mut busy = server.stream(json!({"length": 50_000_000, "num_samples": 2, "start": "the "}));
    assert_eq!(busy.next().unwrap().0, "text");
    let (status, retry, v) = server.post(r#"{"length": 5, "start": "the "}"#);
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{v}");
    // The long request runs past the one-second limit and is ended with an error event.
    let last = busy.find(|(name, _)| name != "text").unwrap();
    assert_eq!(last.0, "error");
    assert!(last.1["error"].as_str().unwrap().contains("time limit"), "{}", last.1);
    let (status, _, v) = server.post(r#"{"length": 5, "start": "the "}"#);
    assert_eq!(status, 200, "served again once the slots are free: {v}");
}

#[test]
fn a_client_that_disconnects_stops_its_generation() {
    let dir = tempfile::tempdir().unwrap();
    let ck = train(dir.path(), "ck", "1", "1");
    let server = Server::start(&["--checkpoint", ck.to_str().unwrap(), "--max-length", "100000000"]);
    let mut events = server.stream(json!({"length": 50_000_000, "num_samples": 3, "start": "the "}));
    assert_eq!(events.next().unwrap().0, "text");
    assert_eq!(server.active_streams(), 3);
    drop(events);
    let until = Instant::now() + Duration::from_secs(5);
    while server.active_streams() != 0 {
        assert!(Instant::now() < until, "the stream is still generating after its client left");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reload_switches_to_a_newer_checkpoint_and_refuses_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let ck = train(dir.path(), "ck", "1", "1");
    let other = train(dir.path(), "other", "2", "9");
    let server = Server::start(&["--checkpoint", ck.to_str().unwrap(), "--reload"]);
    let before = samples(&server.post(r#"{"start": "the ", "length": 100, "seed": 1}"#).2);

    std::fs::copy(other.join("ckpt_2.safetensors"), ck.join("ckpt_2.safetensors")).unwrap();
    server.wait_for_log("now serving");
    assert!(server.get("/healthz")["checkpoint"].as_str().unwrap().ends_with("ckpt_2.safetensors"));
    let after = samples(&server.post(r#"{"start": "the ", "length": 100, "seed": 1}"#).2);
    assert_ne!(after, before, "the new weights answer");
    let want =
        generated(&other.join("ckpt_2.safetensors"), &["--start", "the ", "--length", "100", "--seed", "1"]);
    assert_eq!(format!("{}\n", after[0]), want);

    std::fs::write(ck.join("ckpt_3.safetensors"), b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage").unwrap();
    let refused = server.wait_for_log("refusing");
    assert!(refused.contains("ckpt_3.safetensors") && refused.contains("still serving"), "{refused}");
    assert!(server.get("/healthz")["checkpoint"].as_str().unwrap().ends_with("ckpt_2.safetensors"));
    assert_eq!(samples(&server.post(r#"{"start": "the ", "length": 100, "seed": 1}"#).2), after);
}

#[test]
fn sigterm_ends_running_streams_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let ck = train(dir.path(), "ck", "1", "1");
    let mut server = Server::start(&["--checkpoint", ck.to_str().unwrap(), "--max-length", "100000000"]);
    let mut events = server.stream(json!({"length": 50_000_000, "start": "the "}));
    assert_eq!(events.next().unwrap().0, "text");
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let last = events.find(|(name, _)| name != "text").expect("an event that ends the stream");
    assert_eq!(last.0, "error");
    assert!(last.1["error"].as_str().unwrap().contains("shutting down"), "{}", last.1);
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_server_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = charrnn(&["serve", "--checkpoint", dir.path().to_str().unwrap(), "--port", "0"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no checkpoint"));
    let o = charrnn(&[
        "serve",
        "--max-samples",
        "9",
        "--max-streams",
        "4",
        "--checkpoint",
        dir.path().to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-samples 9 is more than --max-streams 4"));
    let o = charrnn(&["serve", "--device", "cuda"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--device cpu"));
}

#[test]
fn the_page_streams_text_in_a_real_browser() {
    let Some(browser) = Browser::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ck = train(dir.path(), "ck", "1", "1");
    let server = Server::start(&["--checkpoint", ck.to_str().unwrap()]);
    browser.post("/url", json!({ "url": server.url }));
    let summary = browser.wait_for_text("#summary", |t| t.contains("parameters"));
    assert!(summary.contains("ckpt_1.safetensors"), "{summary}");
    // Every control has a label.
    let unlabelled = browser.post(
        "/execute/sync",
        json!({"script": "return [...document.querySelectorAll('input, textarea')].filter(e => !document.querySelector(`label[for=\"${e.id}\"]`)).map(e => e.id)", "args": []}),
    );
    assert_eq!(unlabelled, json!([]));

    // Type a start, click Generate: the text streams in, start first, and is what the API gives.
    browser.type_into("#start", "the ");
    browser.type_into("#seed", "5");
    browser.type_into("#length", "200");
    browser.post(&format!("{}/click", browser.element("#generate")), json!({}));
    browser.wait_for_text("#status", |t| t.starts_with("Done"));
    let shown = browser.text("#text");
    let want = samples(&server.post(r#"{"start": "the ", "length": 200, "seed": 5}"#).2)[0].clone();
    // WebDriver reports rendered text, with each line's trailing spaces trimmed.
    let trimmed = |s: &str| s.lines().map(str::trim_end).collect::<Vec<_>>().join("\n");
    assert_eq!(trimmed(&shown), trimmed(&want));
    assert!(shown.starts_with("the"), "{shown:?}");

    // The keyboard alone: Enter in a field submits; an unknown character shows the server's error.
    browser.type_into("#start", "THE");
    let seed = browser.element("#seed");
    browser.post(&format!("{seed}/value"), json!({ "text": "\u{E007}" }));
    let status = browser.wait_for_text("#status", |t| t.starts_with("Error"));
    assert!(status.contains("'E', 'H', 'T'"), "{status}");
}
