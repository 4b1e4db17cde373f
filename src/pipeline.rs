//! The request pipeline: route → credential → principal → scope → upstream credential →
//! forward.
//!
//! [`Pipeline::handle`] is the outer function (turns every error into its response, logs);
//! [`Pipeline::run`] is the inner one and reads top to bottom with `?`. A refused request's
//! unread body is settled before the answer goes out ([`unread`]), so an HTTP/1 connection
//! either carries the client's next request or says it will not.

pub mod access;
mod metering;
mod unread;

use self::metering::{ReportTo, TokenReport};
use self::unread::Unread;
use crate::auth::{credential, AuthError, Authenticator, Principal};
use crate::budgets::{Budgets, Grant};
use crate::config::{cidr_contains, Limits};
use crate::credentials::CredentialCache;
use crate::error::{Counted, ProxyError};
use crate::live::{Live, LiveConfig};
use crate::metrics::{Metrics, StoreOp};
use crate::proxy::body::GatewayBody;
use crate::proxy::headers::Forwarded;
use crate::proxy::{Forwarder, Outgoing};
use crate::routing::normalize::normalize;
use crate::routing::{Access, CredentialFormat, Route, RouteMatch, RouteTable, Upstream};
use crate::usage::UsageRecorder;
use http::{header, HeaderName, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

/// What the outer handler needs to label a request's metrics, filled in as the pipeline runs.
#[derive(Debug, Default)]
pub struct Seen {
    pub route: Option<usize>,
    pub app: Option<Arc<str>>,
    /// The key id (never the secret), once the key checked out.
    pub key: Option<Arc<str>>,
    /// The upstream's own status, once it answered.
    pub upstream_status: Option<u16>,
}

/// A request the gateway has decided to forward.
#[derive(Debug)]
pub struct Admission<'a> {
    pub route: &'a Route,
    /// The normalised path when it differs from the request's (`None`: forward it as sent).
    pub rewritten_path: Option<String>,
    pub principal: Option<Principal>,
    /// The credential came as `Authorization: Bearer`: removed before forwarding.
    pub strip_bearer: bool,
    /// What the key's budgets granted (its headers go on the response).
    pub grant: Option<Grant>,
}

/// A request the gateway answers with an error, and what it left unread on the connection.
struct Refusal {
    error: ProxyError,
    unread: Unread,
}

/// Everything a proxied request needs; shared by all connections.
pub struct Pipeline {
    pub live: Live,
    pub auth: Authenticator,
    pub forwarder: Forwarder,
    pub budgets: Budgets,
    pub usage: UsageRecorder,
    /// Opened upstream credentials, injected toward upstreams that need one.
    pub credentials: Arc<CredentialCache>,
    pub metrics: Arc<Metrics>,
    /// `https` when the listener speaks TLS.
    pub proto: &'static str,
}

opaque_debug!(Pipeline);

