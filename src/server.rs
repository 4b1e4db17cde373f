//! Accepting connections: HTTP/1.1 and HTTP/2 (hyper-util's auto builder), optionally over TLS,
//! a bound on open connections, header-read timeouts, and graceful draining on shutdown.
//!
//! Generic over the handler, so the proxy, admin and metrics listeners share it. The accept loop
//! only accepts: the TLS handshake runs in the connection's own task, so a slow or silent client
//! cannot hold up anyone else's accept. Each connection's watchdog closes it once it has been
//! idle too long, once its client has accepted none of the bytes waiting for it for
//! `send_timeout` (a client that stopped reading; see [`socket`] for how stalls are seen), or
//! once it has gone `header_read_timeout` without its first request head (a silent client,
//! or one stuck in the h2c preface, which no HTTP builder times).

mod socket;
pub(crate) mod workers;

use self::socket::ClientSocket;
use crate::tls::TlsAcceptorSource;
use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::{service_fn, Service};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};

/// How a listener treats its connections.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSettings {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A connection whose client accepts none of the bytes waiting for it for this long is
    /// closed, dropping the responses in flight (and the upstream calls feeding them).
    pub send_timeout: Duration,
    /// Largest header block accepted (HTTP/2 header list size; HTTP/1 is checked per request).
    pub max_header_bytes: usize,
    /// How long in-flight requests may run after shutdown begins.
    pub grace: Duration,
    /// Connection slots shared by the listeners of one address (the proxy's workers), so
    /// `max_connections` bounds them all; `None`: the listener has its own.
    pub slots: Option<Arc<Semaphore>>,
    /// Counts the connections this listener accepted (a worker's share).
    pub accepted: Option<metrics::Counter>,
}

/// HTTP/2 streams per connection: enough for any real client, bounded against floods.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams a client may open and reset before the server sees them (CVE-2023-44487, "rapid
/// reset"): past it the connection is closed with GOAWAY.
const MAX_PENDING_RESET_STREAMS: usize = 20;
/// Streams the server may reset for protocol errors before giving up on the connection.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Rapid reset after acceptance: a connection on which at least this many requests were
/// abandoned by the client before their response, and at least half of all its requests, is
/// closed. Each abandoned request may already have cost an upstream call; a real client rarely
/// cancels more than it completes.
const ABANDONED_BUDGET: u64 = 100;
/// A failed accept (e.g. out of file descriptors) is retried after this pause, not in a hot loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `listener` in plain HTTP until `shutdown` turns true, then drains for up to
/// `settings.grace`.
pub(crate) async fn serve<F, Fut, B>(
    listener: TcpListener,
    settings: ConnectionSettings,
    handler: F,
    shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with_tls(listener, settings, None, handler, shutdown).await;
}

