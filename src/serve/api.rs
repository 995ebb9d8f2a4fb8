//! The HTTP API: routes, request checking, and the relay of the sampler's events as one JSON
//! answer or as server-sent events. `/v1/completions` and `/v1/models` speak OpenAI's
//! completions API (`openai.rs`); every route sits behind the access checks (`access.rs`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State as Shared};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use charrnn_core::checks;
use charrnn_core::sample::job::{self, SampleOptions};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tower_http::catch_panic::CatchPanicLayer;

use super::access::{self, Client};
use super::batcher::{Command, Event, Failure, Request};
use super::streams::Busy;
use super::{openai, State};

const PAGE: &str = include_str!("page.html");
/// The stylesheet the page shares with the exported one (`charrnn export --web`).
const STYLE: &str = include_str!("../../web/page/style.css");

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }))
        .route("/healthz", get(healthz))
        .route("/v1/model", get(model))
        .route("/v1/generate", post(generate))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .fallback(|uri: axum::http::Uri| async move {
            error_for(uri.path(), StatusCode::NOT_FOUND, "invalid_request_error", "no such route")
        })
        .layer(middleware::from_fn_with_state(state.clone(), access::check))
        .layer(CatchPanicLayer::custom(|_| {
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error; please report it")
        }))
        .with_state(state)
}

/// `{"error": message}` with a status.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// An error in the form the route's clients read: OpenAI's error object on its routes,
/// `{"error": message}` elsewhere.
pub fn error_for(path: &str, status: StatusCode, kind: &str, message: &str) -> Response {
    match openai::is_openai_route(path) {
        true => openai::error(status, kind, message),
        false => error(status, message),
    }
}

async fn healthz(Shared(state): Shared<Arc<State>>) -> Response {
    let in_use = state.streams.in_use();
    let name = state.served.read().map(|s| s.name.clone()).unwrap_or_default();
    if !state.sampler_alive() {
        let body =
            json!({ "status": "failing", "error": "the sampling thread has stopped", "checkpoint": name });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({ "status": "ok", "active_streams": in_use, "checkpoint": name })).into_response()
}

/// What `info --json` shows, as bytes made once per model.
async fn model(Shared(state): Shared<Arc<State>>) -> Response {
    match state.served.read() {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s.info_json.clone()).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the model description is unavailable"),
    }
}

/// The body of `POST /v1/generate`: every field optional, with `generate`'s defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    start: Option<String>,
    length: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    seed: Option<u64>,
    num_samples: Option<usize>,
    stop: Option<Vec<String>>,
    include_stop: Option<bool>,
    stream: Option<bool>,
}

/// At most this many stop strings, each at most this many characters.
pub const MAX_STOPS: usize = 8;
const MAX_STOP_CHARS: usize = 64;

/// A 400 that names the field at fault, if one is.
pub struct Bad {
    pub field: Option<String>,
    pub message: String,
}

pub fn bad(field: &str, message: impl std::fmt::Display) -> Bad {
    Bad { field: Some(field.to_string()), message: message.to_string() }
}

impl IntoResponse for Bad {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(field) => json!({ "error": format!("{field}: {}", self.message), "field": field }),
            None => json!({ "error": format!("the body is not a valid request: {}", self.message) }),
        };
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    }
}

/// The body as a request: a JSON object of known fields, each of the right type.
pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Bad> {
    let whole = |message: String| Bad { field: None, message };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(whole("give a JSON object".into()));
    }
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes)).map_err(|e| {
        match e.path().to_string().as_str() {
            "." | "?" => whole(e.inner().to_string()),
            field => bad(field, e.inner()),
        }
    })
}

/// What a request may ask for, whichever route it comes by; `length` and `num_samples` in
/// range, the rest by the command line's rules.
pub struct Asked {
    pub start: String,
    pub length: usize,
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub num_samples: usize,
    pub stop: Vec<String>,
    pub include_stop: bool,
}

