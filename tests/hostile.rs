//! Hostile HTTP/1.1 on a raw socket: malformed framing, smuggling attempts, odd headers.
//!
//! Every case asserts both what the client got (the status line) and what the upstream saw
//! (usually: nothing). Many of these are refused by hyper's parser before the gateway sees them
//! (a bare `400` with no body, then the connection is closed); the tests pin the behaviour
//! whichever layer provides it.

mod common;

use common::gateway::{config_yaml, TestGateway, Upstreams};
use common::upstream::Upstream;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn setup() -> (Upstream, TestGateway) {
    let upstream = Upstream::start().await;
    let gateway = gateway_for(&upstream.url()).await;
    (upstream, gateway)
}

async fn gateway_for(upstream_url: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream_url.to_owned(),
        },
        None,
        &dir.path().join("data"),
    );
    TestGateway::start_in(&yaml, dir).await
}

/// What came back on one connection, and whether the server closed it.
struct Exchange {
    text: String,
    closed: bool,
}

impl Exchange {
    fn status_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    /// Every status line, in order (for pipelined requests and interim responses). A body
    /// without a final newline runs into the next status line, so search, not split.
    fn status_lines(&self) -> Vec<&str> {
        self.text
            .match_indices("HTTP/1.1 ")
            .map(|(at, _)| {
                let rest = &self.text[at..];
                &rest[..rest.find("\r\n").unwrap_or(rest.len())]
            })
            .collect()
    }
}

/// Writes `request` on a fresh connection, then reads until the server closes or is quiet for
/// `quiet`.
async fn exchange_with(addr: SocketAddr, request: &[u8], quiet: Duration) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Err(_) => break false,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    Exchange {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> Exchange {
    exchange_with(addr, request, Duration::from_millis(1500)).await
}

fn assert_status(ex: &Exchange, status: u16) {
    let want = format!("HTTP/1.1 {status} ");
    assert!(
        ex.status_line().starts_with(&want),
        "want {status}, got:\n{}",
        ex.text
    );
}

/// hyper's own refusal of a message it cannot parse: 400, and the connection is closed.
fn assert_refused_by_parser(ex: &Exchange) {
    assert_status(ex, 400);
    assert!(ex.closed, "connection left open after a framing error");
}

/// A refusal by the gateway itself: 400 with the contract's JSON body.
fn assert_bad_request(ex: &Exchange) {
    assert_status(ex, 400);
    assert!(ex.text.contains("\"bad_request\""), "{}", ex.text);
}

/// The value of a response header (first match, case-insensitive name).
fn response_header<'a>(ex: &'a Exchange, name: &str) -> Option<&'a str> {
    ex.text
        .split("\r\n\r\n")
        .next()?
        .lines()
        .skip(1)
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
}

/// An upstream that records the raw bytes of every request (head, chunked body, trailers) and
/// answers 200. Reads each request until the end of its (chunked or sized) body.
#[derive(Clone)]
struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        if let Some(end) = request_end(&buf) {
                            let request: Vec<u8> = buf.drain(..end).collect();
                            recorder
                                .lock()
                                .expect("lock")
                                .push(String::from_utf8_lossy(&request).into_owned());
                            let answer =
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        RawUpstream { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

/// Where the first complete request in `buf` ends, if it is complete.
fn request_end(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        // Chunks, then the last chunk and (optional) trailers, ended by an empty line.
        let mut at = head_end;
        loop {
            let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[at..line_end]);
            let size_text = size_text.split(';').next().unwrap_or("").trim().to_owned();
            let size = usize::from_str_radix(&size_text, 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                let rest = &buf[at..];
                if rest.starts_with(b"\r\n") {
                    return Some(at + 2);
                }
                return Some(at + rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4);
            }
            at += size + 2;
            if at > buf.len() {
                return None;
            }
        }
    }
    let len: usize = header("content-length:").map_or(Some(0), |v| v.parse().ok())?;
    (buf.len() >= head_end + len).then_some(head_end + len)
}

fn host(gw: &TestGateway) -> String {
    gw.proxy.to_string()
}

// ---------------------------------------------------------------- framing

