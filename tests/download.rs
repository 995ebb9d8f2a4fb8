//! `download` against a real HTTP server on 127.0.0.1 started by each test.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use charrnn::checkpoint::hex;
use charrnn::download::{run, DownloadOptions, Outcome};
use sha2::{Digest, Sha256};

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
    DownloadOptions { url, output, sha256, force, timeout: Duration::from_secs(5) }
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
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
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
