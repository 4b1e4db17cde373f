//! The upstream connection pool against one client's many slow uploads: an upstream that
//! answers before reading a request's body leaves its connection busy sending that body, and
//! such a connection is never handed to another request, so nobody else waits on it.

mod common;

use common::gateway::TestGateway;
use common::http::get;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Each upload's declared length; only [`FIRST_PART`] of it is sent until the end of the test.
const UPLOAD_LEN: usize = 64 * 1024;
const FIRST_PART: usize = 1024;
/// Generous bound for steps that only wait on local sockets.
const PATIENCE: Duration = Duration::from_secs(20);

/// What the early-answering upstream has seen.
struct Seen {
    /// Connections accepted so far.
    connections: tokio::sync::watch::Sender<usize>,
    /// Requests whose whole body (per `Content-Length`) arrived.
    complete_bodies: AtomicUsize,
}

impl Seen {
    fn connections(&self) -> usize {
        *self.connections.borrow()
    }
}

/// An HTTP/1.1 upstream that answers `200 ok` as soon as a request's head arrives (once it has
/// accepted `hold` connections, so that many requests are in flight at once), then reads
/// (drains) its body, and keeps the connection for the next request.
async fn early_answering_upstream(hold: usize) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen {
        connections: tokio::sync::watch::Sender::new(0),
        complete_bodies: AtomicUsize::new(0),
    });
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counts.connections.send_modify(|n| *n += 1);
            tokio::spawn(serve(socket, counts.clone(), hold));
        }
    });
    (addr, seen)
}

async fn serve(mut socket: TcpStream, seen: Arc<Seen>, hold: usize) {
    let mut buffered: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let end = loop {
            if let Some(at) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffered.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffered[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        buffered.drain(..end);
        let _ = seen.connections.subscribe().wait_for(|n| *n >= hold).await;
        // The answer first: the body is read afterwards.
        if socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
        while buffered.len() < length {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffered.extend_from_slice(&chunk[..n]),
            }
        }
        buffered.drain(..length);
        if length > 0 {
            seen.complete_bodies.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Starts an upload of [`UPLOAD_LEN`] bytes, sends [`FIRST_PART`] of it and reads the whole
/// (early) answer, which the upstream gave before reading the body: the connection stays open,
/// mid-body.
async fn open_upload(gateway: SocketAddr, key: &str) -> TcpStream {
    let mut stream = TcpStream::connect(gateway).await.expect("connect");
    let head = format!(
        "POST /api/v1/files/upload HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: {UPLOAD_LEN}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&vec![b'a'; FIRST_PART])
        .await
        .expect("first part");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !(answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"ok")) {
        let n = stream.read(&mut buf).await.expect("read the answer");
        assert!(n > 0, "the gateway closed an upload: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    stream
}

/// `uploads` slow uploads from one client hold as many upstream connections busy; another
/// client's GET to the same upstream is answered at once on a connection of its own, while
/// the uploads are still open. Today's pool handed each busy connection to the GET in turn
/// and waited 100 ms on it: 30 uploads cost 3 s, past the upstream's 2 s timeout (504).
async fn a_get_is_not_held_up_by(uploads: usize) {
    let (upstream, seen) = early_answering_upstream(uploads).await;
    let gw = TestGateway::in_front_of(&format!("http://{upstream}"), |yaml| yaml).await;
    let uploader = gw.key_with(&["upload_file"]).await;
    let reader = gw.key_with(&["view_job_status"]).await;

    // All at once: the upstream answers none before it holds every one of them.
    let mut open =
        futures_util::future::join_all((0..uploads).map(|_| open_upload(gw.proxy, &uploader)))
            .await;
    assert_eq!(seen.connections(), uploads);
    assert_eq!(seen.complete_bodies.load(Ordering::SeqCst), 0);

    // The header timeout of the `tools` upstream (2 s) bounds the answer; no tighter timing.
    let answer = get(&gw.url("/api/v1/jobs/1"), &[("x-api-key", &reader)]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        seen.complete_bodies.load(Ordering::SeqCst),
        0,
        "the GET did not wait for an upload to end"
    );

    // The uploads were open all along: each one finishes now, its body complete upstream.
    for stream in &mut open {
        stream
            .write_all(&vec![b'b'; UPLOAD_LEN - FIRST_PART])
            .await
            .expect("rest of the upload");
    }
    let deadline = Instant::now() + PATIENCE;
    while seen.complete_bodies.load(Ordering::SeqCst) < uploads {
        assert!(
            Instant::now() < deadline,
            "uploads never completed upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Once free, their connections go back to the pool: eventually a burst as large as all
    // the connections made so far is served without a new one.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let before = seen.connections();
        let url = gw.url("/api/v1/health");
        let burst = (0..before).map(|_| get(&url, &[]));
        for answer in futures_util::future::join_all(burst).await {
            assert_eq!(answer.status, 200);
        }
        if seen.connections() == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "freed connections never returned to the pool"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_slow_uploads_do_not_hold_up_another_clients_get() {
    a_get_is_not_held_up_by(30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_and_ten_slow_uploads_do_not_hold_up_another_clients_get() {
    a_get_is_not_held_up_by(110).await;
}
