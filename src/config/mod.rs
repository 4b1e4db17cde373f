//! The gateway's configuration: the YAML file, read, checked and turned into [`Config`].
//!
//! [`load`] and [`parse`] either return a fully validated [`Config`] or every problem found, each with
//! `FILE:LINE:COLUMN` where a position applies, in file order: unknown keys and wrongly typed
//! values ([`syntax`]) together with the semantic checks (addresses, URLs, names, references,
//! routes). A YAML syntax error is reported too, and the rest of the file is still checked.

mod error;
mod file;
mod position;
mod routes;
mod syntax;
mod upstreams;
mod validate;
pub(crate) mod values;

#[cfg(test)]
mod tests;

pub use self::error::{ConfigErrors, Problem};
pub use self::values::cidr_contains;

use crate::model::{Quota, RateLimit, TokenQuota};
use crate::routing::{RouteSpec, RouteTable, Upstream};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Loopback only: the admin API must be exposed on purpose, never by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8001";
/// The environment variable the contract's example uses for the `admin` identity's token.
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "SCOPEGATE_ADMIN_TOKEN";
/// The name of the identity whose token comes from `admin.token_env` (shown as `created_by`).
pub const ADMIN_IDENTITY: &str = "admin";
/// Loopback; 8100 rather than 9090/9091, which a Prometheus and a Pushgateway on the same host use.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:8100";
/// Embedded store beside the config file, as in the contract's example.
pub const DEFAULT_STORE_PATH: &str = "./data";
/// A store call slower than this counts as unavailable: the request path must not hang on it.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a cached key or app is trusted without the store; bounds revocation lag in an outage.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);
/// Enough keys for a large deployment at a few hundred bytes each.
pub const DEFAULT_CACHE_MAX_ENTRIES: u64 = 100_000;
/// Default per-key sustained rate: generous for agents, still a brake on a runaway loop.
pub const DEFAULT_RATE_PER_SECOND: u32 = 50;
/// Default per-key burst: two seconds' worth of the sustained rate.
pub const DEFAULT_RATE_BURST: u32 = 100;
/// Per-instance limits by default: they cost no store round trip at all, and most deployments
/// run one instance or accept an instance count times the budget.
pub const DEFAULT_RATE_SHARED: bool = false;
/// Upstream whole-response deadline when an upstream sets no `timeout` (the contract's example value).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for an upstream's response head with `timeout: none` and no `header_timeout` (the
/// contract's default).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Time given to in-flight requests after SIGTERM before the process exits anyway.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// The most proxy workers a config may ask for.
pub const MAX_WORKERS: u64 = 1024;
/// Contract default: connections held at once before new ones wait.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Contract default: longer request targets get 414.
pub const DEFAULT_MAX_URI_BYTES: usize = 8_192;
/// Contract default: larger header blocks get 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32_768;
/// Contract default (10MiB): larger bodies get 413 unless the route sets its own `max_body`.
pub const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;
/// Contract default: a client that has not sent its headers by then is closed (slowloris).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Contract default: an idle keep-alive connection is closed after this.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that accepts none of its response for this long is cut off (with the upstream
/// call feeding it): long enough for a slow mobile link, short enough that a client that stopped
/// reading cannot hold a connection and an upstream one for good.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The validated configuration the rest of the gateway runs on.
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// The proxy listener.
    pub listen: SocketAddr,
    /// When present the proxy listener speaks TLS.
    pub tls: Option<TlsConfig>,
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub keys: KeyPolicy,
    /// Default budget for every key; an app may override it.
    pub rate_limit: RateLimit,
    /// `rate_limit.shared`: one budget per key across every instance on the Redis store.
    pub shared_rate_limit: bool,
    /// Default quota for every key; an app may override it. `None`: no quota.
    pub quota: Option<Quota>,
    /// Default token quota for every key; an app may override it. `None`: no token quota.
    pub token_quota: Option<TokenQuota>,
    /// `(name, description)` in file order.
    pub scopes: Vec<(String, String)>,
    /// In file order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// `resolver:`: DNS servers for hostname targets (empty: the system's resolver).
    pub resolver: Vec<SocketAddr>,
    pub routes: RouteTable,
    /// The routes as configured, in file order (for listing and debugging).
    pub route_specs: Vec<RouteSpec>,
    pub limits: Limits,
    /// Time given to in-flight requests on shutdown.
    pub shutdown_grace: Duration,
    /// Proxy workers (`workers:`, default the CPU count): each a single-threaded runtime with
    /// its own `SO_REUSEPORT` listener on `listen`.
    pub workers: usize,
    pub log: LogConfig,
    /// `credentials:`: the master key that seals upstream credential values.
    pub credentials: CredentialsConfig,
}

