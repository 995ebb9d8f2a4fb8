//! The HTTP API: routes, request checking, and the relay of the sampler's events as one JSON
//! answer or as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State as Shared;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tower_http::catch_panic::CatchPanicLayer;

use charrnn_core::checks;
use charrnn_core::sample::job::{self, SampleOptions};

use super::batcher::{Command, Event, Failure, Request, Slot};
use super::State;

const PAGE: &str = include_str!("page.html");

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/healthz", get(healthz))
        .route("/v1/model", get(model))
        .route("/v1/generate", post(generate))
        .layer(CatchPanicLayer::custom(|_| {
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error; please report it")
        }))
        .with_state(state)
}

/// `{"error": message}` with a status.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn healthz(Shared(state): Shared<Arc<State>>) -> Json<serde_json::Value> {
    let in_use = state.streams_in_use.load(std::sync::atomic::Ordering::SeqCst);
    let path = state.served.read().map(|s| s.path.display().to_string()).unwrap_or_default();
    Json(json!({ "status": "ok", "active_streams": in_use, "checkpoint": path }))
}

async fn model(Shared(state): Shared<Arc<State>>) -> Response {
    match state.served.read() {
        Ok(s) => Json(s.info.clone()).into_response(),
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
const MAX_STOPS: usize = 8;
const MAX_STOP_CHARS: usize = 64;

/// A 400 that names the field at fault, if one is.
struct Bad {
    field: Option<String>,
    message: String,
}

fn bad(field: &str, message: impl std::fmt::Display) -> Bad {
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
fn parse(bytes: &[u8]) -> Result<GenerateBody, Bad> {
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

/// Checks the body against the limits and the vocabulary; the options, or a 400.
fn options(state: &State, b: GenerateBody) -> Result<SampleOptions, Bad> {
    let l = &state.limits;
    let range = |field: &str, v: usize, max: usize| match v {
        1.. if v <= max => Ok(v),
        _ => Err(bad(field, format_args!("{v} is out of range; give 1 to {max}"))),
    };
    let length = range("length", b.length.unwrap_or(job::DEFAULT_LENGTH), l.max_length)?;
    let num_samples = range("num_samples", b.num_samples.unwrap_or(1), l.max_samples)?;
    let temperature = checks::TEMPERATURE
        .check(b.temperature.unwrap_or(job::DEFAULT_TEMPERATURE))
        .map_err(|e| bad("temperature", e))?;
    let top_k = match b.top_k {
        Some(k) => Some(checks::AT_LEAST_ONE.check(k).map_err(|e| bad("top_k", e))?),
        None => None,
    };
    let top_p = match b.top_p {
        Some(p) => Some(checks::PROBABILITY.check(p).map_err(|e| bad("top_p", e))?),
        None => None,
    };
    let stop = b.stop.unwrap_or_default();
    if stop.len() > MAX_STOPS {
        return Err(bad("stop", format_args!("{} strings; give at most {MAX_STOPS}", stop.len())));
    }
    let unfit = |s: &String| job::stop_problem(s).is_some() || s.chars().count() > MAX_STOP_CHARS;
    if let Some(s) = stop.iter().find(|s| unfit(s)) {
        return Err(bad("stop", format_args!("{s:?} must have 1 to {MAX_STOP_CHARS} characters")));
    }
    let start = b.start.unwrap_or_else(|| job::DEFAULT_START.to_string());
    if let Ok(served) = state.served.read() {
        served.vocab.encode(&start).map_err(|e| bad("start", e))?;
    }
    Ok(SampleOptions {
        start,
        length,
        temperature,
        top_k,
        top_p,
        seed: b.seed.unwrap_or_else(rand::random),
        num_samples,
        stop,
        include_stop: b.include_stop.unwrap_or(false),
    })
}

async fn generate(Shared(state): Shared<Arc<State>>, headers: HeaderMap, body: Body) -> Response {
    let limit = state.limits.max_body_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body is over {limit} bytes"));
    };
    let body = match parse(&bytes) {
        Ok(b) => b,
        Err(bad) => return bad.into_response(),
    };
    let accepts_events = (headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()))
        .is_some_and(|a| a.contains("text/event-stream"));
    let stream = body.stream.unwrap_or(accepts_events);
    let options = match options(&state, body) {
        Ok(o) => o,
        Err(bad) => return bad.into_response(),
    };
    let max = state.limits.max_streams;
    let Some(slot) = Slot::reserve(&state.streams_in_use, options.num_samples, max) else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the server is generating its limit of {max} samples at once; retry shortly"),
        );
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let (events, mut receive) = tokio::sync::mpsc::unbounded_channel();
    let request = Request { options, time_limit: state.limits.time_limit, events, slot };
    if state.commands.send(Command::Run(request)).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down");
    }
    // The first event says whether the request runs; only then is a status chosen.
    let first = match receive.recv().await {
        Some(Event::Failed(failure)) => return failed(&failure),
        Some(first) => first,
        None => return error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"),
    };
    match stream {
        true => events_response(first, receive),
        false => whole_response(first, receive).await,
    }
}

/// A failed request's answer: the client's fault (400), the server's state (503) or a bug
/// (500).
fn failed(failure: &Failure) -> Response {
    let status = match failure {
        Failure::BadStart(_) => StatusCode::BAD_REQUEST,
        Failure::Full(_) | Failure::TimeLimit(_) | Failure::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        Failure::SamplerFailed => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &failure.to_string())
}

/// Waits for the samples and answers them in one JSON object.
async fn whole_response(first: Event, mut receive: UnboundedReceiver<Event>) -> Response {
    let mut next = Some(first);
    loop {
        match next {
            Some(Event::Done { samples, chars_per_s }) => {
                return Json(json!({ "samples": samples, "chars_per_s": chars_per_s })).into_response()
            }
            Some(Event::Failed(failure)) => return failed(&failure),
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
            Event::Done { samples, chars_per_s } => SseEvent::default()
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
