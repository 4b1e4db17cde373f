//! Forwarding an authorised request to one of its upstream's targets over a pooled
//! connection, and streaming the answer back. Owns the targets ([`targets`]: balance, health,
//! DNS), their connections ([`pool`]) and the retry rules ([`replay`]); knows nothing of keys
//! or scopes.
//!
//! # Trust
//! `https://` targets trust the webpki (Mozilla) roots. An upstream with `ca:` trusts that
//! file's certificates as well; trust is fixed per rustls `ClientConfig`, so each distinct CA
//! file gets its own, built before any request needs it ([`Forwarder::prepare`], at start and
//! on every reload). Upstreams naming the same CA file share it; an upstream never borrows
//! another's trust.

pub(crate) mod body;
pub(crate) mod headers;
mod metering;
pub(crate) mod pool;
mod replay;
pub(crate) mod request_body;
mod targets;

pub(crate) use self::targets::{UpstreamSet, UpstreamStatus};

use self::body::GatewayBody;
use self::headers::Forwarded;
use self::pool::{Failed, Lease, SendError};
use self::replay::Replay;
use self::request_body::is_body_limit;
use self::targets::dns::{self, Resolver};
use self::targets::pick::Tried;
use self::targets::{Endpoint, TargetList};
use crate::error::ProxyError;
use crate::meter::Provider;
use crate::metrics::{Metrics, Outcome};
use crate::routing::{TargetSpec, Upstream};
use crate::tls::{upstream_client_config, TlsError, TrustedCa};
use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{header, HeaderName, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// CA file path -> its certificates and the TLS client trusting them (with the webpki roots).
type CaClients = HashMap<PathBuf, (Arc<TrustedCa>, TlsConnector)>;

/// The TLS clients toward upstreams, the DNS resolver, and what the targets report to.
#[derive(Clone)]
pub struct Forwarder {
    default: TlsConnector,
    /// Entries are added or refreshed by [`Forwarder::prepare`], never removed.
    with_ca: Arc<ArcSwap<CaClients>>,
    resolver: Arc<Resolver>,
    metrics: Arc<Metrics>,
}

opaque_debug!(Forwarder);

/// What is sent upstream besides the request itself.
pub struct Outgoing<'a> {
    pub upstream: &'a UpstreamSet,
    /// The normalised path that was matched and authorised, when it differs from the
    /// request's (`None`: the request's own path is forwarded).
    pub rewritten_path: Option<&'a str>,
    pub max_body: u64,
    pub strip_bearer: bool,
    pub forwarded: Forwarded<'a>,
    /// The upstream's credential: set in this header, replacing any copy the client sent.
    pub credential: Option<(&'a HeaderName, HeaderValue)>,
    /// A metered route's provider: its response comes uncompressed (so its usage can be read)
    /// and an OpenAI streaming request asks for usage.
    pub meter: Option<Provider>,
}

opaque_debug!(Outgoing<'_>);

fn tls_client(extra: Option<&TrustedCa>) -> Result<TlsConnector, TlsError> {
    Ok(TlsConnector::from(Arc::new(upstream_client_config(extra)?)))
}

impl Forwarder {
    /// `resolver`: the config's DNS servers (empty: the system's).
    pub fn new(resolver: &[SocketAddr], metrics: Arc<Metrics>) -> Result<Forwarder, TlsError> {
        Ok(Forwarder {
            default: tls_client(None)?,
            with_ca: Arc::new(ArcSwap::from_pointee(HashMap::new())),
            resolver: Arc::new(Resolver::new(resolver)),
            metrics,
        })
    }

    /// The live target sets for `upstreams` (in their order), taking over the targets of
    /// `previous` that stay; resolves hostname targets (a name that does not resolve keeps
    /// its previous addresses) and starts each set's background work. Call it with a
    /// reloaded config's upstreams before that config serves, then [`Forwarder::retire`] the
    /// previous sets once it does.
    pub async fn prepare(
        &self,
        upstreams: &[Arc<Upstream>],
        previous: &[Arc<UpstreamSet>],
    ) -> Result<Vec<Arc<UpstreamSet>>, TlsError> {
        self.prepare_trust(upstreams)?;
        let resolved = self.resolve(upstreams).await;
        let mut sets = Vec::with_capacity(upstreams.len());
        for upstream in upstreams {
            let old = previous.iter().find(|p| p.spec.name == upstream.name);
            let endpoints = upstream
                .targets
                .iter()
                .map(|t| self.endpoint(upstream, t).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            let addresses = |t: &TargetSpec| -> Vec<SocketAddr> {
                match resolved.get(&*t.url) {
                    Some(Ok(found)) => found.addresses.clone(),
                    // Unresolvable now: the addresses it had, if any.
                    _ => old.map(|o| o.addresses_of(&t.url)).unwrap_or_default(),
                }
            };
            let set = Arc::new(UpstreamSet::new(
                upstream.clone(),
                endpoints,
                old.map(|o| &**o),
                &addresses,
                &self.metrics,
            ));
            let first_round = upstream
                .targets
                .iter()
                .filter_map(|t| resolved.get(&*t.url)?.as_ref().ok())
                .map(|r| r.valid_for)
                .min();
            set.spawn_upkeep(&self.resolver, dns::next_round(first_round));
            sets.push(set);
        }
        Ok(sets)
    }

    /// The previous config's sets stop their background work (their requests finish).
    pub fn retire(previous: &[Arc<UpstreamSet>]) {
        for set in previous {
            set.retire();
        }
    }

    /// Every hostname target's addresses now, by `url` (IP literals need no lookup).
    async fn resolve(
        &self,
        upstreams: &[Arc<Upstream>],
    ) -> HashMap<Arc<str>, Result<dns::Resolved, String>> {
        let mut names = Vec::new();
        for t in upstreams.iter().flat_map(|u| &u.targets) {
            if !names
                .iter()
                .any(|(url, _, _): &(Arc<str>, String, u16)| *url == t.url)
            {
                names.push((t.url.clone(), host_of(t).to_owned(), port_of(t)));
            }
        }
        let lookups = names.iter().map(|(_, host, port)| async move {
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(dns::Resolved {
                    addresses: vec![SocketAddr::new(ip, *port)],
                    valid_for: Duration::MAX,
                }),
                Err(_) => self.resolver.resolve(host, *port).await,
            }
        });
        let found = futures_util::future::join_all(lookups).await;
        names
            .into_iter()
            .zip(found)
            .map(|((url, host, _), result)| {
                if let Err(e) = &result {
                    tracing::warn!(target = %url, host, error = %e, "cannot resolve an upstream target now; it has no address until it does");
                }
                (url, result)
            })
            .collect()
    }

    /// Makes sure every `ca:` of `upstreams` has a TLS client trusting exactly its current
    /// certificates (unchanged certificates keep theirs).
    fn prepare_trust(&self, upstreams: &[Arc<Upstream>]) -> Result<(), TlsError> {
        let current = self.with_ca.load_full();
        let mut next: Option<HashMap<_, _>> = None;
        for ca in upstreams.iter().filter_map(|u| u.ca.as_ref()) {
            let known = next.as_ref().unwrap_or(&current).get(&ca.path);
            if known.is_some_and(|(known, _)| known.certs == ca.certs) {
                continue;
            }
            let client = tls_client(Some(ca))?;
            next.get_or_insert_with(|| (*current).clone())
                .insert(ca.path.clone(), (ca.clone(), client));
        }
        if let Some(next) = next {
            self.with_ca.store(Arc::new(next));
        }
        Ok(())
    }

    /// How to reach `target` of `upstream`: its TLS client and name, and its `Host` header.
    fn endpoint(&self, upstream: &Upstream, target: &TargetSpec) -> Result<Endpoint, TlsError> {
        let host_header = HeaderValue::from_str(target.authority.as_str())
            .unwrap_or(HeaderValue::from_static("localhost"));
        let tls = match target.scheme == http::uri::Scheme::HTTPS {
            false => None,
            true => {
                let client = match &upstream.ca {
                    None => self.default.clone(),
                    Some(ca) => self
                        .with_ca
                        .load()
                        .get(&ca.path)
                        .map(|(_, c)| c.clone())
                        .unwrap_or_else(|| self.default.clone()),
                };
                let name = ServerName::try_from(host_of(target).to_owned()).map_err(|_| {
                    TlsError::ServerName {
                        host: host_of(target).to_owned(),
                    }
                })?;
                Some((client, name))
            }
        };
        Ok(Endpoint {
            tls,
            trust: upstream.ca.clone(),
            host_header,
        })
    }

    /// Sends the request to a target of its upstream and returns its (streaming) response,
    /// trying another target when that is safe (see [`replay`]).
    pub async fn forward(
        &self,
        request: Request<Incoming>,
        out: Outgoing<'_>,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        let set = out.upstream;
        let list = set.list();
        let mut tried = Tried::default();
        let Some(mut index) = set.pick(&list, &tried) else {
            return Err(ProxyError::NoHealthyTarget {
                retry_after: set.retry_after(&list),
            });
        };
        set.count_request(&list);
        let upstream = &*set.spec;
        let (mut parts, body) = request.into_parts();
        parts.uri = match (out.rewritten_path, parts.uri.path_and_query()) {
            // The common case: the target as sent (checked by hyper already) is forwarded as is.
            (None, Some(target)) if upstream.path_prefix.is_empty() => Uri::from(target.clone()),
            (rewritten, _) => {
                let path = rewritten.unwrap_or(parts.uri.path());
                upstream_uri(upstream, path, parts.uri.query())?
            }
        };
        parts.version = http::Version::HTTP_11;
        headers::prepare_request(&mut parts.headers, out.strip_bearer, &out.forwarded);
        if let Some((name, value)) = out.credential {
            // `insert` drops every value the client sent under the name.
            parts.headers.insert(name.clone(), value);
        }
        if out.meter.is_some() {
            // Usage is read from the body as it passes: it must come uncompressed.
            parts.headers.remove(header::ACCEPT_ENCODING);
        }
        let timeouts = &upstream.timeouts;
        let now = Instant::now();
        let deadline = now + timeouts.header;
        // A second attempt after reaching an upstream needs a copy, made only where another
        // target exists to take it.
        let (request, replay) =
            if out.meter == Some(Provider::OpenAi) && metering::asks_for_json(&parts) {
                metering::with_usage_requested(parts, body, out.max_body, deadline).await?
            } else if upstream.retry.attempts > 0 && list.len() > 1 {
                replay::prepare(parts, body, out.max_body, deadline).await?
            } else {
                let body = request_body::LimitedBody::new(body, out.max_body);
                (Request::from_parts(parts, body), None)
            };
        let mut next = Some(request);
        loop {
            tried.push(index);
            let target = list.get(index);
            let Some(mut request) = next.take().or_else(|| replay.as_ref().map(Replay::request))
            else {
                return Err(ProxyError::UpstreamUnavailable);
            };
            request
                .headers_mut()
                .insert(header::HOST, target.endpoint.host_header.clone());
            let sent = pool::send(target, timeouts.connect, request);
            let failure = match tokio::time::timeout_at(deadline, sent).await {
                Err(_) => {
                    target.metrics.outcome(Outcome::Timeout);
                    return Err(ProxyError::UpstreamTimeout);
                }
                Ok(Ok((response, lease))) => {
                    target.metrics.outcome(Outcome::Response);
                    if !replay::gateway_failure(response.status()) {
                        set.success(target);
                        return Ok(answer(response, lease, now, timeouts));
                    }
                    set.failure(target);
                    match replay.is_some() && self.retry(set, &list, &tried, &mut index) {
                        true => continue,
                        false => return Ok(answer(response, lease, now, timeouts)),
                    }
                }
                Ok(Err(failed)) => failed,
            };
            let error = match failure {
                Failed::NotSent(error, request) => {
                    target.metrics.outcome(Outcome::ConnectError);
                    set.failure(target);
                    if self.retry(set, &list, &tried, &mut index) {
                        next = Some(*request);
                        continue;
                    }
                    error
                }
                Failed::Sent(e) if is_body_limit(&e) => {
                    return Err(ProxyError::BodyTooLarge {
                        limit: out.max_body,
                    })
                }
                // The client's body failed, not the target.
                Failed::Sent(e) if e.is_user() => SendError::Http(e),
                Failed::Sent(e) => {
                    target.metrics.outcome(Outcome::Reset);
                    set.failure(target);
                    if replay.is_some() && self.retry(set, &list, &tried, &mut index) {
                        continue;
                    }
                    SendError::Http(e)
                }
            };
            tracing::warn!(upstream = %upstream.name, target = %target.label, address = %target.address, error = %error, "upstream request failed");
            return Err(ProxyError::UpstreamUnavailable);
        }
    }

    /// Whether another attempt goes out: attempts left, another target in rotation, and room
    /// in the budget. Sets `index` to that target.
    fn retry(
        &self,
        set: &UpstreamSet,
        list: &TargetList,
        tried: &Tried,
        index: &mut usize,
    ) -> bool {
        if tried.len() > set.spec.retry.attempts as usize {
            return false;
        }
        match set.pick(list, tried) {
            Some(next) if set.take_retry() => {
                *index = next;
                true
            }
            _ => false,
        }
    }
}

/// The response toward the client, its body streamed under the upstream's timeouts.
fn answer(
    response: Response<Incoming>,
    lease: Lease,
    started: Instant,
    timeouts: &crate::routing::Timeouts,
) -> Response<GatewayBody> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(
        parts,
        GatewayBody::upstream(
            body,
            timeouts.whole.map(|w| started + w),
            timeouts.read,
            lease,
        ),
    )
}

fn host_of(target: &TargetSpec) -> &str {
    // `[::1]` in an authority; resolvers and TLS want the bare address.
    target
        .authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
}

fn port_of(target: &TargetSpec) -> u16 {
    let https = target.scheme == http::uri::Scheme::HTTPS;
    target
        .authority
        .port_u16()
        .unwrap_or(if https { 443 } else { 80 })
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

impl UpstreamSet {
    /// The addresses `url` has now.
    fn addresses_of(&self, url: &str) -> Vec<SocketAddr> {
        self.list()
            .targets()
            .filter(|t| *t.label == *url)
            .map(|t| t.address)
            .collect()
    }
}