#[tokio::test]
async fn content_length_and_transfer_encoding_together() {
    // RFC 9112 §6.1: process by Transfer-Encoding alone (or refuse), and close the connection
    // afterwards; never let the two framings reach the upstream. hyper takes the first option:
    // it drops Content-Length, decodes the chunks and closes after the response. The smuggled
    // second request in the "body" is never seen as a request by anyone.
    let raw = RawUpstream::start().await;
    let gw = gateway_for(&raw.url()).await;
    let key = gw.key_with(&["deploy_tool"]).await;
    let smuggled = "GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n";
    let chunked = format!("0\r\n\r\n{smuggled}");
    for order in [
        format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            chunked.len()
        ),
        format!(
            "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
            chunked.len()
        ),
    ] {
        let before = raw.requests().len();
        let request = format!(
            "POST /api/v1/tools/t/deploy HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n{order}\r\n{chunked}",
            host(&gw)
        );
        let ex = exchange(gw.proxy, request.as_bytes()).await;
        assert_status(&ex, 200);
        assert_eq!(
            ex.status_lines().len(),
            1,
            "one response only:\n{}",
            ex.text
        );
        assert!(ex.closed, "connection kept open after CL + TE");
        let seen = raw.requests();
        assert_eq!(seen.len(), before + 1, "{seen:#?}");
        let forwarded = seen[before].to_ascii_lowercase();
        assert!(forwarded.starts_with("post /api/v1/tools/t/deploy "));
        let framings = forwarded.matches("content-length:").count()
            + forwarded.matches("transfer-encoding:").count();
        assert!(framings <= 1, "two framings forwarded:\n{forwarded}");
        assert!(
            !forwarded.contains("/api/v1/health"),
            "smuggled:\n{forwarded}"
        );
    }
}