impl Pipeline {
    /// Serves one request; never fails (errors become responses). Times, counts and logs it.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<GatewayBody> {
        let started = Instant::now();
        let live = self.live.load_full();
        let method = request.method().clone();
        // A shared-bytes clone, kept only for the access line.
        let uri = live.access_log.then(|| request.uri().clone());
        let mut seen = Seen::default();
        let response = match self.run(request, peer, &live, &mut seen).await {
            Ok(response) => response,
            Err(refusal) => self.refuse(refusal, &live, &seen).await,
        };
        let elapsed = started.elapsed();
        let route = seen.route.and_then(|i| live.routes.routes().get(i));
        let route_metrics = seen
            .route
            .and_then(|i| live.route_metrics.get(i))
            .unwrap_or(&live.unmatched);
        let status = response.status();
        self.metrics
            .record_request(route_metrics, &method, status, seen.app.as_ref(), elapsed);
        if status.is_server_error() && seen.upstream_status.is_some() {
            access::server_error(route, status.as_u16(), &"the upstream answered with it");
        }
        if let Some(uri) = &uri {
            access::write(&access::Entry {
                method: &method,
                route,
                path: uri.path(),
                status: status.as_u16(),
                app: seen.app.as_deref(),
                key: seen.key.as_deref(),
                client: peer,
                upstream_status: seen.upstream_status,
                elapsed,
                bytes: http_body::Body::size_hint(response.body()).exact(),
            });
        }
        response
    }

    /// The answer to a refused request, once its unread body is settled.
    async fn refuse(
        &self,
        Refusal { error, unread }: Refusal,
        live: &LiveConfig,
        seen: &Seen,
    ) -> Response<GatewayBody> {
        tracing::debug!(%error, "request refused");
        self.count_refusal(&error, seen);
        let keep_alive = unread.settle().await;
        let mut response: Response<GatewayBody> = error.to_response();
        if response.status().is_server_error() {
            let route = seen.route.and_then(|i| live.routes.routes().get(i));
            access::server_error(route, response.status().as_u16(), &error);
        }
        if !keep_alive {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    async fn run(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        live: &Arc<LiveConfig>,
        seen: &mut Seen,
    ) -> Result<Response<GatewayBody>, Refusal> {
        let admission = match self.admit(&request, peer.ip(), live, seen).await {
            Ok(admission) => admission,
            Err(error) => {
                let unread = Unread::of(request);
                return Err(Refusal { error, unread });
            }
        };
        let route = admission.route;
        let principal = admission.principal.as_ref();
        let forwarded = Forwarded {
            client_ip: peer.ip(),
            trusted_peer: is_trusted(&live.limits, peer.ip()),
            proto: self.proto,
            host: original_host(&request),
            app_id: principal.and_then(|p| p.app.id_header.as_ref()),
            key_id: principal.and_then(|p| p.key.id_header.as_ref()),
        };
        let Some(upstream) = live.upstreams.get(route.spec.upstream.index) else {
            let unread = Unread::of(request);
            return Err(Refusal {
                error: ProxyError::UpstreamUnavailable,
                unread,
            });
        };
        // Most routes: two `Option` checks and nothing else.
        let credential = match credential_use(&upstream.spec, principal) {
            None => None,
            Some((name, header, format)) => match self.credentials.header(name, format).await {
                Ok(value) => Some((header, value)),
                Err(why) => {
                    let unread = Unread::of(request);
                    return Err(Refusal {
                        error: why.into(),
                        unread,
                    });
                }
            },
        };
        let out = Outgoing {
            upstream,
            rewritten_path: admission.rewritten_path.as_deref(),
            max_body: route.spec.max_body.unwrap_or(live.limits.max_body),
            strip_bearer: admission.strip_bearer,
            forwarded,
            credential,
            meter: route.spec.meter,
        };
        let unread = Unread::after_forwarding(&request);
        // Counted as it is forwarded: a request refused before this point costs its key no
        // usage. (`admit`'s only side effects are its decisions: the rate limit's and the
        // quota's, which count requests they admit.)
        if let Some(p) = principal {
            self.usage.record(&p.key.uses);
        }
        let sent = Instant::now();
        let response = self.forwarder.forward(request, out).await;
        if let Some(m) = live.route_metrics.get(route.index) {
            self.metrics.record_upstream(m, sent.elapsed());
        }
        let mut response = response.map_err(|error| Refusal { error, unread })?;
        seen.upstream_status = Some(response.status().as_u16());
        if let Some(grant) = &admission.grant {
            grant.write_headers(response.headers_mut());
        }
        if let Some(provider) = route.spec.meter {
            let to = ReportTo {
                live: live.clone(),
                route: route.index,
                app: seen.app.clone(),
                uses: principal.map(|p| p.key.uses.clone()),
                usage: self.usage.clone(),
                quota: admission
                    .grant
                    .as_ref()
                    .and_then(|g| g.tokens.as_ref())
                    .map(|(key, _)| (self.budgets.tokens.clone(), key.clone())),
                metrics: self.metrics.clone(),
            };
            let report = TokenReport::new(provider, response.headers(), to);
            response = response.map(|body| body.tapped(Box::new(report)));
        }
        Ok(response)
    }

    /// Every decision before forwarding: limits on the head, path, route, credential,
    /// principal, scope and rate limit. Touches no socket, so it can be measured alone.
    pub async fn admit<'a, B>(
        &self,
        request: &Request<B>,
        peer: IpAddr,
        live: &'a LiveConfig,
        seen: &mut Seen,
    ) -> Result<Admission<'a>, ProxyError> {
        check_size(request, &live.limits)?;
        check_forwardable(request, &live.routes)?;
        let path = normalize(request.uri().path())?;
        let route = match live.routes.find(request.method(), &path) {
            RouteMatch::Found(route) => route,
            RouteMatch::MethodNotAllowed(allow) => {
                // Counted under the pattern the path belongs to, not `unmatched`.
                seen.route = live.routes.route_for_path(&path).map(|r| r.index);
                return Err(ProxyError::MethodNotAllowed { allow });
            }
            RouteMatch::NotFound => return Err(ProxyError::RouteNotFound),
        };
        seen.route = Some(route.index);
        route.check_parameters(&path)?;
        let presented = credential::presented(request.headers())?;
        let principal = match &route.spec.access {
            Access::Public => None,
            access => {
                let client = || client_address(request.headers(), peer, &live.limits);
                Some(
                    self.authenticate(presented.key, access, client, seen)
                        .await?,
                )
            }
        };
        // Before the rate limit and usage: a body refused unread costs the key nothing.
        let max_body = route.spec.max_body.unwrap_or(live.limits.max_body);
        if declared_length(request.headers()).is_some_and(|len| len > max_body) {
            return Err(ProxyError::BodyTooLarge { limit: max_body });
        }
        let grant = match &principal {
            Some(p) => Some(
                self.budgets
                    .check(p, live, route.spec.meter.is_some())
                    .await?,
            ),
            None => None,
        };
        let rewritten_path = match path {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        };
        Ok(Admission {
            route,
            rewritten_path,
            principal,
            strip_bearer: presented.bearer,
            grant,
        })
    }

    /// The config in force now (requests hold it for their whole life).
    pub fn live(&self) -> Arc<LiveConfig> {
        self.live.load_full()
    }

    fn count_refusal(&self, error: &ProxyError, seen: &Seen) {
        match error.counted() {
            Counted::Auth(reason) => self.metrics.auth_failure(reason),
            Counted::StoreError => self.metrics.store_error(StoreOp::Lookup),
            Counted::RateLimited => {
                if let Some(app) = &seen.app {
                    self.metrics.rate_limited(app);
                }
            }
            Counted::QuotaExceeded => {
                if let Some(app) = &seen.app {
                    self.metrics.quota_exceeded(app);
                }
            }
            Counted::TokenQuotaExceeded => {
                if let Some(app) = &seen.app {
                    self.metrics.token_quota_exceeded(app);
                }
            }
            Counted::Nothing => {}
        }
    }

    /// The key, its allowlist (the client address is worked out only for a key that has
    /// one; an unknown client is outside every allowlist), then the route's scope.
    async fn authenticate(
        &self,
        presented: Option<&str>,
        access: &Access,
        client: impl FnOnce() -> Option<IpAddr>,
        seen: &mut Seen,
    ) -> Result<Principal, AuthError> {
        let presented = presented.ok_or(AuthError::Missing)?;
        let principal = self.auth.authenticate(presented).await?;
        seen.app = Some(principal.app.id.clone());
        seen.key = Some(principal.key.id.clone());
        if principal.key.allowed_ips.is_some() {
            principal.check_address(client().ok_or(AuthError::IpNotAllowed)?)?;
        }
        principal.authorize(access)?;
        Ok(principal)
    }
}