/// Like [`serve`]; with `tls`, every connection first completes a TLS handshake with the
/// source's config current at accept time, within `settings.header_read_timeout` (a failed or
/// late handshake is logged at debug and the connection dropped); then, as on plain
/// connections, its first request head is due within `settings.header_read_timeout`.
pub(crate) async fn serve_with_tls<F, Fut, B>(
    listener: TcpListener,
    settings: ConnectionSettings,
    tls: Option<Arc<TlsAcceptorSource>>,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let protocols = Arc::new(Protocols::new(&settings));
    let graceful = GracefulShutdown::new();
    let permits = settings
        .slots
        .clone()
        .unwrap_or_else(|| Arc::new(Semaphore::new(settings.max_connections)));
    let mut at_capacity = false;

    loop {
        // Accepted first, then given a slot: with several workers' listeners on one address, a
        // worker holding a slot while it waits to accept could serve a later connection while
        // an earlier one waits in another worker's queue. This way slots go in the order
        // connections were accepted (the semaphore is fair), and past the bound each listener
        // holds at most one accepted connection waiting for a slot.
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        if permits.available_permits() == 0 && !at_capacity {
            tracing::warn!(
                limit = settings.max_connections,
                "connection limit reached; new connections wait"
            );
        }
        at_capacity = permits.available_permits() == 0;
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        if let Some(accepted) = &settings.accepted {
            accepted.increment(1);
        }
        let handler = handler.clone();
        let activity = Arc::new(Activity::new());
        let tracked = activity.clone();
        let service = service_fn(move |request| {
            let handler = handler.clone();
            let mut busy = tracked.begin();
            async move {
                let response = handler(request, peer).await;
                busy.answered = true;
                busy.activity.note_close(&response);
                Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _busy: busy }))
            }
        });
        // Below TLS, so a stall is seen on the bytes that actually leave.
        let stream = ClientSocket::new(stream, activity.clone());
        // Taken now, so a connection accepted before a shutdown is told about it.
        let watcher = graceful.watcher();
        let protocols = protocols.clone();
        // The config current at accept time; a later `replace` affects later connections only.
        let acceptor = tls.as_ref().map(|source| source.acceptor());
        let handshake_timeout = settings.header_read_timeout;
        // Its own task, so the connection's wake-ups (several per request) never poll it.
        let watchdog = tokio::spawn(guard(
            activity.clone(),
            Limits {
                idle: settings.idle_timeout,
                send: settings.send_timeout,
                head: settings.header_read_timeout,
            },
            peer,
        ));
        let phase = activity.clone();
        let connection = tokio::spawn(async move {
            // The watchdog ends with the connection, however the connection ends.
            let _watchdog = AbortOnDrop(watchdog.abort_handle());
            match acceptor {
                None => {
                    let protocol = match stream.opens_with_h2_preface().await {
                        Some(true) => {
                            phase.no_head_due();
                            Protocol::Http2
                        }
                        Some(false) => Protocol::Http1,
                        None => Protocol::Detect,
                    };
                    let io = TokioIo::new(stream);
                    run_connection(&protocols, protocol, io, service, watcher, peer).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let protocol = match stream.get_ref().1.alpn_protocol() {
                                Some(b"h2") => Protocol::Http2,
                                Some(b"http/1.1") => Protocol::Http1,
                                _ => Protocol::Detect,
                            };
                            // The head gets its own `header_read_timeout`, as over plain TCP.
                            match protocol {
                                Protocol::Http2 => phase.no_head_due(),
                                _ => phase.head_due_from_now(),
                            }
                            let io = TokioIo::new(stream);
                            run_connection(&protocols, protocol, io, service, watcher, peer).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
        let _ = activity.connection.set(connection.abort_handle());
    }
    drop(listener);
    if tokio::time::timeout(settings.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; remaining connections are closed");
    }
}

/// The HTTP versions a listener speaks, each set up once. A connection is served by the one
/// it asks for (the h2c preface, or TLS ALPN), so it pays for no protocol detection on every
/// read; `auto` detects it for a TLS client that named none, or a preface still arriving.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
}

/// Which of [`Protocols`] serves a connection.
#[derive(Clone, Copy, Debug)]
enum Protocol {
    Http1,
    Http2,
    Detect,
}

impl Protocols {
    fn new(settings: &ConnectionSettings) -> Protocols {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        configure_http2(&mut http2, settings);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout);
        let header_list = u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX);
        auto.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_pending_accept_reset_streams(Some(MAX_PENDING_RESET_STREAMS))
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .max_header_list_size(header_list);
        Protocols { http1, http2, auto }
    }
}

/// Bounded against floods (see the constants).
fn configure_http2(http2: &mut http2::Builder<TokioExecutor>, settings: &ConnectionSettings) {
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(Some(MAX_PENDING_RESET_STREAMS))
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
}

