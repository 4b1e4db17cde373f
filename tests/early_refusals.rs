//! Requests refused before their body is read (401, 403, 404, 405, 413) keep the HTTP/1
//! connection honest: a body the gateway can drain is drained and the connection carries the
//! client's next request; a body past the drain bound gets `Connection: close`, and the answer
//! arrives whole before the connection ends (never a reset in its place).

mod common;

use common::gateway::TestGateway;
use common::upstream::Upstream;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Generous bound for "the gateway answered": a hang fails the test, a slow machine does not.
const PATIENCE: Duration = Duration::from_secs(10);
/// A refused upload well inside the drain bound.
const SMALL_BODY: usize = 64 * 1024;
/// Declared by uploads far past the drain bound (of which only a part is ever sent).
const HUGE_BODY: u64 = 50 * 1024 * 1024;
const BAD_KEY: &str = "sg_nothere1234_nosecretnosecretnosecretnosecret1";

struct Setup {
    upstream: Upstream,
    gw: TestGateway,
    /// Holds `deploy_tool` and `upload_file`.
    key: String,
    /// Holds `view_job_status` only.
    narrow_key: String,
}

async fn setup() -> Setup {
    let upstream = Upstream::start().await;
    let gw = TestGateway::in_front_of(&upstream.url(), |yaml| yaml).await;
    let key = gw.key_with(&["deploy_tool", "upload_file"]).await;
    let narrow_key = gw.key_with(&["view_job_status"]).await;
    Setup {
        upstream,
        gw,
        key,
        narrow_key,
    }
}

/// One response read off a connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Header lines, names lowercased.
    head: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn says_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Reads one response with a `Content-Length` body; fails on a reset or an early end.
