//! Forwarding an authorised request to its upstream over a pooled connection, and streaming
//! the answer back. Owns the upstream connection pools ([`pool`]); knows nothing of keys or
//! scopes.
//!
//! # Pools and trust
//! `http://` and `https://` upstreams share one pool whose TLS trusts the webpki (Mozilla)
//! roots. An upstream with `ca:` trusts that file's certificates as well, and trust is fixed
//! per pool (a rustls `ClientConfig` has one root store), so each distinct CA file gets its own
//! pool, keyed by the file's path and built before any request needs it ([`Forwarder::new`],
//! then [`Forwarder::prepare`] on every config reload). Upstreams naming the same CA file share
//! its pool; an upstream never borrows another's trust.

pub(crate) mod body;
pub(crate) mod headers;
pub(crate) mod pool;
mod request_body;

use self::body::GatewayBody;
use self::headers::Forwarded;
use self::pool::{Pool, SendError};
use self::request_body::{is_body_limit, LimitedBody};
use crate::error::ProxyError;
use crate::routing::Upstream;
use crate::tls::{upstream_client_config, TlsError, TrustedCa};
use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{header, Request, Response, Uri};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::time::Instant;

/// CA file path -> its certificates and the pool trusting them (with the webpki roots).
type CaPools = HashMap<PathBuf, (Arc<TrustedCa>, Arc<Pool>)>;

/// The connection pools toward the upstreams: one trusting the webpki roots, and one per
/// distinct `ca:` file (see the module docs).
#[derive(Clone)]
pub struct Forwarder {
    default: Arc<Pool>,
    /// Entries are added or refreshed by [`Forwarder::prepare`], never removed, so a request
    /// still running on the previous config always finds its pool.
    with_ca: Arc<ArcSwap<CaPools>>,
}

opaque_debug!(Forwarder);

/// What is sent upstream besides the request itself.
pub struct Outgoing<'a> {
    pub upstream: &'a Upstream,
    /// The normalised path that was matched and authorised, when it differs from the
    /// request's (`None`: the request's own path is forwarded).
    pub rewritten_path: Option<&'a str>,
    pub max_body: u64,
    pub strip_bearer: bool,
    pub forwarded: Forwarded<'a>,
}

opaque_debug!(Outgoing<'_>);

/// A pool whose TLS trusts the webpki roots and `extra`.
fn pool(extra: Option<&TrustedCa>) -> Result<Arc<Pool>, TlsError> {
    Ok(Arc::new(Pool::new(upstream_client_config(extra)?)))
}

impl Forwarder {
    /// Clients for `upstreams`: the default one and one per distinct `ca:` file.
    pub fn new(upstreams: &[Arc<Upstream>]) -> Result<Forwarder, TlsError> {
        let forwarder = Forwarder {
            default: pool(None)?,
            with_ca: Arc::new(ArcSwap::from_pointee(HashMap::new())),
        };
        forwarder.prepare(upstreams)?;
        Ok(forwarder)
    }

    /// Makes sure every `ca:` of `upstreams` has a pool trusting exactly its current
    /// certificates; call it with a reloaded config's upstreams before that config serves.
    /// A CA file whose certificates are unchanged keeps its pool (and its connections); one
    /// whose certificates changed gets a new pool.
    pub fn prepare(&self, upstreams: &[Arc<Upstream>]) -> Result<(), TlsError> {
        let current = self.with_ca.load_full();
        let mut next: Option<HashMap<_, _>> = None;
        for ca in upstreams.iter().filter_map(|u| u.ca.as_ref()) {
            let known = next.as_ref().unwrap_or(&current).get(&ca.path);
            if known.is_some_and(|(known, _)| known.certs == ca.certs) {
                continue;
            }
            let pool = pool(Some(ca))?;
            next.get_or_insert_with(|| (*current).clone())
                .insert(ca.path.clone(), (ca.clone(), pool));
        }
        if let Some(next) = next {
            self.with_ca.store(Arc::new(next));
        }
        Ok(())
    }

    /// The pool for `upstream`'s trust set.
    fn pool_for(&self, upstream: &Upstream) -> Result<Arc<Pool>, ProxyError> {
        let Some(ca) = &upstream.ca else {
            return Ok(self.default.clone());
        };
        match self.with_ca.load().get(&ca.path) {
            Some((_, pool)) => Ok(pool.clone()),
            None => {
                // `prepare` was not called for this config: refuse rather than guess the trust.
                tracing::error!(
                    upstream = %upstream.name,
                    ca = %ca.path.display(),
                    "no pool prepared for this upstream's CA"
                );
                Err(ProxyError::UpstreamUnavailable)
            }
        }
    }

    /// Sends the request upstream and returns its (streaming) response.
    pub async fn forward(
        &self,
        request: Request<Incoming>,
        out: Outgoing<'_>,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        let pool = self.pool_for(out.upstream)?;
        let host = pool.host(out.upstream);
        let (mut parts, body) = request.into_parts();
        parts.uri = match (out.rewritten_path, parts.uri.path_and_query()) {
            // The common case: the target as sent (checked by hyper already) is forwarded as is.
            (None, Some(target)) if out.upstream.path_prefix.is_empty() => {
                Uri::from(target.clone())
            }
            (rewritten, _) => {
                let path = rewritten.unwrap_or(parts.uri.path());
                upstream_uri(out.upstream, path, parts.uri.query())?
            }
        };
        parts.version = http::Version::HTTP_11;
        headers::prepare_request(&mut parts.headers, out.strip_bearer, &out.forwarded);
        parts.headers.insert(header::HOST, host.header.clone());
        // A declared length over `max_body` was refused before forwarding (the pipeline's
        // `admit`); what is left to check is what actually streams.
        let request = Request::from_parts(parts, LimitedBody::new(body, out.max_body));

        let timeouts = &out.upstream.timeouts;
        let now = Instant::now();
        let sent = pool.send(out.upstream, host, request);
        let (response, lease) = match tokio::time::timeout_at(now + timeouts.header, sent).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(SendError::Http(e))) if is_body_limit(&e) => {
                return Err(ProxyError::BodyTooLarge {
                    limit: out.max_body,
                })
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %out.upstream.name, error = %e, "upstream request failed");
                return Err(ProxyError::UpstreamUnavailable);
            }
            Ok(Ok(answered)) => answered,
        };
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            GatewayBody::upstream(body, timeouts.whole.map(|w| now + w), timeouts.read, lease),
        ))
    }
}

/// The origin-form target toward the upstream: its path prefix, the authorised path, the
/// client's query.
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
    Ok(Uri::from(path_and_query))
}
