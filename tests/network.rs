//! `charrnn serve` against hostile clients, through real sockets: slow and stalled ones, floods
//! of connections, a client that wants every slot, other web pages and rebinding host names,
//! clients without the key; its shutdown, reloads, and OpenAI's completions API.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

mod common;
use common::charrnn;
use common::server::{generated, samples, train, Server};

fn model(dir: &Path) -> PathBuf {
    train(dir, "ck", "1", "1")
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// What the server sends on `s` until it closes the connection, or None if it is still open
/// after `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<String> {
    let until = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return None
            }
            Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()), // reset: closed
        }
    }
}

fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.addr()).unwrap()
}

fn signal(server: &Server, name: &str) {
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success());
}

/// (Item 1.) Headers must arrive within --header-timeout of their first byte, a body within
/// --body-timeout, and an idle keep-alive connection is closed after --idle-timeout.
#[test]
fn slow_stalled_and_idle_connections_are_closed_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let ck = model(dir.path());
    let timeouts = ["--header-timeout", "1", "--body-timeout", "1", "--idle-timeout", "1"];
    let server = Server::start(&[&["--checkpoint", ck.to_str().unwrap()][..], &timeouts].concat());
    let host = format!("Host: {}\r\n", server.addr());

    let mut headers = connect(&server);
    headers.write_all(format!("GET /healthz HTTP/1.1\r\n{host}X-Slow: 1\r\n").as_bytes()).unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut headers, Duration::from_secs(4)).is_some(), "unfinished headers kept");
    assert!(started.elapsed() >= Duration::from_millis(700), "closed before its time");

    let mut body = connect(&server);
    let head = format!(
        "POST /v1/generate HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"sta"
    );
    body.write_all(head.as_bytes()).unwrap();
    let answer = closed_within(&mut body, Duration::from_secs(4)).expect("a stalled body is answered");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--body-timeout"), "{answer}");

    let mut idle = connect(&server);
    idle.write_all(format!("GET /healthz HTTP/1.1\r\n{host}\r\n").as_bytes()).unwrap();
    let answer = closed_within(&mut idle, Duration::from_secs(4)).expect("an idle keep-alive is closed");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"status\":\"ok\""), "{answer}");

    let mut silent = connect(&server);
    assert!(closed_within(&mut silent, Duration::from_secs(4)).is_some(), "a silent connection kept");
}

/// (Item 2.) Under a low open-file limit, and with the cap far below the flood, a fresh client is
/// still answered while a crowd of stalled connections is open.
#[test]
fn a_flood_of_stalled_connections_does_not_lock_out_a_fresh_client() {
    let dir = tempfile::tempdir().unwrap();
    let ck = model(dir.path());
    let ck_s = ck.to_str().unwrap();
    let limited = Server::start_after("ulimit -n 64", &["--checkpoint", ck_s]);
    let capped = Server::start(&["--checkpoint", ck_s, "--max-connections", "100"]);
    for (server, flood) in [(&limited, 70), (&capped, 300)] {
        let stalled: Vec<TcpStream> = (0..flood)
            .map(|_| {
                let mut s = connect(server);
                s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
                s
            })
            .collect();
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let r = client.get(format!("{}/healthz", server.url)).send().expect("a fresh client is answered");
        assert_eq!(r.status().as_u16(), 200);
        drop(stalled);
    }
}

