//! The metrics listener: `/healthz` (the process serves) and `/readyz` (config loaded and the
//! store answers). Never on the proxy's port, so probes and scrapes cannot be spoofed by clients.

use crate::store::KeyStore;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use std::sync::Arc;
use std::time::Duration;

/// A readiness probe must answer quickly even when the store hangs.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// State behind the metrics listener.
pub struct MetricsEndpoint {
    pub store: Arc<dyn KeyStore>,
}

impl MetricsEndpoint {
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>> {
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match tokio::time::timeout(READY_TIMEOUT, self.store.ping()).await {
                Ok(Ok(())) => text(StatusCode::OK, "ready\n"),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "not ready");
                    text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
                }
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "store timed out\n"),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
