//! A controllable upstream replica: one of several targets behind an upstream, which a test can
//! stop (listener closed, every connection dropped) and start again on the same address, and
//! switch at runtime between answering, failing with a status, resetting and stalling.
//!
//! It counts what reached it (requests per method and path, body lengths, health checks by the
//! status they got) and its connections (open now, the most open at once, accepted in all), so
//! a test can assert where each request went and how many connections the gateway opened.
//!
//! Paths: `/healthz` answers the health status (switched apart from the mode, and counted apart
//! from requests); a path ending in `hold` (`/pool/hold`, `/pool/3-hold`) waits until
//! [`Replica::release_held`] before it is answered; one ending in `slow` waits
//! [`Replica::set_slow`] (2 s unless set); one ending in `halfway` gets its head and a first
//! chunk at once and the rest once released (a connection busy mid-response). The answer
//! names the replica: header `x-replica` and a JSON body `{"replica": NAME, ...}`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The name of the response header that says which replica answered.
pub(crate) const REPLICA_HEADER: &str = "x-replica";
/// How long [`Replica::stop`] waits for its connections to close (they close at once).
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// How the replica treats a request (`/healthz` aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// 200 with a body naming the replica.
    Answer,
    /// This status (503, 502, 504...), after reading the whole body.
    Status(u16),
    /// Reads the request head, then closes the connection with a TCP RST (SO_LINGER 0).
    Reset,
    /// Reads the whole request and never answers.
    Stall,
}

/// A replica; clones share it, and dropping the last one stops it.
#[derive(Clone)]
pub(crate) struct Replica {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The listener's life while started: `None` while stopped.
    life: Mutex<Option<Life>>,
}

struct Life {
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

/// What every connection task reads and counts into.
struct Shared {
    name: String,
    mode: Mutex<Mode>,
    health: Mutex<u16>,
    slow: Mutex<Duration>,
    released: watch::Sender<bool>,
    seen: Mutex<Seen>,
    open: AtomicUsize,
    peak: AtomicUsize,
    accepted: AtomicUsize,
}

#[derive(Default)]
struct Seen {
    /// Requests by (method, path), `/healthz` excluded.
    requests: HashMap<(String, String), usize>,
    /// Lengths of the bodies read whole, in arrival order (not for resets).
    body_lens: Vec<u64>,
    /// Health checks by the status they were answered.
    health: HashMap<u16, usize>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replica({} at {})", self.inner.name, self.inner.addr)
    }
}

impl Replica {
    /// Starts a replica named `name` on an ephemeral port of 127.0.0.1.
    pub(crate) async fn start(name: &str) -> Replica {
        Self::start_on(name, "127.0.0.1:0".parse().expect("address")).await
    }

    /// Starts a replica on `addr` (port 0: an ephemeral one). Panics if the address is taken;
    /// see [`Replica::try_start_on`].
    pub(crate) async fn start_on(name: &str, addr: SocketAddr) -> Replica {
        Self::try_start_on(name, addr)
            .await
            .unwrap_or_else(|e| panic!("bind replica {name} on {addr}: {e}"))
    }

    /// Starts a replica on `addr`, or the bind error (the port is taken on that address).
    pub(crate) async fn try_start_on(name: &str, addr: SocketAddr) -> std::io::Result<Replica> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            mode: Mutex::new(Mode::Answer),
            health: Mutex::new(200),
            slow: Mutex::new(Duration::from_secs(2)),
            released: watch::Sender::new(false),
            seen: Mutex::new(Seen::default()),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
        });
        let life = serve(listener, shared.clone());
        Ok(Replica {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                addr,
                shared,
                life: Mutex::new(Some(life)),
            }),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://IP:PORT`, as a target's `url`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Closes the listener and drops every open connection; returns once they are all closed
    /// (so a connection attempt is refused from here on).
    pub(crate) async fn stop(&self) {
        let life = self.inner.life.lock().expect("lock").take();
        let Some(life) = life else {
            return;
        };
        let _ = life.stop.send(true);
        let _ = life.accept.await;
        let deadline = tokio::time::Instant::now() + STOP_PATIENCE;
        while self.open_connections() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{self:?}: connections still open after stop"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Listens again on the same address (after [`Replica::stop`]); counts carry on.
    pub(crate) async fn restart(&self) {
        assert!(
            self.inner.life.lock().expect("lock").is_none(),
            "{self:?} is running"
        );
        // The port is ours until another socket takes it; a moment's retry covers a close
        // the kernel has not finished.
        let mut tries = 0;
        let listener = loop {
            match bind(self.inner.addr) {
                Ok(listener) => break listener,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 50, "{self:?}: bind again: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let life = serve(listener, self.inner.shared.clone());
        *self.inner.life.lock().expect("lock") = Some(life);
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        *self.inner.shared.mode.lock().expect("lock") = mode;
    }

    /// The status `/healthz` answers from now on.
    pub(crate) fn set_health(&self, status: u16) {
        *self.inner.shared.health.lock().expect("lock") = status;
    }

    /// How long a path ending in `slow` waits before its answer.
    pub(crate) fn set_slow(&self, delay: Duration) {
        *self.inner.shared.slow.lock().expect("lock") = delay;
    }

    /// Lets every held request (path ending in `hold`) be answered, and every `halfway`
    /// answer end; later ones are not held.
    pub(crate) fn release_held(&self) {
        self.inner.shared.released.send_replace(true);
    }

    /// Requests received (their head read), `/healthz` excluded.
    pub(crate) fn received(&self) -> usize {
        self.seen(|s| s.requests.values().sum())
    }

    /// Requests received with this method and path.
    pub(crate) fn received_of(&self, method: &str, path: &str) -> usize {
        self.seen(|s| {
            s.requests
                .get(&(method.to_owned(), path.to_owned()))
                .copied()
                .unwrap_or(0)
        })
    }

    /// Every (method, path) received, with its count.
    pub(crate) fn received_all(&self) -> HashMap<(String, String), usize> {
        self.seen(|s| s.requests.clone())
    }

    /// The lengths of the request bodies read whole, in arrival order.
    pub(crate) fn body_lens(&self) -> Vec<u64> {
        self.seen(|s| s.body_lens.clone())
    }

    /// Health checks answered with `status`.
    pub(crate) fn health_checks(&self, status: u16) -> usize {
        self.seen(|s| s.health.get(&status).copied().unwrap_or(0))
    }

    /// Connections open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.inner.shared.open.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub(crate) fn peak_connections(&self) -> usize {
        self.inner.shared.peak.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start.
    pub(crate) fn connections_accepted(&self) -> usize {
        self.inner.shared.accepted.load(Ordering::SeqCst)
    }

    fn seen<T>(&self, read: impl FnOnce(&Seen) -> T) -> T {
        read(&self.inner.shared.seen.lock().expect("lock"))
    }
}

/// A listener with SO_REUSEADDR, so the same address can be bound again right after a stop.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts until stopped; each connection lives until it ends or the replica stops.
fn serve(listener: TcpListener, shared: Arc<Shared>) -> Life {
    let (stop, stopped) = watch::channel(false);
    let accept = tokio::spawn(async move {
        let mut until_stop = stopped.clone();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = until_stop.wait_for(|s| *s) => return,
            };
            let Ok((stream, _)) = accepted else {
                continue;
            };
            shared.accepted.fetch_add(1, Ordering::SeqCst);
            let open = shared.open.fetch_add(1, Ordering::SeqCst) + 1;
            shared.peak.fetch_max(open, Ordering::SeqCst);
            tokio::spawn(connection(stream, shared.clone(), stopped.clone()));
        }
    });
    Life { stop, accept }
}

