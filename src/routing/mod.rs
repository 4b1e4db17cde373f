//! Which route a request is for: path normalisation, then a method + path lookup.
//!
//! Owns the [`RouteTable`] (compiled once per config) and nothing else; it never looks at
//! credentials or talks to upstreams.

pub mod normalize;
mod table;

pub use self::table::{Route, RouteMatch, RouteProblem, RouteTable};

use crate::tls::TrustedCa;
use http::Method;
use std::sync::Arc;
use std::time::Duration;

/// The methods a route accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MethodSet {
    /// `*`: every method (except CONNECT and TRACE, which the gateway never forwards).
    Any,
    Only(Vec<Method>),
}

/// What a caller needs to use a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// `scope: public`: no key needed.
    Public,
    /// A key whose app holds this scope.
    Scope(Arc<str>),
}

/// Where matched requests go.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    /// Scheme and authority (`http://host:port`); a path prefix, if any, is prepended (without a trailing `/`).
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub path_prefix: String,
    pub timeouts: Timeouts,
    /// Extra trust anchors for an `https` upstream (`ca:`), besides the webpki roots.
    pub ca: Option<Arc<TrustedCa>>,
}

/// How long the gateway waits on an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Per connection attempt (TCP connect and TLS handshake).
    pub connect: Duration,
    /// For the response head; 504 past it.
    pub header: Duration,
    /// Longest silence inside a response body; the stream is cut past it (`None`: no bound).
    pub read: Option<Duration>,
    /// Whole-response deadline (`None`: `timeout: none`, a stream that keeps flowing is never
    /// cut).
    pub whole: Option<Duration>,
}

impl Timeouts {
    /// A connection attempt's limit unless `connect_timeout` says otherwise.
    pub const DEFAULT_CONNECT: Duration = Duration::from_secs(5);

    /// Only a whole-response deadline (which bounds the head too), as before these settings.
    pub const fn whole(deadline: Duration) -> Timeouts {
        Timeouts {
            connect: Timeouts::DEFAULT_CONNECT,
            header: deadline,
            read: None,
            whole: Some(deadline),
        }
    }
}

/// One route as configured, before compilation.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub methods: MethodSet,
    /// Pattern such as `/api/v1/tools/{tool_id}/deploy`.
    pub path: String,
    pub access: Access,
    pub upstream: Arc<Upstream>,
    /// Per-route request body limit in bytes, overriding the global one.
    pub max_body: Option<u64>,
    /// Whether paths with `;` parameters may use this route (`allow_semicolons: true`); see
    /// [`Route::check_parameters`].
    pub allow_semicolons: bool,
}
