//! Who may talk to the server, checked on every request before it reaches a route: the `Host`
//! it was addressed by (a DNS-rebinding page addresses it by the attacker's name), the `Origin`
//! of a page's script (only the server's own page, or `--allow-origin`'s, with CORS headers for
//! those), the API key, and the content type of a POST (a form or `text/plain` is what another
//! page can send without asking).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State as Shared};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::api::error_for;
use super::State;

/// The server's rules for who may call it.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// SHA-256 of each API key: compared digest to digest, so a check takes the same time
    /// whatever the key and wherever a guess goes wrong.
    keys: Vec<[u8; 32]>,
    /// Origins (`scheme://host[:port]`, lowercase) whose scripts may call the API.
    origins: Vec<String>,
    /// Host names (lowercase) clients may address the server by, besides IP addresses and
    /// localhost.
    hosts: Vec<String>,
}

/// Who sent a request, for the fair share of the sampler: the key it used, else its address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    /// The API key (its index among the server's).
    Key(usize),
    /// The peer's address.
    Address(IpAddr),
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equality of two digests in time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    /// The rules from the keys, the allowed origins and the allowed host names.
    pub fn new(keys: &[String], origins: &[String], hosts: &[String]) -> Self {
        Access {
            keys: keys.iter().map(|k| digest(k)).collect(),
            origins: origins.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect(),
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether clients must send a key.
    pub fn needs_key(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The key among the server's that `headers` carry as a bearer token.
    fn key_of(&self, headers: &HeaderMap) -> Option<usize> {
        let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?;
        let given = digest(token.trim());
        // Every key is compared, so the time does not say which one matched.
        self.keys.iter().enumerate().fold(None, |found, (i, k)| if same(k, &given) { Some(i) } else { found })
    }

    /// Whether the server may answer to this `Host` (its port aside): an IP address, localhost,
    /// or a name given with `--allowed-host`.
    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.hosts.contains(&name)
    }
}

/// A `Host` header's name, without its port (and an IPv6 address without its brackets).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether `origin` is the server's own page as addressed by `host`.
fn same_origin(origin: &str, host: &str) -> bool {
    origin.strip_prefix("http://").is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

/// The checks, in order: the host, the origin, the key (all but /healthz), the content type of
/// a POST to /v1/; then CORS headers for an allowed other origin.
pub async fn check(Shared(state): Shared<Arc<State>>, request: Request, next: Next) -> Response {
    let access = &state.access;
    let path = request.uri().path().to_string();
    let headers = request.headers();
    let refuse = |status: StatusCode, kind: &str, message: String| error_for(&path, status, kind, &message);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !access.host_allowed(host) {
        let message = format!(
            "this server does not answer to the host name {:?}; address it by its IP address or localhost, or start it with --allowed-host {}",
            host,
            host_name(host)
        );
        return refuse(StatusCode::MISDIRECTED_REQUEST, "invalid_request_error", message);
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_ascii_lowercase);
    let other_origin = origin.filter(|o| !same_origin(o, host));
    if let Some(o) = &other_origin {
        if !access.origins.contains(o) {
            let message = format!(
                "requests from the page at {o} are refused; start the server with --allow-origin {o} to let its scripts call it"
            );
            return refuse(StatusCode::FORBIDDEN, "invalid_request_error", message);
        }
        if request.method() == Method::OPTIONS {
            return with_cors(StatusCode::NO_CONTENT.into_response(), o, true);
        }
    }
    if path != "/healthz" && access.needs_key() && access.key_of(headers).is_none() {
        let mut r = refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "give the server's API key as the header `Authorization: Bearer KEY`".into(),
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    if request.method() == Method::POST && path.starts_with("/v1/") && !is_json(headers) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "send the body as JSON, with the header `Content-Type: application/json`".into(),
        );
    }
    let response = next.run(request).await;
    match &other_origin {
        Some(o) => with_cors(response, o, false),
        None => response,
    }
}

/// Who sent a request that passed [`check`]: its key, else its address.
pub fn client(access: &Access, headers: &HeaderMap, peer: IpAddr) -> Client {
    match access.key_of(headers) {
        Some(k) => Client::Key(k),
        None => Client::Address(peer),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// CORS headers for an allowed origin (and a preflight's answer).
fn with_cors(mut response: Response, origin: &str, preflight: bool) -> Response {
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_origins_and_keys() {
        let a = Access::new(&["sekrit".into()], &["https://app.example/".into()], &["Box.LAN".into()]);
        for ok in ["127.0.0.1:8080", "[::1]:8080", "10.0.0.7", "localhost:8080", "box.lan:80"] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in ["attacker.example", "attacker.example:8080", "127.0.0.1.evil.example", ""] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(!same_origin("http://127.0.0.1:8081", "127.0.0.1:8080"));
        assert!(!same_origin("https://127.0.0.1:8080", "127.0.0.1:8080"));
        assert_eq!(a.origins, ["https://app.example"]);
        let mut h = HeaderMap::new();
        assert_eq!(a.key_of(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer sekrit"));
        assert_eq!(a.key_of(&h), Some(0));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer sekrit2"));
        assert_eq!(a.key_of(&h), None);
    }
}
