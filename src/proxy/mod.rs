//! Forwarding an authorised request to its upstream over a pooled client, and streaming the
//! answer back. Owns the upstream connection pool; knows nothing of keys or scopes.

pub mod body;
pub mod headers;

use self::body::{is_body_limit, GatewayBody, LimitedBody};
use self::headers::Forwarded;
use crate::error::ProxyError;
use crate::routing::Upstream;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;
use tokio::time::Instant;

/// Idle upstream connections are kept this long: long enough to ride out gaps between bursts,
/// shorter than the 60s+ idle timeouts common upstream servers use, so we close first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per upstream; enough for a busy gateway's concurrency.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;
/// A refused or black-holed upstream fails fast instead of eating the whole deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pooled HTTP client toward every upstream.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, LimitedBody>,
}

/// What is sent upstream besides the request itself.
pub struct Outgoing<'a> {
    pub upstream: &'a Upstream,
    /// The normalised path that was matched and authorised.
    pub path: &'a str,
    pub max_body: u64,
    pub strip_bearer: bool,
    pub forwarded: Forwarded<'a>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new()
    }
}

impl Forwarder {
    pub fn new() -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Forwarder { client }
    }

    /// Sends the request upstream and returns its (streaming) response.
    pub async fn forward(
        &self,
        request: Request<Incoming>,
        out: Outgoing<'_>,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        let (mut parts, body) = request.into_parts();
        if declared_length(&parts.headers).is_some_and(|len| len > out.max_body) {
            return Err(ProxyError::BodyTooLarge {
                limit: out.max_body,
            });
        }
        parts.uri = upstream_uri(out.upstream, out.path, parts.uri.query())?;
        parts.version = http::Version::HTTP_11;
        headers::prepare_request(&mut parts.headers, out.strip_bearer, &out.forwarded);
        let request = Request::from_parts(parts, LimitedBody::new(body, out.max_body));

        let deadline = Instant::now() + out.upstream.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(e)) if is_body_limit(&e) => {
                return Err(ProxyError::BodyTooLarge {
                    limit: out.max_body,
                })
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %out.upstream.name, error = %e, "upstream request failed");
                return Err(ProxyError::UpstreamUnavailable);
            }
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            GatewayBody::upstream(body, deadline),
        ))
    }
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn upstream_uri(upstream: &Upstream, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let mut target = String::with_capacity(
        upstream.path_prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    target.push_str(&upstream.path_prefix);
    target.push_str(path);
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    let path_and_query = PathAndQuery::try_from(target)
        .map_err(|_| ProxyError::BadRequest("unusable request target"))?;
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::BadRequest("unusable request target"))
}
