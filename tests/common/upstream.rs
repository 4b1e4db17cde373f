//! A real HTTP upstream that records what it receives.
//!
//! Paths ending in `/stream` answer with a first chunk, then the rest when the test says; paths ending in `/sleep`
//! answer after 3 seconds; `/drip` streams 30 events 100 ms apart; `/upload` counts body bytes without keeping them; `/firehose` streams
//! 64 KiB chunks for as long as someone takes them; everything else answers 200 with a small
//! JSON body.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    pub method: String,
    /// Path and query exactly as received on the wire.
    pub target: String,
    pub headers: http::HeaderMap,
    /// The body, except for `/upload` (empty there; see `body_len`).
    pub body: Bytes,
    pub body_len: u64,
}

#[derive(Clone)]
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    stream: Arc<StreamControl>,
    /// Connections accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

/// Lets a test hold a streaming answer after its first chunk.
#[derive(Default)]
pub(crate) struct StreamControl {
    release: tokio::sync::Notify,
    finished: std::sync::atomic::AtomicBool,
    /// `/firehose` answers still streaming.
    firehoses: std::sync::atomic::AtomicUsize,
}

pub(crate) type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl Upstream {
    pub(crate) async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stream = Arc::new(StreamControl::default());
        let recorder = seen.clone();
        let control = stream.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let recorder = recorder.clone();
                let control = control.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| handle(req, recorder.clone(), control.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            stream,
            accepted,
        }
    }

    /// Connections the upstream has accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }

    pub(crate) fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received a request")
    }

    /// Lets a held `/stream` answer send its remaining chunks.
    pub(crate) fn release_stream(&self) {
        self.stream.release.notify_one();
    }

    /// Whether a `/stream` answer has sent its last chunk.
    pub(crate) fn stream_finished(&self) -> bool {
        self.stream
            .finished
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many `/firehose` answers are still streaming (one ends when its connection fails).
    pub(crate) fn firehoses_running(&self) -> usize {
        self.stream
            .firehoses
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

async fn handle(
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<Recorded>>>,
    control: Arc<StreamControl>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let (parts, mut body) = request.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let counting_only = parts.uri.path().ends_with("/upload");
    let mut kept = Vec::new();
    let mut len = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            if !counting_only {
                kept.extend_from_slice(&data);
            }
        }
    }
    seen.lock().expect("lock").push(Recorded {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body: Bytes::from(kept),
        body_len: len,
    });
    let path = parts.uri.path();
    if path.ends_with("/stream") {
        return Ok(streaming(control));
    }
    if path.ends_with("/firehose") {
        return Ok(firehose(control));
    }
    if path.ends_with("/drip") {
        return Ok(drip());
    }
    if path.ends_with("/sleep") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let json = serde_json::json!({"ok": true, "target": target, "received": len}).to_string();
    let mut response = Response::new(Full::new(Bytes::from(json)).boxed());
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert("connection", http::HeaderValue::from_static("keep-alive"));
    response
        .headers_mut()
        .insert("x-upstream", http::HeaderValue::from_static("recorder"));
    Ok(response)
}

/// A stream that keeps flowing, as a model's answer does: 30 events, 100 ms apart (3 s).
fn drip() -> Response<UpstreamBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for i in 0..DRIP_EVENTS {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let chunk = Bytes::from(format!("data: token {i}\n\n"));
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}

/// Events a `/drip` answer carries.
pub(crate) const DRIP_EVENTS: usize = 30;

/// One chunk, then (once the test releases it) four more: a client that sees the first chunk
/// before the release proves nothing was buffered.
fn streaming(control: Arc<StreamControl>) -> Response<UpstreamBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for i in 0..5 {
            let chunk = Bytes::from(format!("data: event {i}\n\n"));
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
            if i == 0 {
                control.release.notified().await;
            }
        }
        control
            .finished
            .store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// 64 KiB chunks, as fast as they are taken, until the connection fails.
fn firehose(control: Arc<StreamControl>) -> Response<UpstreamBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    control
        .firehoses
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        while tx.send(Ok(Frame::data(chunk.clone()))).await.is_ok() {}
        control
            .firehoses
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}