/// Counts the connection open until this is dropped.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let _open = OpenGuard(shared.clone());
    // A second handle on the socket: hyper owns the stream, and a reset needs SO_LINGER 0 set
    // before the last handle closes.
    let Ok(handle) = stream.as_fd().try_clone_to_owned() else {
        return;
    };
    let (reset_tx, mut reset_rx) = mpsc::channel::<()>(1);
    let service = {
        let shared = shared.clone();
        service_fn(move |request| respond(request, shared.clone(), reset_tx.clone()))
    };
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        Some(()) = reset_rx.recv() => reset(&handle),
        _ = stopped.wait_for(|s| *s) => {}
    }
    // Here hyper's handle is closed (the select dropped it); dropping ours closes the socket.
    drop(handle);
}

/// With SO_LINGER 0, closing the socket sends RST instead of FIN.
fn reset(handle: &OwnedFd) {
    let _ = socket2::SockRef::from(handle).set_linger(Some(Duration::ZERO));
}

type ReplicaBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn respond(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    reset_tx: mpsc::Sender<()>,
) -> Result<Response<ReplicaBody>, Infallible> {
    let (parts, mut body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    if path == "/healthz" {
        let status = *shared.health.lock().expect("lock");
        *shared
            .seen
            .lock()
            .expect("lock")
            .health
            .entry(status)
            .or_default() += 1;
        return Ok(answer(&shared.name, status, &path, 0));
    }
    let mode = *shared.mode.lock().expect("lock");
    *shared
        .seen
        .lock()
        .expect("lock")
        .requests
        .entry((parts.method.to_string(), path.clone()))
        .or_default() += 1;
    if mode == Mode::Reset {
        let _ = reset_tx.send(()).await;
        return std::future::pending().await;
    }
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => len += frame.data_ref().map_or(0, |d| d.len() as u64),
            // The gateway gave up on the request: nobody reads an answer.
            Err(_) => return std::future::pending().await,
        }
    }
    shared.seen.lock().expect("lock").body_lens.push(len);
    if path.ends_with("hold") {
        let _ = shared.released.subscribe().wait_for(|r| *r).await;
    }
    if path.ends_with("slow") {
        let delay = *shared.slow.lock().expect("lock");
        tokio::time::sleep(delay).await;
    }
    if path.ends_with("halfway") && mode == Mode::Answer {
        return Ok(halfway(&shared));
    }
    match mode {
        Mode::Answer => Ok(answer(&shared.name, 200, &path, len)),
        Mode::Status(status) => Ok(answer(&shared.name, status, &path, len)),
        Mode::Stall | Mode::Reset => std::future::pending().await,
    }
}

fn answer(name: &str, status: u16, path: &str, received: u64) -> Response<ReplicaBody> {
    let json = serde_json::json!({"replica": name, "path": path, "received": received});
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())).boxed());
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        REPLICA_HEADER,
        http::HeaderValue::from_str(name).expect("replica name"),
    );
    response
}

/// 200 with a first chunk now and the last once the replica releases held requests.
fn halfway(shared: &Shared) -> Response<ReplicaBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    let mut released = shared.released.subscribe();
    tokio::spawn(async move {
        if tx
            .send(Ok(Frame::data(Bytes::from("first;"))))
            .await
            .is_err()
        {
            return;
        }
        let _ = released.wait_for(|r| *r).await;
        let _ = tx.send(Ok(Frame::data(Bytes::from("last")))).await;
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(
        REPLICA_HEADER,
        http::HeaderValue::from_str(&shared.name).expect("replica name"),
    );
    response
}