/// Checks a request against the limits and the vocabulary; the options, or a 400 naming the
/// field (by `fields`' names: the route's own).
pub fn options(state: &State, a: Asked, fields: &Fields) -> Result<SampleOptions, Bad> {
    let l = &state.limits;
    let range = |field: &str, v: usize, max: usize| match v {
        1.. if v <= max => Ok(v),
        _ => Err(bad(field, format_args!("{v} is out of range; give 1 to {max}"))),
    };
    let length = range(fields.length, a.length, l.max_length)?;
    let num_samples = range(fields.num_samples, a.num_samples, l.max_samples)?;
    let temperature = checks::TEMPERATURE.check(a.temperature).map_err(|e| bad("temperature", e))?;
    let top_k = match a.top_k {
        Some(k) => Some(checks::AT_LEAST_ONE.check(k).map_err(|e| bad("top_k", e))?),
        None => None,
    };
    let top_p = match a.top_p {
        Some(p) => Some(checks::PROBABILITY.check(p).map_err(|e| bad("top_p", e))?),
        None => None,
    };
    if a.stop.len() > MAX_STOPS {
        return Err(bad("stop", format_args!("{} strings; give at most {MAX_STOPS}", a.stop.len())));
    }
    let unfit = |s: &String| job::stop_problem(s).is_some() || s.chars().count() > MAX_STOP_CHARS;
    if let Some(s) = a.stop.iter().find(|s| unfit(s)) {
        return Err(bad("stop", format_args!("{s:?} must have 1 to {MAX_STOP_CHARS} characters")));
    }
    let start_chars = a.start.chars().count();
    if start_chars > l.max_start_chars {
        let max = l.max_start_chars;
        return Err(bad(fields.start, format_args!("{start_chars} characters; give at most {max}")));
    }
    if let Ok(served) = state.served.read() {
        served.vocab.encode(&a.start).map_err(|e| bad(fields.start, e))?;
    }
    Ok(SampleOptions {
        start: a.start,
        length,
        temperature,
        top_k,
        top_p,
        seed: a.seed.unwrap_or_else(rand::random),
        num_samples,
        stop: a.stop,
        include_stop: a.include_stop,
    })
}

/// A route's names for the fields that differ between routes.
pub struct Fields {
    pub start: &'static str,
    pub length: &'static str,
    pub num_samples: &'static str,
}

const GENERATE_FIELDS: Fields = Fields { start: "start", length: "length", num_samples: "num_samples" };

/// Why a body could not be read.
pub enum BodyError {
    TooLarge(usize),
    CutShort,
    Late(f64),
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::CutShort => StatusCode::BAD_REQUEST,
            BodyError::Late(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub fn message(&self) -> String {
        match self {
            BodyError::TooLarge(limit) => format!("the body is over {limit} bytes"),
            BodyError::CutShort => "the body ended before its announced length".into(),
            BodyError::Late(s) => format!("the body did not arrive within {s} s (--body-timeout)"),
        }
    }
}

/// A request's body, within the size limit and the body deadline.
pub async fn read_body(state: &State, body: Body) -> Result<Bytes, BodyError> {
    let limit = state.limits.max_body_bytes;
    let deadline = state.limits.body_timeout;
    let collected = tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await;
    match collected {
        Err(_) => Err(BodyError::Late(deadline.as_secs_f64())),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge(limit)),
        Ok(Err(_)) => Err(BodyError::CutShort),
    }
}

/// Why a request was not run.
pub enum Refused {
    Busy(Busy),
    Failed(Failure),
    ShuttingDown,
}

