//! Upstream connections of one target: HTTP/1.1 over TCP or TLS on hyper's own connection type
//! (`hyper::client::conn::http1`), kept alive and reused, at most `max_connections` open.
//!
//! Why not hyper-util's pooled client: per request it hashes the pool key with SipHash under a
//! shared lock, formats a `Host` header, rewrites the URI and spawns a task to notice when the
//! connection is free again. Here a connection is taken from its target's idle list (most
//! recently used first), and put back by the response body itself when it reaches its end
//! ([`Lease`]); the `Host` value is built once per target.
//!
//! The idle list holds only connections that are idle both ways: response read to its end and
//! request body sent whole. An upstream may answer before it has read a request's body; its
//! connection is then still sending that body, for as long as the client takes, and joins the
//! list only once it is done (a task waits for that, as hyper-util's does). So a checkout
//! never waits on a busy connection: it takes the newest idle one, dropping the few that closed
//! or aged out meanwhile, or connects.
//!
//! Idle connections are listed per proxy worker: a connection is driven by a task on the
//! worker (runtime, thread) that opened it, so a request served on that worker uses it without
//! waking another thread, twice per exchange. A worker with none idle takes another worker's
//! before it opens one (the bound is the target's, not the worker's).
//!
//! Every open connection holds one of the target's `max_connections` slots until it closes
//! (its driving task owns the permit), so HTTP/2 clients multiplexing many streams cannot open
//! connections without bound: past the bound a request waits for an idle connection or a free
//! slot, within the caller's deadline.

use super::request_body::LimitedBody;
use super::targets::Target;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Idle upstream connections are kept this long: long enough to ride out gaps between bursts,
/// shorter than the 60s+ idle timeouts common upstream servers use, so we close first.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

