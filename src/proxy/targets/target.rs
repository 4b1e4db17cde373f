//! One target address of an upstream: where to connect, its connections, its load and whether
//! it is in rotation. Kept across reloads while the config still names it (see
//! [`super::UpstreamSet::prepare`]).

use super::state::TargetState;
use crate::metrics::TargetMetrics;
use crate::proxy::pool::Connections;
use crate::tls::TrustedCa;
use http::HeaderValue;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// How to reach a target: TLS (and the name it must prove) or plain TCP, and the `Host` header.
pub(crate) struct Endpoint {
    pub(crate) tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Extra trust for TLS (`ca:`); a target is reused across reloads only with the same.
    pub(crate) trust: Option<Arc<TrustedCa>>,
    pub(crate) host_header: HeaderValue,
}

opaque_debug!(Endpoint);

#[derive(Debug)]
pub(crate) struct Target {
    /// The `url` as configured (`scheme://authority`): its label; addresses of one hostname
    /// share it.
    pub(crate) label: Arc<str>,
    pub(crate) address: SocketAddr,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) connections: Connections,
    pub(crate) state: TargetState,
    in_flight: AtomicU64,
    pub(crate) metrics: TargetMetrics,
}

impl Target {
    pub(crate) fn new(
        label: Arc<str>,
        address: SocketAddr,
        endpoint: Arc<Endpoint>,
        max_connections: usize,
        metrics: TargetMetrics,
    ) -> Target {
        Target {
            label,
            address,
            endpoint,
            connections: Connections::new(max_connections),
            state: TargetState::default(),
            in_flight: AtomicU64::new(0),
            metrics,
        }
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn start_request(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub(crate) fn end_request(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// Whether a reload may keep this target (and its connections) for `label` at `address`.
    pub(crate) fn reusable(
        &self,
        label: &str,
        address: SocketAddr,
        trust: Option<&Arc<TrustedCa>>,
        max_connections: usize,
    ) -> bool {
        let same_trust = match (&self.endpoint.trust, trust) {
            (None, None) => true,
            (Some(a), Some(b)) => a.certs == b.certs,
            _ => false,
        };
        *self.label == *label
            && self.address == address
            && same_trust
            && self.connections.max() == max_connections
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Gone (DNS or a reload removed it) while out of rotation: its label's gauge no longer
        // waits for it.
        if !self.state.in_rotation() {
            self.metrics.rotation(false);
        }
    }
}