#[tokio::test]
async fn two_different_content_lengths_are_refused() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["deploy_tool"]).await;
    for lengths in [
        "Content-Length: 3\r\nContent-Length: 5\r\n",
        "Content-Length: 3, 5\r\n",
    ] {
        let request = format!(
            "POST /api/v1/tools/t/deploy HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n{lengths}\r\nabcde",
            host(&gw)
        );
        let ex = exchange(gw.proxy, request.as_bytes()).await;
        assert_refused_by_parser(&ex);
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn non_chunked_transfer_coding_is_refused() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["deploy_tool"]).await;
    for coding in [
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    ] {
        let request = format!(
            "POST /api/v1/tools/t/deploy HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n{coding}\r\n3\r\nabc\r\n0\r\n\r\n",
            host(&gw)
        );
        let ex = exchange(gw.proxy, request.as_bytes()).await;
        assert_refused_by_parser(&ex);
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn transfer_coding_other_than_chunked_is_not_silently_dropped() {
    // RFC 9112 §6.1: a server that receives a transfer coding it does not understand SHOULD
    // answer 501; a proxy must not forward the coded bytes without the coding.
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["deploy_tool"]).await;
    let request = format!(
        "POST /api/v1/tools/t/deploy HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        host(&gw)
    );
    let ex = exchange(gw.proxy, request.as_bytes()).await;
    let status = ex.status_line();
    assert!(
        status.starts_with("HTTP/1.1 400 ") || status.starts_with("HTTP/1.1 501 "),
        "{}",
        ex.text
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn obs_folded_header_is_refused() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    let request = format!(
        "GET /api/v1/jobs/1 HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\nX-Folded: a\r\n b\r\n\r\n",
        host(&gw)
    );
    assert_refused_by_parser(&exchange(gw.proxy, request.as_bytes()).await);
    // Folding the key itself: the continuation must not be glued onto the key.
    let (id_part, secret) = key.rsplit_once('_').expect("key shape");
    let request = format!(
        "GET /api/v1/jobs/1 HTTP/1.1\r\nHost: {}\r\nX-API-Key: {id_part}_\r\n\t{secret}\r\n\r\n",
        host(&gw)
    );
    assert_refused_by_parser(&exchange(gw.proxy, request.as_bytes()).await);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn bare_cr_or_nul_in_a_header_value_is_refused() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    for bad in ["a\rb", "a\0b", "a\rX-Injected: 1"] {
        let request = format!(
            "GET /api/v1/jobs/1 HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\nX-Odd: {bad}\r\n\r\n",
            host(&gw)
        );
        let ex = exchange(gw.proxy, request.as_bytes()).await;
        assert_refused_by_parser(&ex);
    }
    // In the key itself, too.
    let request = format!(
        "GET /api/v1/jobs/1 HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\0\r\n\r\n",
        host(&gw)
    );
    assert_refused_by_parser(&exchange(gw.proxy, request.as_bytes()).await);
    assert_eq!(upstream.count(), 0);
}

// ---------------------------------------------------------------- request line

#[tokio::test]
async fn absolute_form_with_another_authority_is_refused() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    let request = format!(
        "GET http://evil.example/api/v1/jobs/1 HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n\r\n",
        host(&gw)
    );
    let ex = exchange(gw.proxy, request.as_bytes()).await;
    assert_bad_request(&ex);
    assert_eq!(upstream.count(), 0);
    // The same authority is fine, and the upstream gets the origin-form path.
    let request = format!(
        "GET http://{h}/api/v1/jobs/1?q=1 HTTP/1.1\r\nHost: {h}\r\nX-API-Key: {key}\r\n\r\n",
        h = host(&gw)
    );
    let ex = exchange(gw.proxy, request.as_bytes()).await;
    assert_status(&ex, 200);
    assert_eq!(upstream.last().target, "/api/v1/jobs/1?q=1");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn connect_and_trace_are_refused_with_405() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    let h = host(&gw);
    for request in [
        format!("TRACE /api/v1/jobs/1 HTTP/1.1\r\nHost: {h}\r\nX-API-Key: {key}\r\n\r\n"),
        format!("TRACE /api/v1/health HTTP/1.1\r\nHost: {h}\r\n\r\n"),
        format!("CONNECT {h} HTTP/1.1\r\nHost: {h}\r\nX-API-Key: {key}\r\n\r\n"),
        "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n".to_owned(),
    ] {
        let ex = exchange(gw.proxy, request.as_bytes()).await;
        assert_status(&ex, 405);
        assert!(ex.text.contains("method_not_allowed"), "{}", ex.text);
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn h2c_upgrade_is_not_passed_on() {
    let raw = RawUpstream::start().await;
    let gw = gateway_for(&raw.url()).await;
    let key = gw.key_with(&["view_job_status"]).await;
    for connection in [
        "Connection: Upgrade, HTTP2-Settings\r\n",
        // Without `Connection` naming them: still connection-specific (RFC 9113 §3.2.1 of old).
        "",
    ] {
        let before = raw.requests().len();
        let request = format!(
            "GET /api/v1/jobs/1 HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n{connection}Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
            host(&gw)
        );
        let ex = exchange(gw.proxy, request.as_bytes()).await;
        assert_status(&ex, 200);
        assert!(!ex.text.contains(" 101 "), "{}", ex.text);
        let seen = raw.requests();
        assert_eq!(seen.len(), before + 1);
        let forwarded = seen[before].to_ascii_lowercase();
        assert!(!forwarded.contains("upgrade:"), "{forwarded}");
        assert!(!forwarded.contains("h2c"), "{forwarded}");
        assert!(!forwarded.contains("http2-settings"), "{forwarded}");
    }
}

// ---------------------------------------------------------------- connection reuse

#[tokio::test]
async fn pipelined_requests_are_judged_one_by_one() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    let h = host(&gw);
    let request = format!(
        "GET /api/v1/jobs/1 HTTP/1.1\r\nHost: {h}\r\nX-API-Key: {key}\r\n\r\n\
         GET /api/v1/jobs/2 HTTP/1.1\r\nHost: {h}\r\n\r\n"
    );
    let ex = exchange(gw.proxy, request.as_bytes()).await;
    let lines = ex.status_lines();
    assert_eq!(lines.len(), 2, "{}", ex.text);
    assert!(lines[0].starts_with("HTTP/1.1 200 "), "{}", ex.text);
    assert!(lines[1].starts_with("HTTP/1.1 401 "), "{}", ex.text);
    assert!(ex.text.contains("missing_key"));
    assert_eq!(upstream.count(), 1);
    assert_eq!(upstream.last().target, "/api/v1/jobs/1");
}

#[tokio::test]
async fn expect_continue_on_a_refused_request_gets_no_100() {
    let (upstream, gw) = setup().await;
    let h = host(&gw);
    for credential in [
        "",
        "X-API-Key: sg_nothere1234_nosecretnosecretnosecretnosecret1\r\n",
    ] {
        let request = format!(
            "POST /api/v1/tools/t/deploy HTTP/1.1\r\nHost: {h}\r\n{credential}Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        );
        // The body is never sent: the refusal must come without it.
        let ex = exchange(gw.proxy, request.as_bytes()).await;
        assert_status(&ex, 401);
        assert!(!ex.text.contains("100 Continue"), "{}", ex.text);
        assert_eq!(ex.status_lines().len(), 1, "{}", ex.text);
    }
    assert_eq!(upstream.count(), 0);
}

// ---------------------------------------------------------------- headers toward the upstream

#[tokio::test]
async fn connection_cannot_strip_what_the_gateway_sets() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    let key_id = key.split('_').nth(1).expect("key id").to_owned();
    let request = format!(
        "GET /api/v1/jobs/1 HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n\
         Connection: X-Scopegate-App, X-Forwarded-For\r\n\
         Connection: x-scopegate-key, X-Forwarded-Proto, x-forwarded-host, host\r\n\
         X-Scopegate-App: forged\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
        host(&gw)
    );
    let ex = exchange(gw.proxy, request.as_bytes()).await;
    assert_status(&ex, 200);
    let seen = upstream.last();
    let app = seen
        .headers
        .get("x-scopegate-app")
        .expect("x-scopegate-app");
    assert_ne!(app, "forged");
    assert!(!app.is_empty());
    assert_eq!(seen.headers["x-scopegate-key"], key_id.as_str());
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], host(&gw).as_str());
    assert_eq!(seen.headers["host"], upstream.addr.to_string().as_str());
    assert!(!seen.headers.contains_key("connection"));
}

