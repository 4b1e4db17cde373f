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

/// Where matched requests go: one or more targets and how they are used.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    /// Its position in the config's upstream list, where the proxy keeps its live state.
    pub index: usize,
    /// `url:` (one target) or `targets:`; never empty.
    pub targets: Vec<TargetSpec>,
    /// Prepended to every forwarded path (without a trailing `/`); shared by all targets.
    pub path_prefix: String,
    pub balance: Balance,
    pub timeouts: Timeouts,
    /// Open connections per target address; past it requests wait (within `header_timeout`).
    pub max_connections: usize,
    /// Active health check of every target (`health:`).
    pub health: Option<HealthCheck>,
    /// Passive ejection (`passive:`; `None`: turned off with `passive: off`).
    pub passive: Option<Passive>,
    pub retry: Retry,
    /// Extra trust anchors for `https` targets (`ca:`), besides the webpki roots.
    pub ca: Option<Arc<TrustedCa>>,
    /// `credential:`: a stored credential put in a header of every forwarded request.
    pub credential: Option<CredentialUse>,
}

/// An upstream's `credential:`: which stored credential, in which header, in which form. An
/// app naming its own credential for the upstream replaces `name` and keeps the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialUse {
    pub name: Arc<str>,
    pub header: http::HeaderName,
    pub format: Arc<CredentialFormat>,
}

/// `format:` split around its one `{value}`: the header is `prefix`, the value, `suffix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialFormat {
    pub prefix: Box<str>,
    pub suffix: Box<str>,
}

impl CredentialFormat {
    /// The placeholder `format:` holds exactly once.
    pub const PLACEHOLDER: &'static str = "{value}";

    /// `text` split around its one `{value}`, or why it cannot be.
    pub fn parse(text: &str) -> Result<CredentialFormat, String> {
        let mut parts = text.split(Self::PLACEHOLDER);
        match (parts.next(), parts.next(), parts.next()) {
            (Some(prefix), Some(suffix), None) => Ok(CredentialFormat {
                prefix: prefix.into(),
                suffix: suffix.into(),
            }),
            _ => Err(format!(
                "must contain {} exactly once (e.g. \"Bearer {{value}}\")",
                Self::PLACEHOLDER
            )),
        }
    }

    /// `Bearer {value}`: what an upstream's `Authorization` takes by default.
    pub fn bearer() -> CredentialFormat {
        CredentialFormat {
            prefix: "Bearer ".into(),
            suffix: "".into(),
        }
    }
}

impl Upstream {
    /// An upstream of one target with the defaults of every other setting (tests, demo).
    pub fn single(name: &str, url: &str, timeouts: Timeouts) -> Upstream {
        let uri: http::Uri = url
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("http://127.0.0.1"));
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        let authority = uri
            .authority()
            .cloned()
            .unwrap_or(http::uri::Authority::from_static("127.0.0.1"));
        Upstream {
            name: Arc::from(name),
            index: 0,
            targets: vec![TargetSpec {
                url: Arc::from(format!("{scheme}://{authority}")),
                scheme,
                authority,
                weight: 1,
            }],
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
            balance: Balance::LeastRequests,
            timeouts,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            health: None,
            passive: Some(Passive::default()),
            retry: Retry::default(),
            ca: None,
            credential: None,
        }
    }
}

/// Open connections per target unless `max_connections` says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// One configured target: a URL (its host may be a name standing for several addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    /// `scheme://authority` as configured: the target's label in metrics and the admin API.
    pub url: Arc<str>,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Share of requests relative to the other targets (at least 1).
    pub weight: u32,
}

/// How requests are spread over an upstream's targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// Power of two choices: the less loaded (in flight per weight) of two targets drawn by
    /// weight.
    LeastRequests,
    /// In turn, each target as often as its weight.
    RoundRobin,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::LeastRequests => "least_requests",
            Balance::RoundRobin => "round_robin",
        }
    }
}

/// `health:`: an active check of every target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Origin-form path (and query) requested with GET.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures (no answer, or not 2xx) that take a target out.
    pub unhealthy_after: u32,
    /// Consecutive passes that bring it back.
    pub healthy_after: u32,
}

/// `passive:`: consecutive failed requests eject a target for a while.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Passive {
    /// Connect errors, resets, 502/503/504 answers in a row.
    pub failures: u32,
    /// First ejection's length; doubled on each repeat, at most [`Passive::MAX_EJECTION`].
    pub eject_for: Duration,
}

impl Passive {
    pub const MAX_EJECTION: Duration = Duration::from_secs(300);
}

impl Default for Passive {
    fn default() -> Passive {
        Passive {
            failures: 5,
            eject_for: Duration::from_secs(10),
        }
    }
}

/// `retry:`: extra attempts on other targets, only when safe, within a budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retry {
    /// Extra attempts, each on another target (0: none).
    pub attempts: u32,
    /// Retries stay under this share of the upstream's requests (over 10 s) ...
    pub budget_ratio: f32,
    /// ... plus this many per second.
    pub min_per_second: u32,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 1,
            budget_ratio: 0.2,
            min_per_second: 3,
        }
    }
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
    /// `meter:`: read the token counts of each response, in this provider's shape.
    pub meter: Option<crate::meter::Provider>,
}