/// Serves one connection (plain or TLS) to its end, draining gracefully on shutdown. (Its
/// watchdog, [`guard`], aborts it when it must be cut.)
async fn run_connection<I, S, B>(
    protocols: &Protocols,
    protocol: Protocol,
    io: I,
    service: S,
    watcher: Watcher,
    peer: SocketAddr,
) where
    I: Read + Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let ended: Result<(), BoxError> = match protocol {
        Protocol::Http1 => {
            let connection = protocols.http1.serve_connection(io, service);
            watcher.watch(connection).await.map_err(Into::into)
        }
        Protocol::Http2 => {
            let connection = protocols.http2.serve_connection(io, service);
            watcher.watch(connection).await.map_err(Into::into)
        }
        Protocol::Detect => {
            let connection = protocols.auto.serve_connection(io, service);
            watcher.watch(connection.into_owned()).await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection's time limits, as its watchdog applies them.
#[derive(Clone, Copy, Debug)]
struct Limits {
    idle: Duration,
    send: Duration,
    /// For the first request head (HTTP/1 builders time later ones themselves).
    head: Duration,
}

/// A connection's watchdog: closes it (by aborting its task, which drops the requests in
/// flight and their upstream calls) once it is idle or stalled too long, its first request
/// head is late, or its client abandons most of its requests.
async fn guard(activity: Arc<Activity>, limits: Limits, peer: SocketAddr) {
    let cut = tokio::select! {
        cut = watchdog(activity.clone(), limits) => cut,
        _ = activity.flood.notified() => Cut::Flood,
    };
    match cut {
        Cut::Idle => tracing::debug!(%peer, "idle connection closed"),
        Cut::LateHead => tracing::debug!(
            %peer,
            "connection closed: no request head within header_read_timeout"
        ),
        Cut::Stalled => tracing::debug!(
            %peer,
            "connection closed: its client accepts no data (send_timeout)"
        ),
        Cut::Flood => tracing::warn!(
            %peer,
            abandoned = activity.abandoned.load(Ordering::Relaxed),
            "connection closed: its client abandons most of its requests (rapid reset)"
        ),
    }
    if let Some(connection) = activity.connection.get() {
        connection.abort();
    }
}

/// `Activity::write_stalled_since` when writes are not stalled.
const NOT_STALLED: u64 = u64::MAX;
/// `Activity::head_due_since` for a connection whose first request head has no deadline.
const NO_HEAD_DUE: u64 = u64::MAX;

/// Requests in flight on one connection, since when it has had none, since when its client has
/// accepted none of the bytes written to it, and how many of its requests the client abandoned.
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `epoch` when the last request in flight finished.
    idle_since: AtomicU64,
    /// Milliseconds after `epoch` when a write to the socket first found it full, until a
    /// write gets through; [`NOT_STALLED`] otherwise.
    write_stalled_since: AtomicU64,
    /// Milliseconds after `epoch` since when the first request head is awaited (accept, or the
    /// end of the TLS handshake); [`NO_HEAD_DUE`] for HTTP/2 known from its whole preface or
    /// ALPN, whose connection without a stream is idle, not late.
    head_due_since: AtomicU64,
    started: AtomicU64,
    abandoned: AtomicU64,
    /// Notified once the abandoned requests exceed the connection's budget.
    flood: Notify,
    /// The connection's task, for its watchdog to abort.
    connection: OnceLock<tokio::task::AbortHandle>,
    /// An error answer said `Connection: close`: the gateway refused a request whose body it
    /// did not read, so the client may still be sending it (its next bytes may not have
    /// arrived yet when the connection closes).
    client_may_send: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            write_stalled_since: AtomicU64::new(NOT_STALLED),
            head_due_since: AtomicU64::new(0),
            started: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            flood: Notify::new(),
            client_may_send: AtomicBool::new(false),
            connection: OnceLock::new(),
        }
    }

    /// Notes an error answer that closes the connection (two loads for any other answer).
    fn note_close<B>(&self, response: &Response<B>) {
        if response.status().as_u16() >= 400
            && response.headers().contains_key(http::header::CONNECTION)
        {
            self.client_may_send.store(true, Ordering::Relaxed);
        }
    }

    /// See [`Activity::client_may_send`].
    fn client_may_send(&self) -> bool {
        self.client_may_send.load(Ordering::Relaxed)
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::Relaxed);
        Busy {
            activity: self.clone(),
            answered: false,
        }
    }

    /// A request dropped before its response: an HTTP/2 stream reset by the client, or an
    /// HTTP/1 client gone mid-request.
    fn abandon(&self) {
        let abandoned = self.abandoned.fetch_add(1, Ordering::Relaxed) + 1;
        let started = self.started.load(Ordering::Relaxed);
        if abandoned >= ABANDONED_BUDGET && abandoned.saturating_mul(2) >= started {
            // `notify_one` keeps a permit, so the connection task sees it whenever it looks.
            self.flood.notify_one();
        }
    }

    /// The first request head is due `header_read_timeout` from now (a TLS handshake ended).
    fn head_due_from_now(&self) {
        let now = self.now_millis().min(NO_HEAD_DUE - 1);
        self.head_due_since.store(now, Ordering::Relaxed);
    }

    /// The connection is HTTP/2 past its preface: no head deadline, only `idle_timeout`.
    fn no_head_due(&self) {
        self.head_due_since.store(NO_HEAD_DUE, Ordering::Relaxed);
    }

    /// A write found the socket full. Reads the clock only when a stall begins.
    fn write_blocked(&self) {
        if self.write_stalled_since.load(Ordering::Relaxed) == NOT_STALLED {
            let now = self.now_millis().min(NOT_STALLED - 1);
            self.write_stalled_since.store(now, Ordering::Relaxed);
        }
    }

    /// A write got through: the client is reading. One load when nothing was stalled.
    fn write_progressed(&self) {
        if self.write_stalled_since.load(Ordering::Relaxed) != NOT_STALLED {
            self.write_stalled_since
                .store(NOT_STALLED, Ordering::Relaxed);
        }
    }

    /// Whether the last write found the socket full and none has got through since.
    fn write_stalled(&self) -> bool {
        self.write_stalled_since.load(Ordering::Relaxed) != NOT_STALLED
    }

    fn now_millis(&self) -> u64 {
        millis(self.epoch.elapsed())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A request in flight, until its response body is done (or dropped).
struct Busy {
    activity: Arc<Activity>,
    /// Set once the handler produced a response.
    answered: bool,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.activity;
        if !self.answered {
            activity.abandon();
        }
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity
                .idle_since
                .store(activity.now_millis(), Ordering::Release);
        }
    }
}