#[tokio::test]
async fn request_trailers_are_not_forwarded() {
    let raw = RawUpstream::start().await;
    let gw = gateway_for(&raw.url()).await;
    let key = gw.key_with(&["deploy_tool"]).await;
    let request = format!(
        "POST /api/v1/tools/t/deploy HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n\
         Transfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: X-Trailer, X-Scopegate-App\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: secret\r\nX-Scopegate-App: forged\r\n\r\n",
        host(&gw)
    );
    let ex = exchange(gw.proxy, request.as_bytes()).await;
    assert_status(&ex, 200);
    let seen = raw.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let forwarded = &seen[0];
    let lower = forwarded.to_ascii_lowercase();
    assert!(!lower.contains("x-trailer"), "{forwarded}");
    assert!(!lower.contains("secret"), "{forwarded}");
    assert!(!lower.contains("forged"), "{forwarded}");
    assert!(!lower.contains("\r\nte:"), "{forwarded}");
    assert!(!lower.contains("\r\ntrailer:"), "{forwarded}");
    let body = &forwarded[forwarded.find("\r\n\r\n").expect("head") + 4..];
    let decoded: String = body
        .split("\r\n")
        .collect::<Vec<_>>()
        .chunks(2)
        .filter_map(|c| c.get(1).copied())
        .collect();
    assert_eq!(decoded, "hello world", "{forwarded}");
}

