//! OpenAI's completions API over the same sampler: `POST /v1/completions` and `GET
//! /v1/models`, so standard clients and tools can call the server. A token is a character
//! here: `max_tokens` counts characters, and so does `usage`. For the same prompt, seed and
//! options the text is what `charrnn generate` writes after its start.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State as Shared};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use super::access;
use super::api::{self, bad, Asked, Bad, Fields};
use super::batcher::Event;
use super::State;

/// The routes that answer in OpenAI's forms, errors included.
pub fn is_openai_route(path: &str) -> bool {
    matches!(path, "/v1/completions" | "/v1/models")
}

/// OpenAI's error object.
pub fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    error_with(status, kind, message, None)
}

fn error_with(status: StatusCode, kind: &str, message: &str, param: Option<&str>) -> Response {
    let code = match status {
        StatusCode::UNAUTHORIZED => Some("invalid_api_key"),
        StatusCode::TOO_MANY_REQUESTS => Some("rate_limit_exceeded"),
        _ => None,
    };
    let kind = if status == StatusCode::UNAUTHORIZED { "invalid_request_error" } else { kind };
    let body = json!({ "error": { "message": message, "type": kind, "param": param, "code": code } });
    (status, Json(body)).into_response()
}

impl Bad {
    fn openai(self) -> Response {
        let message = match &self.field {
            Some(field) => format!("{field}: {}", self.message),
            None => format!("the body is not a valid request: {}", self.message),
        };
        error_with(StatusCode::BAD_REQUEST, "invalid_request_error", &message, self.field.as_deref())
    }
}

/// A string, or a list of strings (`prompt`, `stop`).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The body of `POST /v1/completions`. Options that would change what the text means and
/// that this model does not have (log-probabilities, a suffix, penalties) are refused by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionBody {
    #[allow(dead_code)] // any name: the server has one model
    model: Option<String>,
    prompt: Option<OneOrMany>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<usize>,
    stop: Option<OneOrMany>,
    stream: Option<bool>,
    seed: Option<u64>,
    echo: Option<bool>,
    #[allow(dead_code)] // who asked: nothing to do with it
    user: Option<String>,
    stream_options: Option<Value>,
    logprobs: Option<Value>,
    suffix: Option<Value>,
    best_of: Option<Value>,
    presence_penalty: Option<Value>,
    frequency_penalty: Option<Value>,
    logit_bias: Option<Value>,
}

impl CompletionBody {
    /// The first option given that this server does not offer.
    fn unsupported(&self) -> Option<&'static str> {
        let zero = |v: &Option<Value>| v.as_ref().is_none_or(|v| v.is_null() || v.as_f64() == Some(0.0));
        let one = |v: &Option<Value>| v.as_ref().is_none_or(|v| v.is_null() || v.as_u64() == Some(1));
        let empty = |v: &Option<Value>| {
            v.as_ref().is_none_or(|v| v.is_null() || v.as_object().is_some_and(|o| o.is_empty()))
        };
        [
            (self.logprobs.as_ref().is_some_and(|v| !v.is_null()), "logprobs"),
            (self.suffix.as_ref().is_some_and(|v| !v.is_null()), "suffix"),
            (!one(&self.best_of), "best_of"),
            (!zero(&self.presence_penalty), "presence_penalty"),
            (!zero(&self.frequency_penalty), "frequency_penalty"),
            (!empty(&self.logit_bias), "logit_bias"),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }
}

const FIELDS: Fields = Fields { start: "prompt", length: "max_tokens", num_samples: "n" };

/// OpenAI's default `max_tokens`.
const DEFAULT_MAX_TOKENS: usize = 16;

/// The model's name in this API: its checkpoint's file name.
fn model_id(state: &State) -> String {
    state.served.read().map(|s| s.name.clone()).unwrap_or_default()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub async fn models(Shared(state): Shared<Arc<State>>) -> Response {
    let data = json!([{ "id": model_id(&state), "object": "model", "created": 0, "owned_by": "charrnn" }]);
    Json(json!({ "object": "list", "data": data })).into_response()
}

pub async fn completions(
    Shared(state): Shared<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = "/v1/completions";
    let bytes = match api::read_body(&state, body).await {
        Ok(b) => b,
        Err(e) => return error(e.status(), "invalid_request_error", &e.message()),
    };
    let b: CompletionBody = match api::parse(&bytes) {
        Ok(b) => b,
        Err(bad) => return bad.openai(),
    };
    if let Some(name) = b.unsupported() {
        return bad(name, "is not offered by this server").openai();
    }
    let prompt = match b.prompt {
        None => String::new(),
        Some(OneOrMany::One(p)) => p,
        Some(OneOrMany::Many(mut p)) if p.len() == 1 => p.remove(0),
        Some(OneOrMany::Many(_)) => return bad("prompt", "give one prompt per request").openai(),
    };
    let stop = match b.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(s)) => s,
    };
    let asked = Asked {
        start: prompt.clone(),
        length: b.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        temperature: b.temperature.unwrap_or(charrnn_core::sample::job::DEFAULT_TEMPERATURE),
        top_k: None,
        top_p: b.top_p,
        seed: b.seed,
        num_samples: b.n.unwrap_or(1),
        stop,
        include_stop: false,
    };
    let options = match api::options(&state, asked, &FIELDS) {
        Ok(o) => o,
        Err(bad) => return bad.openai(),
    };
    let client = access::client(&state.access, &headers, peer.ip());
    let (first, receive) = match api::submit(&state, client, options).await {
        Ok(running) => running,
        Err(refused) => return refused.response(path),
    };
    let reply = Reply {
        id: format!("cmpl-{:016x}", rand::random::<u64>()),
        created: now(),
        model: model_id(&state),
        prompt,
        echo: b.echo.unwrap_or(false),
    };
    let _ = b.stream_options; // usage in streams is not offered; the option is accepted
    match b.stream.unwrap_or(false) {
        true => reply.stream(first, receive),
        false => reply.whole(first, receive).await,
    }
}