/// The protective limits on the request head.
fn check_size<B>(request: &Request<B>, limits: &Limits) -> Result<(), ProxyError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if target > limits.max_uri_bytes {
        return Err(ProxyError::UriTooLong {
            limit: limits.max_uri_bytes,
        });
    }
    // Counted as on the wire: "name: value\r\n".
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    Ok(())
}

/// Requests the gateway never forwards, whatever the routes say.
fn check_forwardable<B>(request: &Request<B>, routes: &RouteTable) -> Result<(), ProxyError> {
    if request.method() == Method::CONNECT || request.method() == Method::TRACE {
        let allow = routes
            .allowed_methods(request.uri().path())
            .unwrap_or_default();
        return Err(ProxyError::MethodNotAllowed { allow });
    }
    check_framing(request)?;
    if let (Some(authority), Some(host)) = (
        request.uri().authority(),
        request.headers().get(http::header::HOST),
    ) {
        if !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
        {
            return Err(ProxyError::BadRequest(
                "the request target's authority differs from Host",
            ));
        }
    }
    Ok(())
}

/// What hyper accepts but a proxy must not pass on: a transfer coding besides `chunked` (the
/// coding would be dropped with the hop-by-hop header and the upstream would take the coded
/// bytes for the body), and an HTTP/1.1 request without exactly one `Host` (RFC 9112 §3.2).
fn check_framing<B>(request: &Request<B>) -> Result<(), ProxyError> {
    let only_chunked = request
        .headers()
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .all(|v| {
            v.to_str().is_ok_and(|codings| {
                codings
                    .split(',')
                    .all(|c| c.trim().eq_ignore_ascii_case("chunked"))
            })
        });
    if !only_chunked {
        return Err(ProxyError::BadRequest(
            "a transfer coding other than chunked",
        ));
    }
    if request.version() == http::Version::HTTP_11
        && request.headers().get_all(http::header::HOST).iter().count() != 1
    {
        return Err(ProxyError::BadRequest(
            "an HTTP/1.1 request needs exactly one Host",
        ));
    }
    Ok(())
}