#[tokio::test]
async fn credential_header_spelling_and_whitespace() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    let h = host(&gw);
    let spellings = [
        format!("x-API-key: {key}"),
        format!("X-API-KEY:{key}"),
        format!("X-Api-Key: \t {key} \t "),
        format!("authorization: bEARER {key}"),
        format!("AUTHORIZATION: Bearer \t {key}  "),
        format!("Authorization:bearer\t{key}"),
    ];
    for (i, header) in spellings.iter().enumerate() {
        let request = format!("GET /api/v1/jobs/{i} HTTP/1.1\r\nHost: {h}\r\n{header}\r\n\r\n");
        let ex = exchange(gw.proxy, request.as_bytes()).await;
        assert_status(&ex, 200);
        let seen = upstream.last();
        assert_eq!(seen.target, format!("/api/v1/jobs/{i}"));
        assert!(!seen.headers.contains_key("x-api-key"), "{header}");
        assert!(!seen.headers.contains_key("authorization"), "{header}");
    }
    // Not ours: another scheme, or "Bearer" glued to the key.
    for header in [
        format!("Authorization: Basic {key}"),
        format!("Authorization: Bearer{key}"),
    ] {
        let request = format!("GET /api/v1/jobs/x HTTP/1.1\r\nHost: {h}\r\n{header}\r\n\r\n");
        let ex = exchange(gw.proxy, request.as_bytes()).await;
        assert_status(&ex, 401);
        assert!(ex.text.contains("missing_key"), "{}", ex.text);
    }
    assert_eq!(upstream.count(), spellings.len());
}

#[tokio::test]
async fn two_credentials_are_refused_unless_identical() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    let other = gw.key_with(&["view_job_status"]).await;
    let h = host(&gw);
    for headers in [
        format!("X-API-Key: {key}\r\nX-API-Key: {key}\r\n"),
        format!("X-API-Key: {key}\r\nx-api-key: {other}\r\n"),
        format!("X-API-Key: {key}\r\nAuthorization: Bearer {other}\r\n"),
        format!("Authorization: Bearer {other}\r\nX-API-Key: {key}\r\n"),
        format!("Authorization: Bearer {key}\r\nAuthorization: Bearer {key}\r\n"),
        format!("Authorization: Bearer {key}, Bearer {other}\r\nX-API-Key: {key}\r\n"),
    ] {
        let request = format!("GET /api/v1/jobs/1 HTTP/1.1\r\nHost: {h}\r\n{headers}\r\n");
        let ex = exchange(gw.proxy, request.as_bytes()).await;
        assert_bad_request(&ex);
    }
    assert_eq!(upstream.count(), 0);
    // The same key in both places is one credential.
    let request = format!(
        "GET /api/v1/jobs/1 HTTP/1.1\r\nHost: {h}\r\nX-API-Key: {key}\r\nAuthorization: Bearer  {key}\r\n\r\n"
    );
    assert_status(&exchange(gw.proxy, request.as_bytes()).await, 200);
    let seen = upstream.last();
    assert!(!seen.headers.contains_key("x-api-key"));
    assert!(!seen.headers.contains_key("authorization"));
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_replaced() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    let request = format!(
        "GET /api/v1/jobs/1 HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n\
         X-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 7.7.7.7, 8.8.8.8\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n",
        host(&gw)
    );
    let ex = exchange(gw.proxy, request.as_bytes()).await;
    assert_status(&ex, 200);
    let seen = upstream.last();
    let xff: Vec<_> = seen.headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff, ["127.0.0.1"]);
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], host(&gw).as_str());
}

// ---------------------------------------------------------------- Host

#[tokio::test]
async fn two_host_headers_are_refused() {
    let (upstream, gw) = setup().await;
    let request = format!(
        "GET /api/v1/health HTTP/1.1\r\nHost: {}\r\nHost: evil.example\r\n\r\n",
        host(&gw)
    );
    let ex = exchange(gw.proxy, request.as_bytes()).await;
    assert_bad_request(&ex);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn missing_host_is_refused() {
    let (upstream, gw) = setup().await;
    let ex = exchange(gw.proxy, b"GET /api/v1/health HTTP/1.1\r\n\r\n").await;
    assert_bad_request(&ex);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn response_to_a_parser_refusal_has_no_upstream_headers() {
    // A sanity check of the harness: hyper's own 400 says nothing of the gateway or upstream.
    let (upstream, gw) = setup().await;
    let ex = exchange(gw.proxy, b"GET /api/v1/health HTTP/1.1\r\nHost x\r\n\r\n").await;
    assert_refused_by_parser(&ex);
    assert!(response_header(&ex, "x-upstream").is_none());
    assert_eq!(upstream.count(), 0);
}