/// What every answer to one completion request shares.
struct Reply {
    id: String,
    created: u64,
    model: String,
    prompt: String,
    echo: bool,
}

impl Reply {
    /// A text of `choices`, as the answer and each streamed chunk carry it.
    fn body(&self, choices: Value) -> Value {
        json!({
            "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
            "choices": choices,
        })
    }

    fn finish_reason(stopped: bool) -> &'static str {
        if stopped {
            "stop"
        } else {
            "length"
        }
    }

    /// Waits for the samples and answers them in one object.
    async fn whole(self, first: Event, mut receive: UnboundedReceiver<Event>) -> Response {
        let mut next = Some(first);
        loop {
            match next {
                Some(Event::Done { samples, stopped, .. }) => return self.done(samples, stopped),
                Some(Event::Failed(f)) => {
                    return api::Refused::Failed(f).response("/v1/completions");
                }
                Some(Event::Text { .. }) => {}
                None => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "the server is shutting down",
                    )
                }
            }
            next = receive.recv().await;
        }
    }

    fn done(&self, samples: Vec<String>, stopped: Vec<bool>) -> Response {
        let prompt_chars = self.prompt.chars().count();
        let mut completion_chars = 0;
        let choices: Vec<Value> = (samples.iter().zip(&stopped).enumerate())
            .map(|(index, (text, &stopped))| {
                let completion = &text[self.prompt.len()..];
                completion_chars += completion.chars().count();
                let text = if self.echo { text.as_str() } else { completion };
                json!({
                    "text": text, "index": index, "logprobs": null,
                    "finish_reason": Reply::finish_reason(stopped),
                })
            })
            .collect();
        let mut body = self.body(Value::Array(choices));
        body["usage"] = json!({
            "prompt_tokens": prompt_chars,
            "completion_tokens": completion_chars,
            "total_tokens": prompt_chars + completion_chars,
        });
        Json(body).into_response()
    }

    /// Streams the text as `data:` chunks, each choice's last with its finish reason, then
    /// `data: [DONE]`. Without `echo` the prompt, which each sample's first text is, is left out.
    fn stream(self, first: Event, receive: UnboundedReceiver<Event>) -> Response {
        let mut started = Vec::new();
        let events = tokio_stream::once(first).chain(UnboundedReceiverStream::new(receive));
        let chunks = events.map(move |e| {
            let chunks: Vec<String> = match e {
                Event::Text { sample, text } => {
                    started.resize(started.len().max(sample + 1), false);
                    let is_prompt = !std::mem::replace(&mut started[sample], true);
                    match is_prompt && !self.echo || text.is_empty() {
                        true => Vec::new(),
                        false => vec![self.chunk(sample, &text, None)],
                    }
                }
                Event::Done { stopped, .. } => (stopped.iter().enumerate())
                    .map(|(i, &s)| self.chunk(i, "", Some(Reply::finish_reason(s))))
                    .chain(["[DONE]".to_string()])
                    .collect(),
                Event::Failed(f) => {
                    let (_, kind, message) = api::Refused::Failed(f).parts();
                    let error =
                        json!({ "error": { "message": message, "type": kind, "param": null, "code": null } });
                    vec![error.to_string(), "[DONE]".to_string()]
                }
            };
            let text: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
            Ok::<_, Infallible>(Bytes::from(text))
        });
        let headers = [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")];
        (headers, Body::from_stream(chunks)).into_response()
    }

    fn chunk(&self, index: usize, text: &str, finish_reason: Option<&str>) -> String {
        let choice =
            json!({ "text": text, "index": index, "logprobs": null, "finish_reason": finish_reason });
        self.body(json!([choice])).to_string()
    }
}