/// The client's address as `limits.trusted_proxies` see it: the peer, unless it is a trusted
/// proxy; then the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
/// `None` (unknown) when the walk meets an entry that is not a plain address (`ip:port`,
/// `[v6]`, `unknown`, garbage): the trusted proxy vouched for a client it could not name, and
/// taking its own address instead would admit whoever it forwards to keys limited to it.
fn client_address(headers: &http::HeaderMap, peer: IpAddr, limits: &Limits) -> Option<IpAddr> {
    let mut client = peer;
    if !is_trusted(limits, peer) {
        return Some(client);
    }
    let entries = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("-").rsplit(','));
    for entry in entries {
        let ip = entry.trim().parse::<IpAddr>().ok()?;
        client = ip;
        if !is_trusted(limits, ip) {
            return Some(ip);
        }
    }
    Some(client)
}

/// Which credential the upstream gets, in which header and form: the app's own credential
/// for the upstream if it names one (in the upstream's header and form, else the default
/// `Authorization: Bearer`), else the upstream's `credential:`.
fn credential_use<'a>(
    upstream: &'a Upstream,
    principal: Option<&'a Principal>,
) -> Option<(&'a Arc<str>, &'a HeaderName, &'a Arc<CredentialFormat>)> {
    let own = principal.and_then(|p| p.app.credential_for(&upstream.name));
    match (own, &upstream.credential) {
        (None, None) => None,
        (Some(own), Some(u)) => Some((own, &u.header, &u.format)),
        (None, Some(u)) => Some((&u.name, &u.header, &u.format)),
        (Some(own), None) => Some((own, &header::AUTHORIZATION, bearer())),
    }
}

/// `Bearer {value}`, for an app's own credential toward an upstream that configures none.
fn bearer() -> &'static Arc<CredentialFormat> {
    static BEARER: std::sync::OnceLock<Arc<CredentialFormat>> = std::sync::OnceLock::new();
    BEARER.get_or_init(|| Arc::new(CredentialFormat::bearer()))
}

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

fn is_trusted(limits: &Limits, ip: IpAddr) -> bool {
    limits
        .trusted_proxies
        .iter()
        .any(|net| cidr_contains(*net, ip))
}

fn original_host<B>(request: &Request<B>) -> Option<HeaderValue> {
    request
        .headers()
        .get(http::header::HOST)
        .cloned()
        .or_else(|| {
            request
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
}

/// The request's `Content-Length`, when it has one (hyper has already refused a malformed or
/// conflicting one).
pub(crate) fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behind_proxy(xff: &[&str]) -> Option<IpAddr> {
        let limits = Limits {
            trusted_proxies: vec![("10.0.0.0".parse().expect("ip"), 8)],
            ..Limits::default()
        };
        let mut headers = http::HeaderMap::new();
        for value in xff {
            headers.append(
                &X_FORWARDED_FOR,
                HeaderValue::from_str(value).expect("value"),
            );
        }
        client_address(&headers, "10.0.0.1".parse().expect("ip"), &limits)
    }

    #[test]
    fn a_trusted_proxy_names_the_client_or_leaves_it_unknown() {
        let ip = |text: &str| text.parse::<IpAddr>().ok();
        assert_eq!(behind_proxy(&[]), ip("10.0.0.1"));
        assert_eq!(behind_proxy(&["203.0.113.9"]), ip("203.0.113.9"));
        assert_eq!(behind_proxy(&[" 2001:db8::9 "]), ip("2001:db8::9"));
        assert_eq!(
            behind_proxy(&["1.2.3.4, 203.0.113.9, 10.0.0.7"]),
            ip("203.0.113.9")
        );
        assert_eq!(behind_proxy(&["1.2.3.4", "203.0.113.9"]), ip("203.0.113.9"));
        // Garbage left of the client is the client's own writing and does not matter.
        assert_eq!(behind_proxy(&["junk, 203.0.113.9"]), ip("203.0.113.9"));
        for bad in [
            "203.0.113.9:4711",
            "[2001:db8::9]",
            "unknown",
            "",
            "203.0.113.9, ",
            "10.0.0.7, garbage",
            "junk, 10.0.0.7",
        ] {
            assert_eq!(behind_proxy(&[bad]), None, "{bad:?}");
        }
    }
}
