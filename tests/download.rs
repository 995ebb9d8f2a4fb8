//! `download` against a real HTTP server on 127.0.0.1 started by each test.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use charrnn::download::{run, DownloadOptions, Outcome};
use charrnn_core::checkpoint::hex;
use sha2::{Digest, Sha256};

mod common;

/// Serves each of `responses` to one connection, in order, then stops.
fn serve(responses: Vec<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for response in responses {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = stream.write_all(&response);
        }
    });
    format!("http://{addr}/shakespeare.txt")
}

fn ok(body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
        .into_bytes();
    r.extend_from_slice(body);
    r
}

fn sha(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn opts(url: String, output: PathBuf, sha256: Option<String>, force: bool) -> DownloadOptions {
    DownloadOptions {
        url,
        output,
        sha256,
        force,
        timeout: Duration::from_secs(5),
        max_bytes: 1 << 20,
        follow_redirects: false,
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

const BODY: &[u8] = b"First Citizen:\nBefore we proceed any further, hear me speak.\n";

#[test]
fn downloads_verifies_and_then_finds_it_present() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data/corpus.txt");
    let url = serve(vec![ok(BODY)]);
    let got = run(&opts(url.clone(), out.clone(), Some(sha(BODY)), false)).unwrap();
    assert_eq!(got, Outcome::Downloaded { bytes: BODY.len() as u64, sha256: sha(BODY) });
    assert_eq!(std::fs::read(&out).unwrap(), BODY);
    // Present with the right checksum: no request is made (the server is gone by now).
    assert_eq!(run(&opts(url, out.clone(), Some(sha(BODY)), false)).unwrap(), Outcome::AlreadyPresent);
    assert_eq!(listing(&dir.path().join("data")), vec!["corpus.txt"]);
}

#[test]
fn http_errors_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("corpus.txt");
    let url = serve(vec![b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_vec()]);
    let err = run(&opts(url, out.clone(), None, false)).unwrap_err().to_string();
    assert!(err.contains("404"), "{err}");
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn a_truncated_body_is_refused_and_the_old_file_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("corpus.txt");
    std::fs::write(&out, b"old").unwrap();
    let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", BODY.len() + 100).into_bytes();
    resp.extend_from_slice(BODY);
    let url = serve(vec![resp]);
    let err = run(&opts(url, out.clone(), None, true)).unwrap_err().to_string();
    assert!(err.contains("broke off") || err.contains("truncated"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    assert_eq!(listing(dir.path()), vec!["corpus.txt"]);
}

#[test]
fn a_checksum_mismatch_keeps_the_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("corpus.txt");
    std::fs::write(&out, b"old").unwrap();
    let url = serve(vec![ok(b"tampered")]);
    let err = run(&opts(url, out.clone(), Some(sha(BODY)), true)).unwrap_err().to_string();
    assert!(err.contains("SHA-256") && err.contains(&sha(b"tampered")), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    assert_eq!(listing(dir.path()), vec!["corpus.txt"]);
}

#[test]
fn an_existing_different_file_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("corpus.txt");
    std::fs::write(&out, b"mine").unwrap();
    let url = serve(vec![ok(BODY)]);
    let err = run(&opts(url.clone(), out.clone(), Some(sha(BODY)), false)).unwrap_err().to_string();
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"mine");
    run(&opts(url, out.clone(), Some(sha(BODY)), true)).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), BODY);
}

#[test]
fn refused_and_silent_servers_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("corpus.txt");
    // Port 1 (tcpmux) has no listener on any machine this runs on. A port freed by dropping a
    // listener would do too, but the system may hand it straight to another test's server.
    let port = 1;
    let err = format!(
        "{:#}",
        run(&opts(format!("http://127.0.0.1:{port}/x"), out.clone(), None, false)).unwrap_err()
    );
    assert!(err.contains("failed") && err.to_lowercase().contains("refused"), "{err}");

    // A server that accepts and never answers: the timeout ends it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x", silent.local_addr().unwrap());
    let mut o = opts(url, out, None, false);
    o.timeout = Duration::from_millis(500);
    let err = format!("{:#}", run(&o).unwrap_err());
    assert!(err.contains("timed out") || err.contains("timeout"), "{err}");
    assert!(listing(dir.path()).is_empty());
    drop(silent);
}