/// Why a connection's watchdog closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Nothing in flight for `idle_timeout`.
    Idle,
    /// No first request head within `header_read_timeout`.
    LateHead,
    /// Bytes waiting for the client, and none accepted for `send_timeout`.
    Stalled,
    /// The client abandoned most of its requests (rapid reset).
    Flood,
}

/// Resolves once the connection has had nothing in flight for `idle`, its writes have been
/// stalled for `send`, or it has gone `head` without its first request. Busy, it looks again
/// every quarter of the shorter limit, so a stall is cut within 1.25 × `send` (the socket
/// tells nobody when a stall begins; a timer armed per write would cost every request).
async fn watchdog(activity: Arc<Activity>, limits: Limits) -> Cut {
    let (idle_ms, send_ms, head_ms) = (
        millis(limits.idle),
        millis(limits.send),
        millis(limits.head),
    );
    let look_again = (idle_ms.min(send_ms) / 4).max(1);
    loop {
        let now = activity.now_millis();
        // Only until the first request begins: hyper times each later HTTP/1 head itself.
        let head_left = match activity.head_due_since.load(Ordering::Relaxed) {
            NO_HEAD_DUE => None,
            _ if activity.started.load(Ordering::Relaxed) > 0 => None,
            since => Some(since.saturating_add(head_ms).saturating_sub(now)),
        };
        if head_left == Some(0) {
            return Cut::LateHead;
        }
        let stalled_since = activity.write_stalled_since.load(Ordering::Relaxed);
        let stall_left = match stalled_since {
            NOT_STALLED => None,
            since => Some(since.saturating_add(send_ms).saturating_sub(now)),
        };
        if stall_left == Some(0) {
            return Cut::Stalled;
        }
        let idle_since = activity.idle_since.load(Ordering::Acquire);
        let idle_left = idle_since.saturating_add(idle_ms).saturating_sub(now);
        let busy = activity.in_flight.load(Ordering::Acquire) > 0;
        if idle_left == 0 && !busy {
            return Cut::Idle;
        }
        // Idle: wake exactly when the limit is reached. Busy: look again in a while.
        let next = if busy { look_again } else { idle_left };
        let next = stall_left.map_or(next, |left| next.min(left));
        let next = head_left.map_or(next, |left| next.min(left));
        tokio::time::sleep(Duration::from_millis(next)).await;
    }
}

pin_project_lite::pin_project! {
    /// A response body that marks its request finished when it is done or dropped.
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        _busy: Busy,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