async fn read_reply(stream: &mut (impl AsyncReadExt + Unpin)) -> Result<Reply, String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf).await {
            Ok(0) => return Err(format!("closed mid-head after {raw:?}")),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{e} while reading the head")),
        }
    };
    let text = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let head: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = head
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| format!("no content-length in {text:?}"))?;
    let mut body = raw[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf).await {
            Ok(0) => return Err(format!("closed mid-body after {body:?}")),
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{e} while reading the body")),
        }
    }
    Ok(Reply {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn reply(stream: &mut (impl AsyncReadExt + Unpin)) -> Reply {
    tokio::time::timeout(PATIENCE, read_reply(stream))
        .await
        .expect("an answer in time")
        .unwrap_or_else(|e| panic!("the answer did not arrive whole: {e}"))
}

/// A refusal case: request line and extra headers, the status and code it gets.
struct Case {
    line: &'static str,
    key: Option<String>,
    status: u16,
    code: &'static str,
}

fn cases(s: &Setup) -> Vec<Case> {
    vec![
        Case {
            line: "POST /api/v1/tools/t/deploy",
            key: Some(BAD_KEY.into()),
            status: 401,
            code: "invalid_key",
        },
        Case {
            line: "POST /api/v1/tools/t/deploy",
            key: None,
            status: 401,
            code: "missing_key",
        },
        Case {
            line: "POST /api/v1/tools/t/deploy",
            key: Some(s.narrow_key.clone()),
            status: 403,
            code: "scope_denied",
        },
        Case {
            line: "POST /api/v1/nowhere",
            key: Some(s.key.clone()),
            status: 404,
            code: "route_not_found",
        },
        Case {
            line: "PUT /api/v1/tools/t/deploy",
            key: Some(s.key.clone()),
            status: 405,
            code: "method_not_allowed",
        },
        // The route's `max_body` is 1 KiB: refused on the declared length, unread.
        Case {
            line: "POST /api/v1/files/small",
            key: Some(s.key.clone()),
            status: 413,
            code: "body_too_large",
        },
    ]
}

/// The request head for `case`, with `framing` (a `Content-Length` or `Transfer-Encoding`).
fn head(case: &Case, framing: &str) -> String {
    let key = case
        .key
        .as_ref()
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    format!("{} HTTP/1.1\r\nHost: x\r\n{key}{framing}\r\n", case.line)
}

/// `body` as chunks of at most 16 KiB, with the last chunk.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(16 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A valid request on the same connection gets its answer from the upstream.
async fn next_request_is_served(stream: &mut TcpStream, s: &Setup, after: &str) {
    let before = s.upstream.count();
    let request = format!(
        "POST /api/v1/tools/next/deploy HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\n\
         Content-Length: 2\r\n\r\n{{}}",
        s.key
    );
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("after {after}: the connection is dead ({e})"));
    let answer = tokio::time::timeout(PATIENCE, read_reply(stream))
        .await
        .expect("an answer in time")
        .unwrap_or_else(|e| panic!("after {after}: the next request got no answer ({e})"));
    assert_eq!(answer.status, 200, "after {after}: {answer:?}");
    assert_eq!(s.upstream.count(), before + 1);
    assert_eq!(s.upstream.last().target, "/api/v1/tools/next/deploy");
}

fn assert_refused(answer: &Reply, case: &Case) {
    assert_eq!(answer.status, case.status, "{}: {answer:?}", case.line);
    assert!(
        answer.body.contains(&format!("\"{}\"", case.code)),
        "{}: {answer:?}",
        case.line
    );
}

#[tokio::test]
async fn a_refused_upload_within_the_drain_bound_leaves_the_connection_usable() {
    let s = setup().await;
    let body = vec![b'a'; SMALL_BODY];
    for case in cases(&s) {
        let mut stream = TcpStream::connect(s.gw.proxy).await.expect("connect");
        let mut request = head(&case, &format!("Content-Length: {SMALL_BODY}\r\n")).into_bytes();
        request.extend_from_slice(&body);
        stream.write_all(&request).await.expect("write");
        let answer = reply(&mut stream).await;
        assert_refused(&answer, &case);
        assert!(!answer.says_close(), "{}: {answer:?}", case.line);
        next_request_is_served(&mut stream, &s, case.line).await;
    }
    assert_eq!(
        s.upstream.count(),
        cases(&s).len(),
        "no refused request went upstream"
    );
}

#[tokio::test]
async fn a_refused_chunked_upload_within_the_drain_bound_leaves_the_connection_usable() {
    let s = setup().await;
    let body = chunked(&vec![b'a'; SMALL_BODY]);
    // Every case but the declared-length 413: a chunked body declares nothing.
    for case in cases(&s).into_iter().filter(|c| c.status != 413) {
        let mut stream = TcpStream::connect(s.gw.proxy).await.expect("connect");
        let mut request = head(&case, "Transfer-Encoding: chunked\r\n").into_bytes();
        request.extend_from_slice(&body);
        stream.write_all(&request).await.expect("write");
        let answer = reply(&mut stream).await;
        assert_refused(&answer, &case);
        assert!(!answer.says_close(), "{}: {answer:?}", case.line);
        next_request_is_served(&mut stream, &s, case.line).await;
    }
}

/// Writes `pieces` from a task, as a client does that reads its answer while it uploads; hands
/// the writing half back when done.
fn send_in_background(
    mut writer: OwnedWriteHalf,
    pieces: Vec<Vec<u8>>,
) -> JoinHandle<std::io::Result<OwnedWriteHalf>> {
    tokio::spawn(async move {
        for piece in pieces {
            writer.write_all(&piece).await?;
        }
        Ok(writer)
    })
}

/// After a `Connection: close` answer, the connection ends cleanly: end of stream, not a reset.
async fn ends_cleanly(reader: &mut (impl AsyncReadExt + Unpin), what: &str) {
    let mut buf = [0u8; 1024];
    let end = tokio::time::timeout(PATIENCE, reader.read(&mut buf))
        .await
        .expect("the connection ends");
    assert!(
        matches!(end, Ok(0)),
        "{what}: after the answer, want end of stream, got {end:?}"
    );
}

/// The gateway, closing, still reads what the client sends (a lingering close): the client's
/// upload goes on for a while instead of being reset, so a client that only reads once its
/// upload is written still gets to read its answer.
async fn upload_is_not_reset(sending: JoinHandle<std::io::Result<OwnedWriteHalf>>, what: &str) {
    let mut writer = tokio::time::timeout(PATIENCE, sending)
        .await
        .expect("the upload is taken in time")
        .expect("task")
        .unwrap_or_else(|e| panic!("{what}: the upload was cut: {e}"));
    writer
        .write_all(&vec![b'a'; 256 * 1024])
        .await
        .unwrap_or_else(|e| panic!("{what}: the upload was cut after the answer: {e}"));
}

/// `count` chunks of 64 KiB, without the last chunk.
fn chunks(count: usize) -> Vec<Vec<u8>> {
    let mut piece = format!("{:x}\r\n", 64 * 1024).into_bytes();
    piece.extend_from_slice(&[b'a'; 64 * 1024]);
    piece.extend_from_slice(b"\r\n");
    vec![piece; count]
}

#[tokio::test]
async fn a_refused_upload_past_the_drain_bound_is_answered_whole_then_closed() {
    let s = setup().await;
    for case in cases(&s) {
        let stream = TcpStream::connect(s.gw.proxy).await.expect("connect");
        let (mut reader, mut writer) = stream.into_split();
        let request = head(&case, &format!("Content-Length: {HUGE_BODY}\r\n"));
        writer.write_all(request.as_bytes()).await.expect("write");
        // Refused on the declared length: nothing is drained, the answer comes at once.
        let sending = send_in_background(writer, vec![vec![b'a'; 64 * 1024]; 4]);
        let answer = reply(&mut reader).await;
        assert_refused(&answer, &case);
        assert!(answer.says_close(), "{}: {answer:?}", case.line);
        ends_cleanly(&mut reader, case.line).await;
        upload_is_not_reset(sending, case.line).await;
    }
    assert_eq!(s.upstream.count(), 0);
}

#[tokio::test]
async fn a_refused_chunked_upload_past_the_drain_bound_is_answered_whole_then_closed() {
    let s = setup().await;
    let case = &cases(&s)[0];
    let stream = TcpStream::connect(s.gw.proxy).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let request = head(case, "Transfer-Encoding: chunked\r\n");
    writer.write_all(request.as_bytes()).await.expect("write");
    // 2 MiB and counting: the drain gives up at its 1 MiB bound.
    let sending = send_in_background(writer, chunks(32));
    let answer = reply(&mut reader).await;
    assert_refused(&answer, case);
    assert!(answer.says_close(), "{answer:?}");
    ends_cleanly(&mut reader, "chunked").await;
    upload_is_not_reset(sending, "chunked").await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_is_not_waited_for_long() {
    let s = setup().await;
    let case = &cases(&s)[0];
    let mut stream = TcpStream::connect(s.gw.proxy).await.expect("connect");
    // 1000 bytes declared, 10 sent, and the client then waits.
    let request = head(case, "Content-Length: 1000\r\n") + "0123456789";
    stream.write_all(request.as_bytes()).await.expect("write");
    let answer = reply(&mut stream).await;
    assert_refused(&answer, case);
    assert!(answer.says_close(), "{answer:?}");
    ends_cleanly(&mut stream, "a body that stalls").await;
}

#[tokio::test]
async fn a_refusal_awaiting_100_continue_says_close() {
    let s = setup().await;
    let case = &cases(&s)[0];
    let mut stream = TcpStream::connect(s.gw.proxy).await.expect("connect");
    let request = head(case, "Content-Length: 5\r\nExpect: 100-continue\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let answer = reply(&mut stream).await;
    assert_refused(&answer, case);
    assert!(answer.says_close(), "{answer:?}");
    ends_cleanly(&mut stream, "expect 100-continue").await;
}

#[tokio::test]
async fn over_http2_a_refused_upload_leaves_the_connection_usable() {
    let s = setup().await;
    let tcp = TcpStream::connect(s.gw.proxy).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let post = |key: &str, body: Bytes| {
        hyper::Request::post(format!("http://{}/api/v1/tools/t/deploy", s.gw.proxy))
            .header("x-api-key", key)
            .body(Full::new(body))
            .expect("request")
    };
    let refused = sender
        .send_request(post(BAD_KEY, Bytes::from(vec![b'a'; SMALL_BODY])))
        .await
        .expect("answer");
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("connection").is_none());
    let _ = refused.into_body().collect().await;
    let served = sender
        .send_request(post(&s.key, Bytes::from_static(b"{}")))
        .await
        .expect("the connection carries the next request");
    assert_eq!(served.status(), 200);
    assert_eq!(s.upstream.count(), 1);
}
