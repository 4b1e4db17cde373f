//! Upstream connections: HTTP/1.1 over TCP or TLS on hyper's own connection type
//! (`hyper::client::conn::http1`), kept alive and reused per upstream host.
//!
//! Why not hyper-util's pooled client: per request it hashes the pool key with SipHash under a
//! shared lock, formats a `Host` header, rewrites the URI and spawns a task to notice when the
//! connection is free again. Here a connection is taken from its host's idle list (most
//! recently used first), and put back by the response body itself when it reaches its end
//! ([`Lease`]); the `Host` value is built once per host.
//!
//! The idle list holds only connections that are idle both ways: response read to its end and
//! request body sent whole. An upstream may answer before it has read a request's body; its
//! connection is then still sending that body, for as long as the client takes, and joins the
//! list only once it is done (a task waits for that, as hyper-util's does). So a checkout
//! never waits on a connection and never walks past busy ones: it takes the newest idle one,
//! dropping the few that closed or aged out meanwhile, or connects.
//!
//! A pooled connection the upstream has just closed may refuse a request before sending any of
//! it; that request is sent again, once, on a fresh connection.

use super::request_body::LimitedBody;
use crate::routing::Upstream;
use dashmap::DashMap;
use http::uri::Scheme;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Idle upstream connections are kept this long: long enough to ride out gaps between bursts,
/// shorter than the 60s+ idle timeouts common upstream servers use, so we close first.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per upstream host; enough for a busy gateway's concurrency.
const MAX_IDLE_PER_HOST: usize = 1024;

type Sender = SendRequest<LimitedBody>;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("connecting to the upstream failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    #[error("the upstream's host name is not usable for TLS")]
    ServerName,
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// The connections of one trust set (webpki roots, or those plus one `ca:` file), by host.
pub(crate) struct Pool {
    /// By authority, for `http` and for `https` (looked up by the authority's text, so a
    /// request builds no key).
    http: Hosts,
    https: Hosts,
    tls: TlsConnector,
}

type Hosts = DashMap<Box<str>, Arc<Host>, foldhash::fast::RandomState>;

/// One upstream host's idle connections.
pub(crate) struct Host {
    idle: Mutex<VecDeque<Idle>>,
    /// The `Host` header every request to it carries.
    pub header: HeaderValue,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// A connection in use; [`Lease::release`] gives it back once its response is complete.
pub struct Lease {
    sender: Sender,
    host: Arc<Host>,
}

impl Pool {
    pub(crate) fn new(tls: ClientConfig) -> Pool {
        Pool {
            http: DashMap::default(),
            https: DashMap::default(),
            tls: TlsConnector::from(Arc::new(tls)),
        }
    }

    /// The upstream's host, created on first use.
    pub(crate) fn host(&self, upstream: &Upstream) -> Arc<Host> {
        let hosts = match upstream.scheme == Scheme::HTTPS {
            true => &self.https,
            false => &self.http,
        };
        let authority = upstream.authority.as_str();
        if let Some(host) = hosts.get(authority) {
            return host.clone();
        }
        let header =
            HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static("localhost"));
        hosts
            .entry(authority.into())
            .or_insert_with(|| {
                Arc::new(Host {
                    idle: Mutex::new(VecDeque::new()),
                    header,
                })
            })
            .clone()
    }

    /// Sends `request` (origin-form URI, `Host` set) to `upstream` on a pooled connection, or
    /// a new one.
    pub(crate) async fn send(
        &self,
        upstream: &Upstream,
        host: Arc<Host>,
        mut request: Request<LimitedBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        if let Some(mut sender) = host.checkout() {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Lease { sender, host })),
                Err(mut refused) => match refused.take_message() {
                    // Not sent: the connection was closing. Nothing reached the upstream.
                    Some(unsent) => request = unsent,
                    None => return Err(refused.into_error().into()),
                },
            }
        }
        // Boxed: connecting (TCP, TLS, handshake) is rare, and its state is large.
        let mut sender = Box::pin(self.connect(upstream)).await?;
        let response = sender.send_request(request).await?;
        Ok((response, Lease { sender, host }))
    }

    async fn connect(&self, upstream: &Upstream) -> Result<Sender, SendError> {
        let host = upstream.authority.host();
        // `[::1]` in an authority; the socket wants the bare address.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let https = upstream.scheme == Scheme::HTTPS;
        let port = upstream
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        // A refused or black-holed upstream fails fast instead of eating the whole deadline.
        let limit = upstream.timeouts.connect;
        let tcp = tokio::time::timeout(limit, TcpStream::connect((host, port)))
            .await
            .map_err(|_| SendError::ConnectTimeout)?
            .map_err(SendError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return handshake(TokioIo::new(tcp)).await;
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|_| SendError::ServerName)?;
        let tls = tokio::time::timeout(limit, self.tls.connect(name, tcp))
            .await
            .map_err(|_| SendError::ConnectTimeout)?
            .map_err(SendError::Connect)?;
        handshake(TokioIo::new(tls)).await
    }
}

/// HTTP/1.1 on a connected stream; the connection is driven by its own task until it closes.
async fn handshake<I>(io: I) -> Result<Sender, SendError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new().handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

impl Host {
    /// The most recently used idle connection that is still open and fresh. Only connections
    /// that were ready when checked in are listed, so one not ready now is closing: dropped.
    fn checkout(&self) -> Option<Sender> {
        loop {
            let idle = self.lock().pop_back()?;
            if idle.sender.is_ready() && idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(idle.sender);
            }
        }
    }

    fn checkin(&self, sender: Sender) {
        let now = Instant::now();
        let mut idle = self.lock();
        // The oldest are at the front: drop those past their time (closing them).
        while idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE_PER_HOST {
            idle.push_back(Idle { sender, since: now });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        // A panic while holding it leaves a valid list: keep using it.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Lease {
    /// Gives the connection back for the next request: call it once the response is complete.
    ///
    /// Not ready yet means the connection is not idle: its task has not yet taken in the end
    /// of the response (a moment), or it is still sending the request's body because the
    /// upstream answered early (as long as the client takes). It joins the idle list once it
    /// is ready, never before, so no other request is handed a busy connection.
    pub fn release(self) {
        let Lease { mut sender, host } = self;
        if sender.is_ready() {
            host.checkin(sender);
            return;
        }
        if sender.is_closed() {
            return;
        }
        // Outside a runtime (never on the request path) the connection is simply dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // An error: the connection closed, and is dropped with the sender.
                if sender.ready().await.is_ok() {
                    host.checkin(sender);
                }
            });
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}
