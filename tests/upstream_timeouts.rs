//! An upstream's timeouts, each hit by a real upstream: `timeout: none` lets a stream that keeps
//! flowing outlive any whole-response deadline (a model's long answer), `read_timeout` cuts a
//! stream that went silent, `header_timeout` answers 504 before the head, and
//! `connect_timeout` gives up on an upstream that never completes a connection.

mod common;

use common::gateway::TestGateway;
use common::http::client;
use common::upstream::{Upstream, DRIP_EVENTS};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use std::time::Duration;

/// The test config with the `prefixed` upstream (a public route, `/api/v1/prefixed/{x}`)
/// given `settings` (YAML lines under it).
async fn gateway_with(upstream: &Upstream, settings: &str) -> TestGateway {
    TestGateway::in_front_of(&upstream.url(), |yaml| {
        yaml.replacen("/base\n", &format!("/base\n{settings}"), 1)
    })
    .await
}

/// A GET of `path` read to its end: (status, `data:` events received, whether the body ended
/// cleanly rather than being cut).
async fn read_stream(gateway: &TestGateway, path: &str) -> (u16, usize, bool) {
    let request = Request::builder()
        .method(Method::GET)
        .uri(gateway.url(path))
        .body(Full::new(bytes::Bytes::new()))
        .expect("request");
    let response = client().request(request).await.expect("response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = String::new();
    let clean = loop {
        match body.frame().await {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
        }
    };
    (status, text.matches("data:").count(), clean)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_none_lets_a_flowing_stream_run_past_what_a_deadline_cuts() {
    let upstream = Upstream::start().await;
    // A whole-response deadline cuts the 3-second stream mid-answer...
    let deadline = gateway_with(&upstream, "    timeout: 1s\n").await;
    let (status, events, clean) = read_stream(&deadline, "/api/v1/prefixed/drip").await;
    assert_eq!(status, 200);
    assert!(
        !clean && events < DRIP_EVENTS,
        "{events} events, clean: {clean}"
    );
    // ... `timeout: none` lets it flow to its end, read_timeout (far longer than the gaps)
    // never fires while it flows.
    let none = gateway_with(&upstream, "    timeout: none\n    read_timeout: 1s\n").await;
    let (status, events, clean) = read_stream(&none, "/api/v1/prefixed/drip").await;
    assert_eq!((status, events, clean), (200, DRIP_EVENTS, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_cuts_a_stream_that_went_silent() {
    let upstream = Upstream::start().await;
    let g = gateway_with(&upstream, "    timeout: none\n    read_timeout: 300ms\n").await;
    // One event, then silence until the test releases it (it never does).
    let (status, events, clean) = tokio::time::timeout(
        Duration::from_secs(20),
        read_stream(&g, "/api/v1/prefixed/stream"),
    )
    .await
    .expect("a silent stream must be cut, not held for ever");
    assert_eq!((status, events, clean), (200, 1, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_answers_504_before_the_head() {
    let upstream = Upstream::start().await;
    // The upstream answers `/sleep` after 3 s; with no whole deadline, the head's own bounds it.
    let g = gateway_with(&upstream, "    timeout: none\n    header_timeout: 300ms\n").await;
    let answer = common::http::get(&g.url("/api/v1/prefixed/sleep"), &[]).await;
    assert_eq!(answer.status, 504, "{:?}", answer.body);
    assert_eq!(answer.error_code(), "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_gives_up_on_an_upstream_that_never_accepts() {
    // A listener whose accept queue is full: the kernel drops further connection attempts,
    // so a connect neither succeeds nor is refused.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut held = Vec::new();
    for _ in 0..4 {
        let attempt = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        );
        match attempt.await {
            Ok(Ok(stream)) => held.push(stream),
            _ => break, // the queue is full: attempts hang from here on
        }
    }
    let upstream = Upstream::start().await;
    let g = TestGateway::in_front_of(&upstream.url(), |yaml| {
        yaml.replacen(
            "  dead:\n    url: http://127.0.0.1:1\n",
            &format!(
                "  dead:\n    url: http://{addr}\n    connect_timeout: 200ms\n    header_timeout: 3s\n"
            ),
            1,
        )
    })
    .await;
    // Given up at connect_timeout: 502 (with the 5 s default, header_timeout's 504 came first).
    let answer = common::http::get(&g.url("/api/v1/dead"), &[]).await;
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    assert_eq!(answer.error_code(), "upstream_unavailable");
    drop(held);
}
