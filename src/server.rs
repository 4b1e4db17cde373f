//! Accepting connections: HTTP/1.1 and HTTP/2 (hyper-util's auto builder), optionally over TLS,
//! a bound on open connections, header-read timeouts, and graceful draining on shutdown.
//!
//! Generic over the handler, so the proxy, admin and metrics listeners share it. The accept loop
//! only accepts: the TLS handshake runs in the connection's own task, so a slow or silent client
//! cannot hold up anyone else's accept.

use crate::tls::TlsAcceptorSource;
use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::service::{service_fn, Service};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// How a listener treats its connections.
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// How long in-flight requests may run after shutdown begins.
    pub grace: Duration,
}

/// HTTP/2 streams per connection: enough for any real client, bounded against floods.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// A failed accept (e.g. out of file descriptors) is retried after this pause, not in a hot loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `listener` in plain HTTP until `shutdown` turns true, then drains for up to
/// `settings.grace`.
pub async fn serve<F, Fut, B>(
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
/// late handshake is logged at debug and the connection dropped).
pub async fn serve_with_tls<F, Fut, B>(
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let mut at_capacity = false;

    loop {
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
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(request, peer).await) }
        });
        // Taken now, so a connection accepted before a shutdown is told about it.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        // The config current at accept time; a later `replace` affects later connections only.
        let acceptor = tls.as_ref().map(|source| source.acceptor());
        let handshake_timeout = settings.header_read_timeout;
        tokio::spawn(async move {
            match acceptor {
                None => {
                    run_connection(&builder, TokioIo::new(stream), service, watcher, peer).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            run_connection(&builder, TokioIo::new(stream), service, watcher, peer)
                                .await
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
    }
    drop(listener);
    if tokio::time::timeout(settings.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; remaining connections are closed");
    }
}

/// Serves one connection (plain or TLS) to its end, draining gracefully on shutdown.
async fn run_connection<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
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
    let connection = builder.serve_connection(io, service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