opaque_debug!(Config);

/// Where the master key comes from (`credentials.master_key_env` or `master_key_file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MasterKeySource {
    Env(String),
    /// Resolved relative to the config file's directory.
    File(PathBuf),
}

/// The `credentials:` block, with the master key read when the config was built (a variable
/// that is not set leaves `master_key` empty: credential calls then answer 503
/// `credentials_unavailable`). The key's `Debug` prints nothing of it.
#[derive(Clone, Debug, Default)]
pub struct CredentialsConfig {
    pub source: Option<MasterKeySource>,
    pub master_key: Option<Arc<crate::credentials::MasterKey>>,
}

/// The contract's `log:` block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// One line per proxied request.
    pub access: bool,
}

/// How log lines are written (`log.format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The contract's example: access lines on, so a new operator sees traffic in the log.
pub const DEFAULT_ACCESS_LOG: bool = true;

/// Certificate chain and private key (PEM), resolved relative to the config file's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `admin` (from `token_env`) first, then `admin.tokens` in file order.
    pub tokens: Vec<AdminIdentity>,
}

/// A named operator, the environment variable holding its bearer token, and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminIdentity {
    pub name: String,
    pub env: String,
    pub role: Role,
}

/// What an admin token may do. Ordered: each role may do everything the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Only `GET`.
    Read,
    /// Also create, roll, disable, enable and revoke keys.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// The names `admin.tokens` accepts.
    pub const NAMES: &'static str = "admin, operator or read";

    /// The role a config names.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "read" => Some(Role::Read),
            _ => None,
        }
    }

    /// The name the config uses for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Read => "read",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Shared store URL (`redis://`, `rediss://`, `unix://`); the embedded store is used when absent.
    pub redis: Option<String>,
    /// Starts every Redis key and channel name (`sg:` by default).
    pub prefix: String,
    /// Embedded store directory, resolved relative to the config file's directory.
    pub path: PathBuf,
    /// Deadline for one store call.
    pub timeout: Duration,
}

/// By hand, so that no `{:?}` of a config can print the Redis password.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("redis", &self.redis.as_deref().map(crate::redact::url))
            .field("prefix", &self.prefix)
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The contract's `keys:` block: expiry policy and how long revoked keys stay listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Given to a key created without `expires_in_days`; `None`: such keys do not expire.
    pub default_expires_in_days: Option<u32>,
    /// Longest `expires_in_days` accepted; `None`: up to ten years.
    pub max_expires_in_days: Option<u32>,
    pub retain_revoked: Duration,
}

/// The contract's example: revoked keys stay listed (with their usage) for 90 days.
pub const DEFAULT_RETAIN_REVOKED: Duration = Duration::from_secs(90 * 86_400);

impl Default for KeyPolicy {
    fn default() -> KeyPolicy {
        KeyPolicy {
            default_expires_in_days: None,
            max_expires_in_days: None,
            retain_revoked: DEFAULT_RETAIN_REVOKED,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub max_entries: u64,
}

/// The contract's `limits:` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    /// Bytes; a route's own `max_body` overrides it.
    pub max_body: u64,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// A connection whose client accepts no bytes for this long while the gateway has some to
    /// send is closed.
    pub send_timeout: Duration,
    /// Peers whose `X-Forwarded-For` is kept: `(network address, prefix length)`; see [`cidr_contains`].
    pub trusted_proxies: Vec<(IpAddr, u8)>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body: DEFAULT_MAX_BODY,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one(Problem::new(path, None, format!("cannot read: {e}"))))?;
    parse(path, &text)
}

/// Validates `text` as the contents of the config file at `path` (relative paths in it are resolved
/// against `path`'s directory).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    if text.trim().is_empty() {
        return Err(ConfigErrors::one(Problem::new(
            path,
            None,
            "the file is empty",
        )));
    }
    let (raw, mut problems, read) = syntax::read(path, text);
    let Some(raw) = raw else {
        return Err(ConfigErrors { problems });
    };
    let index = position::PositionIndex::build(&read);
    match validate::validate(path, raw, &index, &problems) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors { problems }),
        Err(semantic) => {
            problems.extend(semantic.problems);
            // File order, as an editor lists them; problems about the whole file last.
            problems.sort_by_key(|p| (p.line.is_none(), p.line, p.column));
            Err(ConfigErrors { problems })
        }
    }
}