impl Refused {
    /// The status, the OpenAI error type and the message.
    pub fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Refused::Busy(Busy::Server(max)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("the server is generating its limit of {max} samples at once; retry shortly"),
            ),
            Refused::Busy(Busy::Client(share)) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                format!(
                    "this client is generating its share of {share} samples at once (--max-streams-per-client); retry when one ends"
                ),
            ),
            Refused::Failed(f) => (failure_status(f), "server_error", f.to_string()),
            Refused::ShuttingDown => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down".into())
            }
        }
    }

    /// The answer on `path`'s route, with Retry-After where coming back later helps.
    pub fn response(&self, path: &str) -> Response {
        let (status, kind, message) = self.parts();
        let kind = if status == StatusCode::BAD_REQUEST { "invalid_request_error" } else { kind };
        let mut r = error_for(path, status, kind, &message);
        if matches!(self, Refused::Busy(_)) {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// A failed request's status: the client's fault (400), the server's state (503) or a bug (500).
fn failure_status(failure: &Failure) -> StatusCode {
    match failure {
        Failure::BadStart(_) => StatusCode::BAD_REQUEST,
        Failure::Full(_) | Failure::TimeLimit(_) | Failure::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        Failure::SamplerFailed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Reserves the request's rows for `client` and hands it to the sampler; the first event (the
/// request is running) and the rest to come.
pub async fn submit(
    state: &State,
    client: Client,
    options: SampleOptions,
) -> Result<(Event, UnboundedReceiver<Event>), Refused> {
    let slot = state.streams.reserve(client, options.num_samples).map_err(Refused::Busy)?;
    let (events, mut receive) = tokio::sync::mpsc::unbounded_channel();
    let request = Request { options, time_limit: state.limits.time_limit, events, slot };
    state.commands.send(Command::Run(request)).map_err(|_| Refused::ShuttingDown)?;
    match receive.recv().await {
        Some(Event::Failed(f)) => Err(Refused::Failed(f)),
        Some(first) => Ok((first, receive)),
        None => Err(Refused::ShuttingDown),
    }
}

async fn generate(
    Shared(state): Shared<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = "/v1/generate";
    let bytes = match read_body(&state, body).await {
        Ok(b) => b,
        Err(e) => return error(e.status(), &e.message()),
    };
    let b: GenerateBody = match parse(&bytes) {
        Ok(b) => b,
        Err(bad) => return bad.into_response(),
    };
    let accepts_events = (headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()))
        .is_some_and(|a| a.contains("text/event-stream"));
    let stream = b.stream.unwrap_or(accepts_events);
    let asked = Asked {
        start: b.start.unwrap_or_else(|| job::DEFAULT_START.to_string()),
        length: b.length.unwrap_or(job::DEFAULT_LENGTH),
        temperature: b.temperature.unwrap_or(job::DEFAULT_TEMPERATURE),
        top_k: b.top_k,
        top_p: b.top_p,
        seed: b.seed,
        num_samples: b.num_samples.unwrap_or(1),
        stop: b.stop.unwrap_or_default(),
        include_stop: b.include_stop.unwrap_or(false),
    };
    let options = match options(&state, asked, &GENERATE_FIELDS) {
        Ok(o) => o,
        Err(bad) => return bad.into_response(),
    };
    let client = access::client(&state.access, &headers, peer.ip());
    let (first, receive) = match submit(&state, client, options).await {
        Ok(running) => running,
        Err(refused) => return refused.response(path),
    };
    match stream {
        true => events_response(first, receive),
        false => whole_response(first, receive).await,
    }
}

/// Waits for the samples and answers them in one JSON object.
async fn whole_response(first: Event, mut receive: UnboundedReceiver<Event>) -> Response {
    let mut next = Some(first);
    loop {
        match next {
            Some(Event::Done { samples, chars_per_s, .. }) => {
                return Json(json!({ "samples": samples, "chars_per_s": chars_per_s })).into_response()
            }
            Some(Event::Failed(f)) => return error(failure_status(&f), &f.to_string()),
            Some(Event::Text { .. }) => {}
            None => return error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"),
        }
        next = receive.recv().await;
    }
}

/// Relays the events as they come: `text` ({"sample", "text"}), then `done` ({"samples",
/// "chars_per_s"}) or `error` ({"error"}). Dropping the stream (the client going away) closes
/// the channel, which the sampler sees before its next step.
fn events_response(first: Event, receive: UnboundedReceiver<Event>) -> Response {
    let events = tokio_stream::once(first).chain(UnboundedReceiverStream::new(receive)).map(|e| {
        let sse = match e {
            Event::Text { sample, text } => {
                SseEvent::default().event("text").json_data(json!({ "sample": sample, "text": text }))
            }
            Event::Done { samples, chars_per_s, .. } => SseEvent::default()
                .event("done")
                .json_data(json!({ "samples": samples, "chars_per_s": chars_per_s })),
            Event::Failed(failure) => {
                SseEvent::default().event("error").json_data(json!({ "error": failure.to_string() }))
            }
        };
        Ok::<_, Infallible>(
            sse.unwrap_or_else(|_| SseEvent::default().event("error").data("unencodable event")),
        )
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
