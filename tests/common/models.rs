//! Fake model providers: a real HTTP server on an ephemeral port that answers
//! `POST /v1/chat/completions` in OpenAI's shape and `POST /v1/messages` in Anthropic's, as one
//! JSON body or as server-sent events per the request's `"stream"`, with token counts the test
//! controls. It records every request it received (headers and body).
//!
//! Counts:
//! - input tokens: the request's `metadata.input_tokens` when it is a number (to reach large
//!   counts cheaply), else the number of whitespace-separated words in every message's content
//!   (a string, or the `text` of its parts) plus anthropic's `system`;
//! - output tokens: `max_tokens` (openai: or `max_completion_tokens`), else
//!   [`DEFAULT_OUTPUT_TOKENS`]; the answer's text is that many words `w0 w1 …`, and a stream sends
//!   one content chunk per output token.
//!
//! An openai stream carries `"usage": null` in each chunk and a final usage chunk only when the
//! request set `stream_options.include_usage: true`, as the real API does. An anthropic stream
//! is `message_start` (input, output 1), `content_block_start`, `ping`, the deltas,
//! `content_block_stop`, `message_delta` (output), `message_stop`.
//!
//! Controls, per request, by header:
//! - `x-fake-hold: N`: send the stream's opening events and N content chunks (JSON: the body up
//!   to its `"usage"`), then wait for [`FakeModel::release`] before the rest;
//! - `x-fake-cut: N`: the same, then drop the connection instead (no usage is ever sent);
//! - `x-fake-status: S`: answer status S with the provider's error JSON, no usage.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

/// Output tokens when the request names no `max_tokens`.
pub(crate) const DEFAULT_OUTPUT_TOKENS: u64 = 8;
/// The path of OpenAI's chat completions.
pub(crate) const OPENAI_PATH: &str = "/v1/chat/completions";
/// The path of Anthropic's messages.
pub(crate) const ANTHROPIC_PATH: &str = "/v1/messages";

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub(crate) struct ModelRequest {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ModelRequest {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }
}

/// A fake provider; clones share it.
#[derive(Clone, Debug)]
pub(crate) struct FakeModel {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    seen: Mutex<Vec<ModelRequest>>,
    /// One permit per [`FakeModel::release`]; each held answer takes one.
    released: Semaphore,
    /// Answers that sent their last byte.
    finished: AtomicUsize,
}

