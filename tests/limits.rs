//! Protective limits and faults on the wire: request-head sizes, slow, stalled and idle clients,
//! the connection bound, upstreams that fail mid-way, and that nothing is left running.

mod common;

use bytes::Bytes;
use common::gateway::TestGateway;
use common::http::{get, raw, send};
use common::upstream::Upstream;
use http::Method;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound for "the gateway acted": a hang fails the test, a slow machine does not.
const PATIENCE: Duration = Duration::from_secs(10);

const LIMITS: &str = "limits:
  max_connections: 3
  max_uri_bytes: 256
  max_header_bytes: 1024
  header_read_timeout: 1s
  idle_timeout: 1s
  send_timeout: 1s
";

/// A raw upstream that answers each connection with `answer`, then closes it.
async fn raw_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer).await;
                // Dropping the socket mid-body is the fault under test.
            });
        }
    });
    addr
}

async fn setup(raw_answer: &'static [u8]) -> (Upstream, TestGateway) {
    let upstream = Upstream::start().await;
    let faulty = raw_upstream(raw_answer).await;
    // `patient` lets a response stream far longer than any test runs.
    let extra = format!(
        "{LIMITS}upstreams:\n  faulty:\n    url: http://{faulty}\n    timeout: 2s\n  \
         patient:\n    url: {}\n    timeout: 10m\n",
        upstream.url()
    );
    let gw = TestGateway::in_front_of(&upstream.url(), |yaml| {
        yaml.replace("upstreams:\n", &extra)
            + "  - method: GET\n    path: /faulty\n    scope: public\n    upstream: faulty\n"
            + "  - method: GET\n    path: /firehose\n    scope: public\n    upstream: patient\n"
    })
    .await;
    (upstream, gw)
}

#[tokio::test]
async fn long_targets_get_414_and_large_header_blocks_431() {
    let (upstream, gw) = setup(b"").await;
    let long = format!("/api/v1/health?q={}", "a".repeat(300));
    let answer = get(&gw.url(&long), &[]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (414, "uri_too_long")
    );
    let big = "b".repeat(1100);
    let answer = get(&gw.url("/api/v1/health"), &[("x-big", &big)]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (431, "headers_too_large")
    );
    assert_eq!(upstream.count(), 0);
    assert_eq!(
        get(&gw.url("/api/v1/health"), &[("x-small", "ok")])
            .await
            .status,
        200
    );
}