/// (Item 3.) One client (by address, or by API key where keys are used) gets at most its share of
/// the sampler; over it, 429 with Retry-After; others are still served. A start over
/// --max-start-chars is refused.
#[test]
fn one_client_cannot_take_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let ck = model(dir.path());
    let ck_s = ck.to_str().unwrap();
    let args =
        ["--checkpoint", ck_s, "--max-streams", "6", "--max-streams-per-client", "2", "--max-samples", "2"];
    let long = ["--max-length", "100000000", "--max-start-chars", "10"];
    let server = Server::start(&[&args[..], &long].concat());
    let mut hog = server.stream(json!({"length": 50_000_000, "num_samples": 2, "start": "the "}));
    assert_eq!(hog.next().unwrap().0, "text");
    let (status, headers, body) =
        server.request(Method::POST, "/v1/generate", &[JSON], Some(r#"{"length": 5, "start": "the "}"#));
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert!(body.contains("--max-streams-per-client"), "{body}");
    // Another address is its own client.
    let other = reqwest::blocking::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = other
        .post(format!("{}/v1/generate", server.url))
        .header(JSON.0, JSON.1)
        .body(r#"{"length": 5, "start": "the "}"#)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap());
    let (status, _, body) =
        server.request(Method::POST, "/v1/generate", &[JSON], Some(r#"{"start": "the the the"}"#));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"start\"") && body.contains("at most 10"), "{body}");
    drop(hog);

    // With keys, a client is its key.
    let keyed = Server::start(
        &[&args[..], &long, &["--api-key", "key-one-1234", "--api-key", "key-two-1234"]].concat(),
    );
    let ask = |key: &str, body: Value| {
        let auth = format!("Bearer {key}");
        keyed.request(
            Method::POST,
            "/v1/generate",
            &[JSON, ("authorization", &auth)],
            Some(&body.to_string()),
        )
    };
    let client = reqwest::blocking::Client::builder().timeout(None).build().unwrap();
    let hog = client
        .post(format!("{}/v1/generate", keyed.url))
        .header(JSON.0, JSON.1)
        .header("authorization", "Bearer key-one-1234")
        .body(json!({"length": 50_000_000, "num_samples": 2, "start": "the ", "stream": true}).to_string())
        .send()
        .unwrap();
    assert_eq!(hog.status().as_u16(), 200);
    let until = Instant::now() + Duration::from_secs(10);
    while keyed.active_streams() < 2 {
        assert!(Instant::now() < until, "the first key's stream never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ask("key-one-1234", json!({"length": 5, "start": "the "})).0, 429);
    assert_eq!(ask("key-two-1234", json!({"length": 5, "start": "the "})).0, 200);
}

/// (Item 4.) A stop does not wait for clients: with a request stalled in its body, SIGTERM still
/// ends the server within --shutdown-timeout; and a second signal ends it at once.
#[test]
fn a_stalled_client_does_not_hold_up_a_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let ck = model(dir.path());
    let ck_s = ck.to_str().unwrap();
    let stall = |server: &Server| {
        let mut s = connect(server);
        let head = format!(
            "POST /v1/generate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
            server.addr()
        );
        s.write_all(head.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300)); // the request is being read
        s
    };
    let mut server =
        Server::start(&["--checkpoint", ck_s, "--body-timeout", "600", "--shutdown-timeout", "1"]);
    let _stalled = stall(&server);
    signal(&server, "TERM");
    let status = server.exited_within(Duration::from_secs(6)).expect("the server waited for its client");
    assert!(status.success(), "{status:?}");

    let mut server =
        Server::start(&["--checkpoint", ck_s, "--body-timeout", "600", "--shutdown-timeout", "600"]);
    let _stalled = stall(&server);
    signal(&server, "TERM");
    server.wait_for_log("shutting down");
    signal(&server, "INT");
    assert!(server.exited_within(Duration::from_secs(3)).is_some(), "a second signal did not end it");
}

/// (Item 5.) Only the server's own page, or an --allow-origin one, may drive it from a browser; a POST
/// must be JSON; a name the server was not given (DNS rebinding) is refused; CORS headers only
/// for allowed origins.
#[test]
fn other_pages_and_rebinding_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ck = model(dir.path());
    let server =
        Server::start(&["--checkpoint", ck.to_str().unwrap(), "--allow-origin", "http://app.example"]);
    let body = Some(r#"{"length": 5, "start": "the "}"#);
    let post = |headers: &[(&str, &str)]| server.request(Method::POST, "/v1/generate", headers, body);
    let evil = ("origin", "http://evil.example");
    for (headers, want) in [
        (vec![("content-type", "text/plain"), evil], 403),
        (vec![("content-type", "application/x-www-form-urlencoded"), evil], 403),
        (vec![JSON, evil], 403),
        (vec![("content-type", "text/plain")], 415),
        (vec![("content-type", "application/x-www-form-urlencoded")], 415),
        (vec![], 415),
    ] {
        let (status, h, text) = post(&headers);
        assert_eq!(status, want, "{headers:?}: {text}");
        assert!(h.get("access-control-allow-origin").is_none(), "{headers:?}");
    }
    let own = format!("http://{}", server.addr());
    assert_eq!(post(&[JSON, ("origin", &own)]).0, 200, "the server's own page");
    let (status, h, _) = post(&[JSON, ("origin", "http://app.example")]);
    assert_eq!((status, h["access-control-allow-origin"].to_str().unwrap()), (200, "http://app.example"));
    let (status, h, _) = server.request(
        Method::OPTIONS,
        "/v1/generate",
        &[("origin", "http://app.example"), ("access-control-request-method", "POST")],
        None,
    );
    assert_eq!(status, 204);
    assert!(h["access-control-allow-headers"].to_str().unwrap().contains("content-type"));
    // The host name a request was addressed by.
    let port = server.addr().rsplit(':').next().unwrap().to_string();
    let (status, _, text) = server.request(Method::GET, "/v1/model", &[("host", "attacker.example")], None);
    assert_eq!(status, 421, "{text}");
    assert!(text.contains("--allowed-host"), "{text}");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        assert_eq!(server.request(Method::GET, "/v1/model", &[("host", &host)], None).0, 200, "{host}");
    }
    let named = Server::start(&["--checkpoint", ck.to_str().unwrap(), "--allowed-host", "box.lan"]);
    assert_eq!(named.request(Method::GET, "/v1/model", &[("host", "box.lan")], None).0, 200);
}

/// (Item 6.) With an API key, every route but /healthz needs it as a bearer token; an address other
/// machines can reach needs a key unless --no-auth says otherwise.
#[test]
fn the_api_key_guards_every_route_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let ck = model(dir.path());
    let ck_s = ck.to_str().unwrap();
    let key_file = dir.path().join("keys");
    std::fs::write(&key_file, "# the team's key\nfile-key-5678\n").unwrap();
    let by_flag = Server::start(&["--checkpoint", ck_s, "--api-key", "flag-key-1234"]);
    let by_file = Server::start(&["--checkpoint", ck_s, "--api-key-file", key_file.to_str().unwrap()]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_charrnn"));
    command.args(["serve", "--port", "0", "--checkpoint", ck_s]).env("CHARRNN_API_KEY", "env-key-9012");
    let by_env = Server::start_command(command);
    for (server, key) in [(&by_flag, "flag-key-1234"), (&by_file, "file-key-5678"), (&by_env, "env-key-9012")]
    {
        assert_eq!(server.request(Method::GET, "/healthz", &[], None).0, 200);
        for path in ["/", "/v1/model", "/v1/models"] {
            let (status, h, text) = server.request(Method::GET, path, &[], None);
            assert_eq!(status, 401, "{path}: {text}");
            assert_eq!(h["www-authenticate"], "Bearer");
            assert_eq!(
                server.request(Method::GET, path, &[("authorization", "Bearer nope-nope")], None).0,
                401
            );
            let auth = format!("Bearer {key}");
            assert_eq!(server.request(Method::GET, path, &[("authorization", &auth)], None).0, 200, "{path}");
        }
        let auth = format!("Bearer {key}");
        let body = Some(r#"{"length": 5, "start": "the "}"#);
        assert_eq!(
            server.request(Method::POST, "/v1/generate", &[JSON, ("authorization", &auth)], body).0,
            200
        );
        assert_eq!(server.request(Method::POST, "/v1/generate", &[JSON], body).0, 401);
    }
    let open = charrnn(&["serve", "--checkpoint", ck_s, "--host", "0.0.0.0", "--port", "0"]);
    let err = String::from_utf8_lossy(&open.stderr);
    assert!(!open.status.success() && err.contains("--api-key") && err.contains("--no-auth"), "{err}");
    assert!(!err.contains("listening"), "it bound before refusing: {err}");
    let weak = charrnn(&["serve", "--checkpoint", ck_s, "--api-key", "short"]);
    assert!(String::from_utf8_lossy(&weak.stderr).contains("too easy to guess"));
    let server = Server::start(&["--checkpoint", ck_s, "--host", "0.0.0.0", "--no-auth"]);
    assert!(server.url.contains("0.0.0.0"), "{}", server.url);
}

/// (Item 7.) /healthz names the checkpoint's file, not where it lies; /v1/model is the same bytes
/// every time, what `info --json` shows.
#[test]
fn health_shows_the_file_name_and_the_model_is_served_as_made() {
    let dir = tempfile::tempdir().unwrap();
    let ck = model(dir.path());
    let server = Server::start(&["--checkpoint", ck.to_str().unwrap()]);
    let health = server.get("/healthz");
    assert_eq!(health["checkpoint"], "ckpt_1.safetensors", "{health}");
    let (a, b) = (
        server.request(Method::GET, "/v1/model", &[], None),
        server.request(Method::GET, "/v1/model", &[], None),
    );
    assert_eq!(a.2, b.2);
    assert_eq!(a.1["content-type"], "application/json");
    let info = charrnn(&["info", ck.join("ckpt_1.safetensors").to_str().unwrap(), "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&a.2).unwrap(),
        serde_json::from_slice::<Value>(&info.stdout).unwrap()
    );
}

/// (Item 9.) After a reload the new model answers new requests at once, while a long request keeps
/// its old model; a body cut short is a 400.
#[test]
fn a_reload_does_not_hold_up_new_requests_and_a_short_body_is_a_bad_request() {
    let dir = tempfile::tempdir().unwrap();
    let ck = model(dir.path());
    let other = train(dir.path(), "other", "2", "9");
    let server =
        Server::start(&["--checkpoint", ck.to_str().unwrap(), "--reload", "--max-length", "100000000"]);
    let mut long = server.stream(json!({"length": 50_000_000, "start": "the "}));
    assert_eq!(long.next().unwrap().0, "text");
    std::fs::copy(other.join("ckpt_2.safetensors"), ck.join("ckpt_2.safetensors")).unwrap();
    server.wait_for_log("now serving");
    let started = Instant::now();
    let (status, _, v) = server.post(r#"{"start": "the ", "length": 20, "seed": 1}"#);
    assert_eq!(status, 200, "{v}");
    assert!(started.elapsed() < Duration::from_secs(5), "the new request waited {:?}", started.elapsed());
    let want =
        generated(&other.join("ckpt_2.safetensors"), &["--start", "the ", "--length", "20", "--seed", "1"]);
    assert_eq!(format!("{}\n", samples(&v)[0]), want, "the new model answers");
    assert_eq!(long.next().unwrap().0, "text", "the long request goes on");
    drop(long);

    let mut s = connect(&server);
    let head = format!(
        "POST /v1/generate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"sta",
        server.addr()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let answer = closed_within(&mut s, Duration::from_secs(5)).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("ended before"), "{answer}");
}

/// (Item 10.) OpenAI's completions API: the text `generate` writes for the same prompt, seed and
/// options; streamed chunks join to it; `n`, `stop`, `echo`, `usage` and the error object.
#[test]
fn the_completions_api_answers_as_openai_defines_it() {
    let dir = tempfile::tempdir().unwrap();
    let ck = model(dir.path());
    let server = Server::start(&["--checkpoint", ck.to_str().unwrap(), "--api-key", "sk-test-1234"]);
    let auth = ("authorization", "Bearer sk-test-1234");
    let complete = |body: Value| {
        let (status, _, text) =
            server.request(Method::POST, "/v1/completions", &[JSON, auth], Some(&body.to_string()));
        (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null), text)
    };
    let want = generated(&ck, &["--start", "the ", "--length", "60", "--seed", "4", "--temperature", "0.8"]);
    let completion = want.strip_prefix("the ").unwrap().trim_end_matches('\n');
    let (status, v, text) =
        complete(json!({"model": "any", "prompt": "the ", "max_tokens": 60, "seed": 4, "temperature": 0.8}));
    assert_eq!(status, 200, "{text}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], completion);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens"], 60);
    let (_, echoed, _) =
        complete(json!({"prompt": "the ", "max_tokens": 60, "seed": 4, "temperature": 0.8, "echo": true}));
    assert_eq!(echoed["choices"][0]["text"], want.trim_end_matches('\n'));
    // n samples: `generate --num-samples`'s, in order.
    let (_, two, _) = complete(json!({"prompt": "the ", "max_tokens": 30, "seed": 2, "n": 2}));
    let want_two =
        generated(&ck, &["--start", "the ", "--length", "30", "--seed", "2", "--num-samples", "2"]);
    for (i, choice) in two["choices"].as_array().unwrap().iter().enumerate() {
        let text = format!("the {}", choice["text"].as_str().unwrap());
        assert!(
            want_two.contains(&format!("--- sample {} of 2 ---\n{text}\n", i + 1)),
            "{want_two} / {text}"
        );
        assert_eq!(choice["index"], i);
    }
    // A stop string ends the text before it, as `generate --stop` does.
    let (_, stopped, _) =
        complete(json!({"prompt": "the ", "max_tokens": 300, "seed": 4, "stop": ["e", "o"]}));
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    let want_stop =
        generated(&ck, &["--start", "the ", "--length", "300", "--seed", "4", "--stop", "e", "--stop", "o"]);
    assert_eq!(format!("the {}\n", stopped["choices"][0]["text"].as_str().unwrap()), want_stop);
    // Streamed: data chunks, one finish reason, then [DONE]; the pieces join to the text.
    let body = json!({"prompt": "the ", "max_tokens": 60, "seed": 4, "temperature": 0.8, "stream": true});
    let (status, h, text) =
        server.request(Method::POST, "/v1/completions", &[JSON, auth], Some(&body.to_string()));
    assert_eq!((status, h["content-type"].to_str().unwrap()), (200, "text/event-stream"));
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let joined: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(joined, completion);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
    // The models, and errors as OpenAI's error object.
    let (_, _, models) = server.request(Method::GET, "/v1/models", &[auth], None);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(
        (models["object"].as_str(), models["data"][0]["id"].as_str()),
        (Some("list"), Some("ckpt_1.safetensors"))
    );
    let (status, v, _) = complete(json!({"prompt": "the ", "max_tokens": 0}));
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("max_tokens")), "{v}");
    let (status, v, _) = complete(json!({"prompt": "the ", "logprobs": 3}));
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("logprobs")), "{v}");
    let (status, _, text) = server.request(Method::POST, "/v1/completions", &[JSON], Some("{}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{v}");
}