impl FakeModel {
    pub(crate) async fn start() -> FakeModel {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake model");
        let addr = listener.local_addr().expect("fake model addr");
        let shared = Arc::new(Shared {
            seen: Mutex::new(Vec::new()),
            released: Semaphore::new(0),
            finished: AtomicUsize::new(0),
        });
        let serving = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, shared.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeModel { addr, shared }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets one held answer (`x-fake-hold`) send the rest; a release before the hold is kept.
    pub(crate) fn release(&self) {
        self.shared.released.add_permits(1);
    }

    /// Answers that have sent their last byte (a cut or held one has not).
    pub(crate) fn finished(&self) -> usize {
        self.shared.finished.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub(crate) fn requests(&self) -> Vec<ModelRequest> {
        self.shared.seen.lock().expect("lock").clone()
    }

    pub(crate) fn last(&self) -> ModelRequest {
        self.requests().pop().expect("the fake received a request")
    }
}

/// The API a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

/// What one answer will be.
#[derive(Debug)]
struct Plan {
    api: Api,
    model: String,
    input: u64,
    output: u64,
    stream: bool,
    include_usage: bool,
    /// Content chunks (JSON: 0, the part before usage) after which to hold or cut.
    hold: Option<usize>,
    cut: Option<usize>,
}

type FakeBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<FakeBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    shared.seen.lock().expect("lock").push(ModelRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let api = match (parts.method.as_str(), parts.uri.path()) {
        ("POST", OPENAI_PATH) => Api::OpenAi,
        ("POST", ANTHROPIC_PATH) => Api::Anthropic,
        _ => return Ok(error(Api::OpenAi, StatusCode::NOT_FOUND)),
    };
    let header =
        |name: &str| -> Option<u64> { parts.headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    if let Some(status) = header("x-fake-status").and_then(|s| u16::try_from(s).ok()) {
        let status = StatusCode::from_u16(status).expect("x-fake-status is a status");
        return Ok(error(api, status));
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return Ok(error(api, StatusCode::BAD_REQUEST));
    };
    let count = |v: Option<u64>| v.and_then(|n| usize::try_from(n).ok());
    let plan = Plan {
        api,
        model: request["model"].as_str().unwrap_or("fake-model").to_owned(),
        input: request["metadata"]["input_tokens"]
            .as_u64()
            .unwrap_or_else(|| words(api, &request)),
        output: request["max_completion_tokens"]
            .as_u64()
            .filter(|_| api == Api::OpenAi)
            .or(request["max_tokens"].as_u64())
            .unwrap_or(DEFAULT_OUTPUT_TOKENS),
        stream: request["stream"] == Value::Bool(true),
        include_usage: request["stream_options"]["include_usage"] == Value::Bool(true),
        hold: count(header("x-fake-hold")),
        cut: count(header("x-fake-cut")),
    };
    Ok(answer(&plan, shared))
}

/// Words of every message's content (and anthropic's `system`).
fn words(api: Api, request: &Value) -> u64 {
    fn text_words(content: &Value) -> usize {
        match content {
            Value::String(text) => text.split_whitespace().count(),
            Value::Array(parts) => parts.iter().map(|part| text_words(&part["text"])).sum(),
            _ => 0,
        }
    }
    let mut total: usize = request["messages"]
        .as_array()
        .map(|messages| messages.iter().map(|m| text_words(&m["content"])).sum())
        .unwrap_or(0);
    if api == Api::Anthropic {
        total += text_words(&request["system"]);
    }
    total as u64
}

/// The answer's frames, then a task that sends them (holding or cutting where told).
fn answer(plan: &Plan, shared: Arc<Shared>) -> Response<FakeBody> {
    let (frames, stop_at, content_type) = if plan.stream {
        let (opening, content, closing) = match plan.api {
            Api::OpenAi => openai_events(plan),
            Api::Anthropic => anthropic_events(plan),
        };
        let stop_at = plan
            .hold
            .or(plan.cut)
            .map(|n| opening.len() + n.min(content.len()));
        let frames: Vec<Bytes> = opening.into_iter().chain(content).chain(closing).collect();
        (frames, stop_at, "text/event-stream")
    } else {
        let body = match plan.api {
            Api::OpenAi => openai_json(plan),
            Api::Anthropic => anthropic_json(plan),
        }
        .to_string();
        let at = body.find("\"usage\"").expect("the body has usage");
        let frames = vec![
            Bytes::copy_from_slice(&body.as_bytes()[..at]),
            Bytes::copy_from_slice(&body.as_bytes()[at..]),
        ];
        let stop_at = (plan.hold.is_some() || plan.cut.is_some()).then_some(1);
        (frames, stop_at, "application/json")
    };
    let hold = plan.hold.is_some();
    let cut = plan.cut.is_some();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    tokio::spawn(async move {
        for at in 0..=frames.len() {
            if Some(at) == stop_at {
                if hold {
                    if let Ok(permit) = shared.released.acquire().await {
                        permit.forget();
                    }
                }
                if cut {
                    let _ = tx
                        .send(Err(std::io::Error::other("cut by x-fake-cut")))
                        .await;
                    return;
                }
            }
            let Some(frame) = frames.get(at) else { break };
            if tx.send(Ok(Frame::data(frame.clone()))).await.is_err() {
                return;
            }
        }
        shared.finished.fetch_add(1, Ordering::SeqCst);
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    response
}

fn sse(event: Option<&str>, data: &Value) -> Bytes {
    match event {
        Some(event) => Bytes::from(format!("event: {event}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

fn text(output: u64) -> String {
    (0..output)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn openai_usage(plan: &Plan) -> Value {
    json!({
        "prompt_tokens": plan.input,
        "completion_tokens": plan.output,
        "total_tokens": plan.input + plan.output,
    })
}

fn openai_json(plan: &Plan) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": plan.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text(plan.output)},
            "finish_reason": "length",
        }],
        "usage": openai_usage(plan),
    })
}

type Events = (Vec<Bytes>, Vec<Bytes>, Vec<Bytes>);

fn openai_events(plan: &Plan) -> Events {
    let chunk = |choices: Value| {
        let mut chunk = json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": plan.model,
            "choices": choices,
        });
        if plan.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let opening = vec![sse(
        None,
        &chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
        ),
    )];
    let content = (0..plan.output)
        .map(|i| {
            let piece = if i == 0 {
                format!("w{i}")
            } else {
                format!(" w{i}")
            };
            sse(
                None,
                &chunk(json!([{"index": 0, "delta": {"content": piece}, "finish_reason": null}])),
            )
        })
        .collect();
    let mut closing = vec![sse(
        None,
        &chunk(json!([{"index": 0, "delta": {}, "finish_reason": "length"}])),
    )];
    if plan.include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = openai_usage(plan);
        closing.push(sse(None, &last));
    }
    closing.push(Bytes::from_static(b"data: [DONE]\n\n"));
    (opening, content, closing)
}

fn anthropic_json(plan: &Plan) -> Value {
    json!({
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": [{"type": "text", "text": text(plan.output)}],
        "stop_reason": "max_tokens",
        "stop_sequence": null,
        "usage": {"input_tokens": plan.input, "output_tokens": plan.output},
    })
}

fn anthropic_events(plan: &Plan) -> Events {
    let opening = vec![
        sse(
            Some("message_start"),
            &json!({"type": "message_start", "message": {
                "id": "msg_fake", "type": "message", "role": "assistant", "model": plan.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": plan.input, "output_tokens": 1},
            }}),
        ),
        sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ),
        sse(Some("ping"), &json!({"type": "ping"})),
    ];
    let content = (0..plan.output)
        .map(|i| {
            let piece = if i == 0 {
                format!("w{i}")
            } else {
                format!(" w{i}")
            };
            sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": piece}}),
            )
        })
        .collect();
    let closing = vec![
        sse(
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        sse(
            Some("message_delta"),
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
                    "usage": {"output_tokens": plan.output}}),
        ),
        sse(Some("message_stop"), &json!({"type": "message_stop"})),
    ];
    (opening, content, closing)
}

/// The provider's error body for `status`.
fn error(api: Api, status: StatusCode) -> Response<FakeBody> {
    let message = format!("fake error {}", status.as_u16());
    let body = match api {
        Api::OpenAi => {
            let (kind, code) = match status.as_u16() {
                429 => ("requests", json!("rate_limit_exceeded")),
                500..=599 => ("server_error", Value::Null),
                _ => ("invalid_request_error", Value::Null),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Api::Anthropic => {
            let kind = match status.as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                500..=599 => "api_error",
                _ => "invalid_request_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    };
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

/// A response read frame by frame, as the gateway reads it.
#[derive(Debug)]
pub(crate) struct Streamed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
}

impl Streamed {
    /// Sends a POST with the tests' HTTP client and returns once the head has arrived.
    pub(crate) async fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Streamed {
        let mut builder = Request::builder().method("POST").uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        let response = super::http::client()
            .request(request)
            .await
            .expect("response");
        let (parts, body) = response.into_parts();
        Streamed {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// The next data frame; `None` at the end; `Err` when the connection failed mid-body.
    pub(crate) async fn next(&mut self) -> Option<Result<Bytes, hyper::Error>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
