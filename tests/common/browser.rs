//! A WebDriver session on headless Chromium, for the tests of the pages charrnn serves and
//! exports.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A WebDriver session on headless Chromium, spoken to directly over HTTP (the W3C protocol is
/// a handful of JSON calls; the HTTP client is one the project has already).
pub struct Browser {
    driver: Child,
    session: String,
    _profile: tempfile::TempDir,
}

/// The key under which WebDriver returns an element reference.
pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// None, with the reason printed, where Chromium or its driver is not installed.
    pub fn start() -> Option<Browser> {
        let (chromium, chromedriver) = ("/usr/bin/chromium", "/usr/bin/chromedriver");
        if !Path::new(chromium).exists() || !Path::new(chromedriver).exists() {
            let why =
                format!("{chromium} or {chromedriver} is missing (scripts/install-browser.sh installs them)");
            assert!(std::env::var_os("CHARRNN_REQUIRE_BROWSER").is_none(), "{why}");
            println!("skipped: {why}");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args}}}});
        let base = format!("http://127.0.0.1:{port}");
        let until = Instant::now() + Duration::from_secs(30);
        let session = loop {
            let r = reqwest::blocking::Client::new()
                .post(format!("{base}/session"))
                .body(caps.to_string())
                .send();
            if let Ok(r) = r {
                let v: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
                match v["value"]["sessionId"].as_str() {
                    Some(id) => break format!("{base}/session/{id}"),
                    None => panic!("chromedriver refused a session: {v}"),
                }
            }
            assert!(Instant::now() < until, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        };
        Some(Browser { driver, session, _profile: profile })
    }

    pub fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut r = reqwest::blocking::Client::new().request(method, format!("{}{path}", self.session));
        if !body.is_null() {
            r = r.body(body.to_string());
        }
        let r = r.send().unwrap();
        let v: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
        assert!(v["value"].get("error").is_none(), "{path}: {v}");
        v["value"].clone()
    }

    pub fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, body)
    }

    pub fn element(&self, css: &str) -> String {
        let v = self.post("/element", json!({"using": "css selector", "value": css}));
        format!("/element/{}", v[ELEMENT].as_str().unwrap_or_else(|| panic!("{css}: {v}")))
    }

    pub fn text(&self, css: &str) -> String {
        let e = self.element(css);
        self.call(reqwest::Method::GET, &format!("{e}/text"), Value::Null).as_str().unwrap().to_string()
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.post(&format!("{e}/clear"), json!({}));
        self.post(&format!("{e}/value"), json!({ "text": text }));
    }

    /// Waits until `ok` holds for the text of `css`; returns that text.
    pub fn wait_for_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let t = self.text(css);
            if ok(&t) {
                return t;
            }
            assert!(Instant::now() < until, "{css} never satisfied the test; it shows {t:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = reqwest::blocking::Client::new().delete(&self.session).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