/// Reads until the server closes the connection; returns what it sent.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_closed() {
    let (upstream, gw) = setup(b"").await;
    let mut stream = TcpStream::connect(gw.proxy).await.expect("connect");
    stream
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let sent = tokio::time::timeout(PATIENCE, until_closed(&mut stream))
        .await
        .expect("the gateway closes a slowloris connection");
    let text = String::from_utf8_lossy(&sent);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_a_quiet_stream_is_not() {
    let (upstream, gw) = setup(b"").await;
    let mut stream = TcpStream::connect(gw.proxy).await.expect("connect");
    stream
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::timeout(PATIENCE, until_closed(&mut stream))
        .await
        .expect("the idle connection is closed");

    // A response that streams slower than the idle timeout keeps its connection.
    let key = gw.key_with(&["view_job_status"]).await;
    let mut stream = TcpStream::connect(gw.proxy).await.expect("connect");
    let request =
        format!("GET /api/v1/jobs/1/stream HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let n = stream.read(&mut buf).await.expect("first chunk");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    upstream.release_stream();
    let rest = tokio::time::timeout(PATIENCE, async {
        let mut all = Vec::new();
        while !String::from_utf8_lossy(&all).contains("data: event 4") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        all
    })
    .await
    .expect("stream finishes");
    assert!(
        String::from_utf8_lossy(&rest).contains("data: event 4"),
        "the stream was not cut"
    );
}

#[tokio::test]
async fn past_the_connection_bound_new_connections_wait_their_turn() {
    let (_upstream, gw) = setup(b"").await;
    // Three connections hold the three slots (each mid-way through its headers).
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.proxy).await.expect("connect");
        s.write_all(b"GET /api/v1/health HTTP/1.1\r\n")
            .await
            .expect("write");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = tokio::spawn({
        let url = gw.url("/api/v1/health");
        async move { get(&url, &[]).await.status }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a fourth connection is not served while three are held"
    );
    drop(held);
    let status = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("served once a slot frees")
        .expect("task");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_upstream_that_resets_before_answering_is_a_502() {
    let (_upstream, gw) = setup(b"").await;
    let answer = get(&gw.url("/faulty"), &[]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (502, "upstream_unavailable")
    );
}

#[tokio::test]
async fn an_upstream_answer_with_broken_framing_is_a_502() {
    let (_upstream, gw) =
        setup(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello").await;
    let answer = get(&gw.url("/faulty"), &[]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (502, "upstream_unavailable")
    );
}

#[tokio::test]
async fn an_upstream_cut_off_mid_body_ends_the_client_response_early() {
    let (_upstream, gw) = setup(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial").await;
    let response = raw(gw.proxy, b"GET /faulty HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(
        body.len() < 1000,
        "the client sees a truncated body, never a made-up one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_leave_no_task_behind() {
    let (upstream, gw) = setup(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial").await;
    let metrics = tokio::runtime::Handle::current().metrics();
    // Warm up pools and background tasks, then take the baseline.
    assert_eq!(get(&gw.url("/api/v1/health"), &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let baseline = metrics.num_alive_tasks();
    for _ in 0..20 {
        let _ = raw(gw.proxy, b"GET /faulty HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut slow = TcpStream::connect(gw.proxy).await.expect("connect");
        slow.write_all(b"GET /api/v1/health HTTP/1.1\r\n")
            .await
            .expect("write");
        drop(slow);
        let _ = send(Method::GET, &gw.url("/api/v1/health"), &[], Bytes::new()).await;
    }
    // Idle connections (1s) and the raw helper's reads settle, then the count comes back.
    let mut alive = usize::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        alive = metrics.num_alive_tasks();
        if alive <= baseline + 2 {
            break;
        }
    }
    assert!(
        alive <= baseline + 2,
        "tasks alive: {alive}, baseline {baseline}"
    );
    assert!(upstream.count() >= 21);
}

#[tokio::test]
async fn a_slow_upload_ends_with_504_when_the_upstream_deadline_passes() {
    let (upstream, gw) = setup(b"").await;
    let key = gw.key_with(&["upload_file"]).await;
    let mut stream = TcpStream::connect(gw.proxy).await.expect("connect");
    let head = format!(
        "POST /api/v1/files/upload HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 1000\r\n\r\nonly-a-little"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    // The rest of the body never comes; the tools upstream's 2 s deadline ends the wait.
    let answer = tokio::time::timeout(PATIENCE, async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("upstream_timeout") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        seen
    })
    .await
    .expect("the gateway answers instead of waiting forever");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains("upstream_timeout"));
    assert!(
        upstream.requests().iter().all(|r| r.body_len < 1000),
        "no made-up body"
    );
}

#[tokio::test]
async fn too_many_header_fields_get_431() {
    let (upstream, gw) = setup(b"").await;
    let mut request = String::from("GET /api/v1/health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        request.push_str(&format!("x-h{i}: 1\r\n"));
    }
    request.push_str("\r\n");
    let answer = raw(gw.proxy, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(upstream.count(), 0);
}

/// Waits (up to [`PATIENCE`]) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} (waited {PATIENCE:?})"));
}

const FIREHOSE: &[u8] = b"GET /firehose HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_with_its_upstream_call() {
    let (upstream, gw) = setup(b"").await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut stream = socket.connect(gw.proxy).await.expect("connect");
    stream.write_all(FIREHOSE).await.expect("write");
    // The client never reads; the upstream keeps sending as fast as it is taken.
    eventually("the upstream starts streaming", || {
        upstream.firehoses_running() == 1
    })
    .await;
    let stalled = std::time::Instant::now();
    eventually(
        "the upstream call is dropped once the client stalls",
        || upstream.firehoses_running() == 0,
    )
    .await;
    eprintln!("upstream call dropped after {:?}", stalled.elapsed());
    // What was already on its way to the client drains, then the connection ends.
    tokio::time::timeout(PATIENCE, until_closed(&mut stream))
        .await
        .expect("the gateway closes the client's connection");
}

#[tokio::test]
async fn a_slow_client_that_keeps_reading_is_not_cut_off() {
    let (upstream, gw) = setup(b"").await;
    let mut stream = TcpStream::connect(gw.proxy).await.expect("connect");
    stream.write_all(FIREHOSE).await.expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    let mut taken = 0;
    // Four times `send_timeout`, reading at most 64 KiB every 200 ms: a trickle next to what
    // the upstream offers, but more than the kernel's buffers hide in a second.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("data keeps coming")
            .expect("the connection stays up");
        assert!(
            n > 0,
            "the gateway closed a client that reads (after {taken} bytes)"
        );
        taken += n;
    }
    assert_eq!(upstream.firehoses_running(), 1, "the upstream call goes on");
}

/// A short `header_read_timeout` against a long `idle_timeout`: a client closed well before the
/// idle timeout was closed by the header timeout.
const SHORT_HEADER_LIMITS: &str = "limits:\n  header_read_timeout: 300ms\n  idle_timeout: 60s\n";
/// A bound, not a speed: far past 300 ms, far short of the 60 s idle timeout.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

async fn short_header_gateway() -> (Upstream, TestGateway) {
    let upstream = Upstream::start().await;
    let gw = TestGateway::in_front_of(&upstream.url(), |yaml| {
        yaml.replace(
            "upstreams:\n",
            &format!("{SHORT_HEADER_LIMITS}upstreams:\n"),
        )
    })
    .await;
    (upstream, gw)
}

#[tokio::test]
async fn a_silent_client_is_closed_after_header_read_timeout_not_idle_timeout() {
    let (upstream, gw) = short_header_gateway().await;
    let cases: [(&str, &[u8]); 4] = [
        ("no bytes", b""),
        ("part of the h2c preface", b"PRI * HTTP/2.0\r\n"),
        ("one byte of the h2c preface", b"P"),
        (
            "part of an HTTP/1 head",
            b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n",
        ),
    ];
    for (what, sent) in cases {
        let mut stream = TcpStream::connect(gw.proxy).await.expect("connect");
        stream.write_all(sent).await.expect("write");
        let answer = tokio::time::timeout(CLOSED_WITHIN, until_closed(&mut stream))
            .await
            .unwrap_or_else(|_| {
                panic!("{what}: still open after {CLOSED_WITHIN:?} (header_read_timeout 300ms)")
            });
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{what}: {text}"
        );
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn an_h2c_client_past_its_preface_is_idle_not_late() {
    let (_upstream, gw) = short_header_gateway().await;
    let stream = TcpStream::connect(gw.proxy).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(connection);
    // Several header timeouts without a request: the preface was whole, so only
    // `idle_timeout` applies to this connection.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let request = http::Request::get(gw.url("/api/v1/health"))
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .expect("the connection is still open");
    assert_eq!(response.status(), 200);
}