pub(crate) type Sender = SendRequest<LimitedBody>;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("connecting to the upstream failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// The outcome of one attempt that got no response.
pub(crate) enum Failed {
    /// Nothing reached the upstream; the request is handed back for another target.
    NotSent(SendError, Box<Request<LimitedBody>>),
    /// The request was (maybe partly) sent, then the connection failed.
    Sent(hyper::Error),
}

/// Idle lists per target: worker `i` keeps its connections in list `i % HOMES`.
const HOMES: usize = 16;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as proxy worker `index`: connections opened on it are listed for
/// it, and it looks in its own list first.
pub(crate) fn set_worker(index: usize) {
    WORKER.set(index % HOMES);
}

fn home() -> usize {
    WORKER.get()
}

/// One target's open connections.
#[derive(Debug)]
pub(crate) struct Connections {
    idle: [Mutex<VecDeque<Idle>>; HOMES],
    /// Connections in all the idle lists, so a worker with none skips the others' when they
    /// are empty too.
    idle_count: AtomicUsize,
    slots: Arc<Semaphore>,
    max: usize,
    /// Requests waiting for a connection; checkins wake one only when there are some.
    waiting: AtomicUsize,
    returned: Notify,
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

/// A connection in use; [`Lease::release`] gives it back once its response is complete. It
/// also counts its request as in flight on the target until dropped.
pub struct Lease {
    sender: Option<Sender>,
    /// The idle list the connection belongs to (its worker's).
    home: usize,
    target: Arc<Target>,
}

impl Connections {
    pub(crate) fn new(max: usize) -> Connections {
        Connections {
            idle: std::array::from_fn(|_| Mutex::new(VecDeque::new())),
            idle_count: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(max)),
            max,
            waiting: AtomicUsize::new(0),
            returned: Notify::new(),
        }
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Connections open now (idle or busy).
    pub(crate) fn open(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    /// The most recently used idle connection that is still open and fresh, this worker's
    /// first, and its list. Only connections that were ready when checked in are listed, so
    /// one not ready now is closing: dropped.
    fn checkout(&self) -> Option<(Sender, usize)> {
        let own = home();
        if let Some(sender) = self.checkout_from(own) {
            return Some((sender, own));
        }
        if self.idle_count.load(Relaxed) == 0 {
            return None;
        }
        (0..HOMES)
            .filter(|h| *h != own)
            .find_map(|h| self.checkout_from(h).map(|sender| (sender, h)))
    }

    fn checkout_from(&self, home: usize) -> Option<Sender> {
        let mut idle = self.lock(home);
        while let Some(found) = idle.pop_back() {
            self.idle_count.fetch_sub(1, Relaxed);
            if found.sender.is_ready() && found.since.elapsed() < IDLE_TIMEOUT {
                return Some(found.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: Sender, home: usize) {
        let now = Instant::now();
        {
            let mut idle = self.lock(home);
            // The oldest are at the front: drop those past their time (closing them).
            while idle
                .front()
                .is_some_and(|i| now.duration_since(i.since) >= IDLE_TIMEOUT)
            {
                idle.pop_front();
                self.idle_count.fetch_sub(1, Relaxed);
            }
            idle.push_back(Idle { sender, since: now });
            self.idle_count.fetch_add(1, Relaxed);
        }
        if self.waiting.load(Relaxed) != 0 {
            self.returned.notify_one();
        }
    }

    fn lock(&self, home: usize) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        // A panic while holding it leaves a valid list: keep using it.
        self.idle[home].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection, or a slot to open one; waits (for the caller's deadline) while
    /// every slot is taken.
    async fn idle_or_slot(&self) -> Result<(Sender, usize), OwnedSemaphorePermit> {
        if let Some(found) = self.checkout() {
            return Ok(found);
        }
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Err(permit);
        }
        self.waiting.fetch_add(1, Relaxed);
        let _waiting = Waiting(&self.waiting);
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(found) = self.checkout() {
                return Ok(found);
            }
            tokio::select! {
                permit = self.slots.clone().acquire_owned() => {
                    // The semaphore is never closed.
                    if let Ok(permit) = permit {
                        return Err(permit);
                    }
                }
                () = &mut returned => {}
            }
        }
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Sends `request` (origin-form URI, `Host` set) to `target` on a pooled connection, or a new
/// one. The target counts it in flight until the returned [`Lease`] is dropped.
pub(crate) async fn send(
    target: &Arc<Target>,
    connect_timeout: Duration,
    mut request: Request<LimitedBody>,
) -> Result<(Response<Incoming>, Lease), Failed> {
    let lease = Lease::new(target.clone());
    loop {
        let (mut sender, home, fresh) = match target.connections.idle_or_slot().await {
            Ok((sender, home)) => (sender, home, false),
            // Boxed: connecting (TCP, TLS, handshake) is rare, and its state is large. Its
            // task runs on this worker, whose list it then belongs to.
            Err(slot) => match Box::pin(connect(target, connect_timeout, Some(slot))).await {
                Ok(sender) => (sender, self::home(), true),
                Err(e) => return Err(Failed::NotSent(e, Box::new(request))),
            },
        };
        match sender.try_send_request(request).await {
            Ok(response) => return Ok((response, lease.with(sender, home))),
            Err(mut refused) => match refused.take_message() {
                // Not sent: a pooled connection was closing. Nothing reached the upstream:
                // try another connection. A fresh one that closes at once is the target's
                // failure (the request is still unsent).
                Some(unsent) if fresh => {
                    return Err(Failed::NotSent(
                        refused.into_error().into(),
                        Box::new(unsent),
                    ))
                }
                Some(unsent) => request = unsent,
                None => return Err(Failed::Sent(refused.into_error())),
            },
        }
    }
}

/// A connection of its own to `target`, outside the pool and its bound (health checks).
pub(crate) async fn dial(target: &Target, limit: Duration) -> Result<Sender, SendError> {
    connect(target, limit, None).await
}

async fn connect(
    target: &Target,
    limit: Duration,
    slot: Option<OwnedSemaphorePermit>,
) -> Result<Sender, SendError> {
    // A refused or black-holed upstream fails fast instead of eating the whole deadline.
    let tcp = tokio::time::timeout(limit, TcpStream::connect(target.address))
        .await
        .map_err(|_| SendError::ConnectTimeout)?
        .map_err(SendError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let Some((tls, name)) = &target.endpoint.tls else {
        return handshake(TokioIo::new(tcp), slot).await;
    };
    let tls = tokio::time::timeout(limit, tls.connect(name.clone(), tcp))
        .await
        .map_err(|_| SendError::ConnectTimeout)?
        .map_err(SendError::Connect)?;
    handshake(TokioIo::new(tls), slot).await
}

/// HTTP/1.1 on a connected stream; the connection is driven by its own task until it closes,
/// holding its slot until then.
async fn handshake<I>(io: I, slot: Option<OwnedSemaphorePermit>) -> Result<Sender, SendError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new().handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
        drop(slot);
    });
    Ok(sender)
}

impl Lease {
    fn new(target: Arc<Target>) -> Lease {
        target.start_request();
        Lease {
            sender: None,
            home: 0,
            target,
        }
    }

    fn with(mut self, sender: Sender, home: usize) -> Lease {
        self.sender = Some(sender);
        self.home = home;
        self
    }

    /// Gives the connection back for the next request: call it once the response is complete.
    ///
    /// Not ready yet means the connection is not idle: its task has not yet taken in the end
    /// of the response (a moment), or it is still sending the request's body because the
    /// upstream answered early (as long as the client takes). It joins the idle list once it
    /// is ready, never before, so no other request is handed a busy connection.
    pub fn release(mut self) {
        let Some(mut sender) = self.sender.take() else {
            return;
        };
        let home = self.home;
        if sender.is_ready() {
            self.target.connections.checkin(sender, home);
            return;
        }
        if sender.is_closed() {
            return;
        }
        // Outside a runtime (never on the request path) the connection is simply dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let target = self.target.clone();
            runtime.spawn(async move {
                // An error: the connection closed, and is dropped with the sender.
                if sender.ready().await.is_ok() {
                    target.connections.checkin(sender, home);
                }
            });
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.target.end_request();
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real HTTP/1 connection's sender, and the server's end of it (kept open).
    async fn sender(listener: &tokio::net::TcpListener) -> (Sender, TcpStream) {
        let addr = listener.local_addr().expect("addr");
        let (tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut sender = handshake(TokioIo::new(tcp.expect("connect")), None)
            .await
            .expect("handshake");
        // Idle only once its connection's task has said it wants a request.
        sender.ready().await.expect("ready");
        (sender, accepted.expect("accept").0)
    }

    #[tokio::test]
    async fn a_worker_takes_its_own_idle_connection_first_then_another_workers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let connections = Connections::new(4);
        let ((a, _a), (b, _b)) = (sender(&listener).await, sender(&listener).await);
        // Worker 2's goes in first: a single most-recent-first list would hand out worker 1's.
        connections.checkin(b, 2);
        connections.checkin(a, 1);

        set_worker(2);
        let (_, home) = connections.checkout().expect("its own");
        assert_eq!(home, 2);
        set_worker(0);
        let (taken, home) = connections.checkout().expect("another worker's");
        assert_eq!(home, 1);
        assert!(connections.checkout().is_none());
        assert_eq!(connections.idle_count.load(Relaxed), 0);
        // Given back, it goes home to its worker's list.
        connections.checkin(taken, home);
        set_worker(1);
        assert_eq!(connections.checkout().map(|(_, h)| h), Some(1));
    }
}
