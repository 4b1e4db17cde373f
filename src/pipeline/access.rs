//! The access log (`log.access`) and the 5xx log: one line per proxied request, and one warning
//! per 5xx that says which route and upstream it was about and why.
//!
//! Lines are written from the pipeline's outer handler, after the response's headers are known.
//! Everything is borrowed from the request's own state: with the access log off, a request
//! pays one branch here and nothing else (no string is built, no allocation is made).
//! The key's secret never reaches this module: only the key id, which the pipeline learns
//! once the key checked out.

use crate::routing::{Route, Upstream};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The `target` of access lines, so they can be filtered (`RUST_LOG=scopegate::access=off`).
pub const TARGET: &str = "scopegate::access";

/// What one finished request leaves in the access log.
pub struct Entry<'a> {
    pub method: &'a http::Method,
    /// The matched route, `None` when no route matched.
    pub route: Option<&'a Route>,
    /// The request's path, without its query string (which may carry data the log must not).
    pub path: &'a str,
    pub status: u16,
    pub app: Option<&'a str>,
    pub key: Option<&'a str>,
    pub client: SocketAddr,
    /// The upstream's own status, when it answered.
    pub upstream_status: Option<u16>,
    pub elapsed: Duration,
    /// The response body's length when known at the headers (a streamed answer has none).
    pub bytes: Option<u64>,
}

opaque_debug!(Entry<'_>);

/// Writes the access line of one request.
pub fn write(entry: &Entry<'_>) {
    let route = entry
        .route
        .map_or(crate::metrics::UNMATCHED, |r| &r.pattern);
    let upstream = entry.route.map(|r| &*r.spec.upstream.name);
    tracing::info!(
        target: TARGET,
        method = %entry.method,
        route,
        path = entry.path,
        status = entry.status,
        app = entry.app,
        key = entry.key,
        client = %entry.client,
        upstream,
        upstream_status = entry.upstream_status,
        duration_ms = entry.elapsed.as_secs_f64() * 1000.0,
        bytes = entry.bytes,
        "access"
    );
}

/// Says why a request ended in a 5xx: the route, the upstream's URL and the cause.
pub fn server_error(route: Option<&Route>, status: u16, cause: &dyn fmt::Display) {
    let pattern = route.map_or(crate::metrics::UNMATCHED, |r| &r.pattern);
    let upstream = route.map(|r| UpstreamUrl(&r.spec.upstream));
    tracing::warn!(
        route = pattern,
        upstream = upstream.as_ref().map(tracing::field::display),
        status,
        cause = %cause,
        "request failed with a server error"
    );
}

/// `scheme://authority/prefix` of an upstream, formatted only when a line is written.
struct UpstreamUrl<'a>(&'a Upstream);

impl fmt::Display for UpstreamUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = self.0;
        let mut targets = u.targets.iter();
        if let Some(first) = targets.next() {
            write!(f, "{}{}", first.url, u.path_prefix)?;
        }
        for t in targets {
            write!(f, ",{}{}", t.url, u.path_prefix)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_url_keeps_the_path_prefix() {
        let upstream = Upstream::single(
            "tools",
            "http://10.0.0.5:7001/internal",
            crate::routing::Timeouts::whole(Duration::from_secs(1)),
        );
        assert_eq!(
            UpstreamUrl(&upstream).to_string(),
            "http://10.0.0.5:7001/internal"
        );
    }
}