#[test]
fn a_malformed_sha256_is_rejected_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let err = run(&opts("http://127.0.0.1:9/x".into(), dir.path().join("c"), Some("abc".into()), false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("64 hexadecimal digits"), "{err}");
}

fn answer(head: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    r
}

/// Without a known checksum, every kind of non-corpus answer is refused with --force, and the
/// good file it would have replaced is kept byte for byte.
#[test]
fn garbage_answers_never_replace_a_good_file() {
    let gzip = [0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x4b, 0x4c, 0x4a, 0x06, 0x00];
    let binary: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("204", answer("HTTP/1.1 204 No Content", b""), "204"),
        ("redirect", answer("HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd", b""), "302"),
        ("empty 200", answer("HTTP/1.1 200 OK", b""), "empty"),
        ("500", answer("HTTP/1.1 500 Internal Server Error", b"oops"), "500"),
        (
            "html content type",
            answer("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8", b"<p>hello</p>"),
            "HTML",
        ),
        (
            "html body",
            answer("HTTP/1.1 200 OK", b"\n  <!DOCTYPE html><html><body>login</body></html>"),
            "HTML",
        ),
        ("binary", answer("HTTP/1.1 200 OK", &binary), "not UTF-8"),
        ("gzip", answer("HTTP/1.1 200 OK\r\nContent-Encoding: gzip", &gzip), "not UTF-8"),
        (
            "cut inside a character",
            answer("HTTP/1.1 200 OK", "caf\u{e9}".as_bytes().split_last().unwrap().1),
            "inside a UTF-8",
        ),
    ];
    for (name, response, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("corpus.txt");
        std::fs::write(&out, BODY).unwrap();
        let url = serve(vec![response]);
        let err = format!("{:#}", run(&opts(url, out.clone(), None, true)).unwrap_err());
        assert!(err.contains(needle), "{name}: {err}");
        assert_eq!(std::fs::read(&out).unwrap(), BODY, "{name}: the good file was touched");
        assert_eq!(listing(dir.path()), vec!["corpus.txt"], "{name}: something was left behind");
    }
}

#[test]
fn an_invalid_byte_is_reported_at_its_offset_across_chunks() {
    let dir = tempfile::tempdir().unwrap();
    // A valid two-byte character split by the 64 KiB read boundary is fine; the bad byte
    // comes later, at a known offset.
    let mut body = vec![b'a'; 65535];
    body.extend_from_slice("\u{e9}".as_bytes());
    body.extend_from_slice(b"bcd");
    let bad = body.len();
    body.push(0xff);
    body.extend_from_slice(b"tail");
    let url = serve(vec![answer("HTTP/1.1 200 OK", &body)]);
    let err = format!("{:#}", run(&opts(url, dir.path().join("c.txt"), None, false)).unwrap_err());
    assert!(err.contains(&format!("byte {bad} is invalid")), "{err}");
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn the_size_limit_and_the_deadline_bound_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.txt");
    // An announced length over the limit is refused before reading.
    let url = serve(vec![answer("HTTP/1.1 200 OK", &vec![b'x'; 2048])]);
    let mut o = opts(url, out.clone(), None, false);
    o.max_bytes = 1024;
    let err = format!("{:#}", run(&o).unwrap_err());
    assert!(err.contains("--max-bytes 1024"), "{err}");

    // An endless body (no length, a line every few milliseconds, for at most 10 s): the
    // deadline ends it, however steadily it trickles.
    let url = common::trickling_server(&[b'y'; 512], Duration::from_millis(5), Duration::from_secs(10));
    let mut o = opts(url, out, None, false);
    o.timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let err = format!("{:#}", run(&o).unwrap_err());
    assert!(err.contains("longer than --timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "the deadline did not stop it");
    assert!(listing(dir.path()).is_empty());
}
