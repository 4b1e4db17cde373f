//! Forwarding an authorised request to its upstream over a pooled client, and streaming the
//! answer back. Owns the upstream connection pools; knows nothing of keys or scopes.
//!
//! # Clients and trust
//! `http://` and `https://` upstreams share one pooled client whose TLS trusts the webpki
//! (Mozilla) roots. An upstream with `ca:` trusts that file's certificates as well, and trust is
//! fixed per client (a rustls `ClientConfig` has one root store), so each distinct CA file gets
//! its own client, keyed by the file's path and built before any request needs it
//! ([`Forwarder::new`], then [`Forwarder::prepare`] on every config reload). Upstreams naming
//! the same CA file share its client and pool; an upstream never borrows another's trust.

pub mod body;
pub mod headers;

use self::body::{is_body_limit, GatewayBody, LimitedBody};
use self::headers::Forwarded;
use crate::error::ProxyError;
use crate::routing::Upstream;
use crate::tls::{upstream_client_config, TlsError, TrustedCa};
use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Idle upstream connections are kept this long: long enough to ride out gaps between bursts,
/// shorter than the 60s+ idle timeouts common upstream servers use, so we close first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per upstream; enough for a busy gateway's concurrency.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;
/// A refused or black-holed upstream fails fast instead of eating the whole deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type UpstreamClient = Client<HttpsConnector<HttpConnector>, LimitedBody>;
/// CA file path -> its certificates and the client trusting them (with the webpki roots).
type CaClients = HashMap<PathBuf, (Arc<TrustedCa>, UpstreamClient)>;

/// The pooled clients toward the upstreams: one trusting the webpki roots, and one per
/// distinct `ca:` file (see the module docs).
#[derive(Clone)]
pub struct Forwarder {
    default: UpstreamClient,
    /// Entries are added or refreshed by [`Forwarder::prepare`], never removed, so a request
    /// still running on the previous config always finds its client.
    with_ca: Arc<ArcSwap<CaClients>>,
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

/// A pooled client over plain TCP or TLS (`https_or_http`), HTTP/1.1 toward the upstream.
fn client(extra: Option<&TrustedCa>) -> Result<UpstreamClient, TlsError> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    // Let `https://` URIs through to the TLS layer.
    connector.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(upstream_client_config(extra)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}

impl Forwarder {
    /// Clients for `upstreams`: the default one and one per distinct `ca:` file.
    pub fn new(upstreams: &[Arc<Upstream>]) -> Result<Forwarder, TlsError> {
        let forwarder = Forwarder {
            default: client(None)?,
            with_ca: Arc::new(ArcSwap::from_pointee(HashMap::new())),
        };
        forwarder.prepare(upstreams)?;
        Ok(forwarder)
    }

    /// Makes sure every `ca:` of `upstreams` has a client trusting exactly its current
    /// certificates; call it with a reloaded config's upstreams before that config serves.
    /// A CA file whose certificates are unchanged keeps its client (and its pooled
    /// connections); one whose certificates changed gets a new client.
    pub fn prepare(&self, upstreams: &[Arc<Upstream>]) -> Result<(), TlsError> {
        let current = self.with_ca.load_full();
        let mut next: Option<HashMap<_, _>> = None;
        for ca in upstreams.iter().filter_map(|u| u.ca.as_ref()) {
            let known = next.as_ref().unwrap_or(&current).get(&ca.path);
            if known.is_some_and(|(known, _)| known.certs == ca.certs) {
                continue;
            }
            let client = client(Some(ca))?;
            next.get_or_insert_with(|| (*current).clone())
                .insert(ca.path.clone(), (ca.clone(), client));
        }
        if let Some(next) = next {
            self.with_ca.store(Arc::new(next));
        }
        Ok(())
    }

    /// The client for `upstream`'s trust set.
    fn client_for(&self, upstream: &Upstream) -> Result<Cow<'_, UpstreamClient>, ProxyError> {
        let Some(ca) = &upstream.ca else {
            return Ok(Cow::Borrowed(&self.default));
        };
        match self.with_ca.load().get(&ca.path) {
            Some((_, client)) => Ok(Cow::Owned(client.clone())),
            None => {
                // `prepare` was not called for this config: refuse rather than guess the trust.
                tracing::error!(
                    upstream = %upstream.name,
                    ca = %ca.path.display(),
                    "no client prepared for this upstream's CA"
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
        let (mut parts, body) = request.into_parts();
        parts.uri = upstream_uri(out.upstream, out.path, parts.uri.query())?;
        parts.version = http::Version::HTTP_11;
        headers::prepare_request(&mut parts.headers, out.strip_bearer, &out.forwarded);
        // A declared length over `max_body` was refused before forwarding (the pipeline's
        // `admit`); what is left to check is what actually streams.
        let request = Request::from_parts(parts, LimitedBody::new(body, out.max_body));

        let client = self.client_for(out.upstream)?;
        let deadline = Instant::now() + out.upstream.timeout;
        let response = match tokio::time::timeout_at(deadline, client.request(request)).await {
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

/// The request's `Content-Length`, when it has one (hyper has already refused a malformed or
/// conflicting one).
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
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
