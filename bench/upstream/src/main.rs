//! The bench's upstream: answers every request with `200 {"ok":true}` after reading and
//! discarding the request body. HTTP/1.1 and h2c (prior knowledge) on one port, one thread.
//! With `BENCH_MODEL_KIB=N` it answers an OpenAI chat completion of about N KiB instead (its
//! `usage` last, as the API writes it), for a metered route's cost.
//!
//! Usage: `bench-upstream 127.0.0.1:PORT` (prints `listening on ADDR` once bound).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;

static BODY: &[u8] = b"{\"ok\":true}";

/// The answer's body: `{"ok":true}`, or a chat completion of about `BENCH_MODEL_KIB` KiB.
fn answer_body() -> Bytes {
    let Some(kib) = std::env::var("BENCH_MODEL_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return Bytes::from_static(BODY);
    };
    let text = "lorem ipsum ".repeat(kib * 1024 / 12);
    Bytes::from(format!(
        "{{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":1733500000,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{text}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":30,\"total_tokens\":42}}}}"
    ))
}

static ANSWER: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole body and drop it, so the client's upload is fully consumed.
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    let mut response = Response::new(Full::new(ANSWER.get_or_init(answer_body).clone()));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        println!(
            "listening on {}",
            listener.local_addr().expect("local addr")
        );
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http2().max_concurrent_streams(1024);
        let builder = Arc::new(builder);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(a) => a,
                Err(_) => continue,
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
}
