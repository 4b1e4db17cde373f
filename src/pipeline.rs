//! The request pipeline: route → credential → principal → scope → forward.
//!
//! [`Pipeline::handle`] is the outer function (turns every error into its response, logs);
//! [`Pipeline::run`] is the inner one and reads top to bottom with `?`.

use crate::auth::{credential, AuthError, Authenticator, Principal};
use crate::config::{cidr_contains, Limits};
use crate::error::ProxyError;
use crate::proxy::body::GatewayBody;
use crate::proxy::headers::Forwarded;
use crate::proxy::{Forwarder, Outgoing};
use crate::routing::normalize::normalize;
use crate::routing::{Access, RouteMatch, RouteTable};
use crate::usage::UsageRecorder;
use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use std::net::IpAddr;
use std::net::SocketAddr;

/// What changes when the config is reloaded, swapped as one.
pub struct LiveConfig {
    pub routes: RouteTable,
    pub limits: Limits,
}

/// Everything a proxied request needs; shared by all connections.
pub struct Pipeline {
    pub live: ArcSwap<LiveConfig>,
    pub auth: Authenticator,
    pub forwarder: Forwarder,
    pub usage: UsageRecorder,
    /// `https` when the listener speaks TLS.
    pub proto: &'static str,
}

impl Pipeline {
    /// Serves one request; never fails (errors become responses).
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<GatewayBody> {
        let method = request.method().clone();
        match self.run(request, peer).await {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(%method, error = %e, "request refused");
                e.into_response()
            }
        }
    }

    async fn run(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        let live = self.live.load();
        check_forwardable(&request, &live.routes)?;
        // A cheap clone (shared bytes) so the path can outlive the request it is forwarded in.
        let uri = request.uri().clone();
        let path = normalize(uri.path())?;
        let route = match live.routes.find(request.method(), &path) {
            RouteMatch::Found(route) => route,
            RouteMatch::MethodNotAllowed(allow) => {
                return Err(ProxyError::MethodNotAllowed { allow })
            }
            RouteMatch::NotFound => return Err(ProxyError::RouteNotFound),
        };
        let presented = credential::extract(request.headers())?;
        let principal = match &route.spec.access {
            Access::Public => None,
            access => Some(self.authenticate(presented, access).await?),
        };
        if let Some(p) = &principal {
            self.usage.record(&p.key_id);
        }
        let forwarded = Forwarded {
            client_ip: peer.ip(),
            trusted_peer: is_trusted(&live.limits, peer.ip()),
            proto: self.proto,
            host: original_host(&request),
            app_id: principal.as_ref().map(|p| &*p.app.id),
            key_id: principal.as_ref().map(|p| &*p.key_id),
        };
        let out = Outgoing {
            upstream: &route.spec.upstream,
            path: &path,
            max_body: route.spec.max_body.unwrap_or(live.limits.max_body),
            strip_bearer: credential::is_bearer(request.headers()),
            forwarded,
        };
        self.forwarder.forward(request, out).await
    }

    async fn authenticate(
        &self,
        presented: Option<&str>,
        access: &Access,
    ) -> Result<Principal, AuthError> {
        let presented = presented.ok_or(AuthError::Missing)?;
        let (principal, _cached) = self.auth.authenticate(presented).await?;
        principal.authorize(access)?;
        Ok(principal)
    }
}

/// Requests the gateway never forwards, whatever the routes say.
fn check_forwardable<B>(request: &Request<B>, routes: &RouteTable) -> Result<(), ProxyError> {
    if request.method() == Method::CONNECT || request.method() == Method::TRACE {
        let allow = routes
            .allowed_methods(request.uri().path())
            .unwrap_or_default();
        return Err(ProxyError::MethodNotAllowed { allow });
    }
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
