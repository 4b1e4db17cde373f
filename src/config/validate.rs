//! Turns the file as written ([`RawConfig`]) into a [`Config`], collecting every problem on the way.

use super::error::{ConfigErrors, Problem};
use super::file::{
    Entries, RawAdmin, RawCache, RawConfig, RawCredentials, RawKeys, RawLimits, RawStore,
};
use super::position::{at, PositionIndex, YamlPath};
use super::*;
use crate::credentials::MasterKey;
use crate::redact;
use crate::routing::{RouteProblem, RouteTable};
use crate::tls::TlsAcceptorSource;
use std::fmt::Display;
use std::net::Ipv4Addr;

/// Problems found so far, positioned through the index.
pub(super) struct Check<'a> {
    file: &'a Path,
    index: &'a PositionIndex,
    pub(super) problems: Vec<Problem>,
    /// Reported while reading the file (unknown keys, wrong types).
    earlier: &'a [Problem],
}

impl<'a> Check<'a> {
    pub(super) fn new(file: &'a Path, index: &'a PositionIndex) -> Check<'a> {
        Check {
            file,
            index,
            problems: Vec::new(),
            earlier: &[],
        }
    }

    /// A problem with the value at `path` (message prefixed with the path).
    pub(super) fn at(&mut self, path: &YamlPath, msg: impl Display) {
        let pos = self.index.value(path);
        self.problems
            .push(Problem::new(self.file, pos, format!("{path}: {msg}")));
    }

    /// A problem with the key of the entry at `path`.
    pub(super) fn at_key(&mut self, path: &YamlPath, msg: impl Display) {
        let pos = self.index.key(path);
        self.problems
            .push(Problem::new(self.file, pos, format!("{path}: {msg}")));
    }

    /// The entries of a name mapping at `path`, after reporting each repeated name.
    pub(super) fn entries<V>(
        &mut self,
        path: &YamlPath,
        raw: Option<Entries<V>>,
    ) -> Vec<(String, V)> {
        let raw = raw.unwrap_or_default();
        for name in raw.repeated {
            let entry = path.key(&name);
            let pos = self.index.repeated_key(&entry);
            let msg = format!("{entry}: {name:?} is defined twice");
            self.problems.push(Problem::new(self.file, pos, msg));
        }
        raw.entries
    }

    /// The value, or `None` after recording the problem at `path`.
    /// Whether a problem was already reported at `path` or under it (e.g. a misspelt key,
    /// which would make a second "missing key" problem misleading).
    pub(super) fn reported_under(&self, path: &YamlPath) -> bool {
        let path = path.to_string();
        let mut all = self.earlier.iter().chain(&self.problems);
        all.any(|p| p.message.starts_with(&path))
    }

    pub(super) fn ok<T>(&mut self, path: &YamlPath, r: Result<T, String>) -> Option<T> {
        r.map_err(|msg| self.at(path, msg)).ok()
    }
}

/// Placeholder for a value that failed to validate (never returned: the config is refused).
const NO_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

pub(super) fn validate(
    file: &Path,
    raw: RawConfig,
    index: &PositionIndex,
    earlier: &[Problem],
) -> Result<Config, ConfigErrors> {
    let mut c = Check::new(file, index);
    c.earlier = earlier;
    let dir = file.parent().unwrap_or(Path::new(""));

    let listen = socket_addr(&mut c, &at(&["listen"]), &raw.listen);
    let tls = raw.tls.map(|t| {
        let mut named = true;
        for (key, value) in [("cert", &t.cert), ("key", &t.key)] {
            if value.trim().is_empty() {
                c.at(&at(&["tls", key]), "must name a PEM file");
                named = false;
            }
        }
        let tls = TlsConfig {
            cert: dir.join(t.cert),
            key: dir.join(t.key),
        };
        // Read now, so a missing file or a key that does not match is a `check` problem.
        if named {
            if let Err(e) = TlsAcceptorSource::load(&tls.cert, &tls.key) {
                c.at(&at(&["tls", "cert"]), e.to_string());
            }
        }
        tls
    });
    let admin = admin(&mut c, raw.admin.unwrap_or_default());
    let metrics_listen = raw.metrics.and_then(|m| m.listen);
    let metrics = MetricsConfig {
        listen: socket_addr(
            &mut c,
            &at(&["metrics", "listen"]),
            metrics_listen.as_deref().unwrap_or(DEFAULT_METRICS_LISTEN),
        ),
    };
    distinct_listeners(&mut c, listen, admin.listen, metrics.listen);
    let store = store(&mut c, dir, raw.store.unwrap_or_default());
    let cache = cache(&mut c, raw.cache.unwrap_or_default());
    let keys = key_policy(&mut c, raw.keys.unwrap_or_default());
    let shared_rate_limit = raw
        .rate_limit
        .as_ref()
        .and_then(|r| r.shared)
        .unwrap_or(DEFAULT_RATE_SHARED);
    let rate_limit = raw.rate_limit.map_or(
        RateLimit {
            per_second: DEFAULT_RATE_PER_SECOND,
            burst: DEFAULT_RATE_BURST,
        },
        |r| RateLimit {
            per_second: r.per_second,
            burst: r.burst,
        },
    );
    for (key, value) in [
        ("per_second", rate_limit.per_second),
        ("burst", rate_limit.burst),
    ] {
        if value < 1 {
            c.at(&at(&["rate_limit", key]), "must be at least 1");
        }
    }
    let quota = raw.quota.filter(|q| valid_quota(&mut c, q));
    let token_quota = raw.token_quota.filter(|q| valid_token_quota(&mut c, q));
    let scopes = c.entries(&at(&["scopes"]), raw.scopes);
    let scopes = self::scopes(&mut c, scopes);
    let raw_upstreams = c.entries(&at(&["upstreams"]), Some(raw.upstreams));
    // Routes naming an upstream that is declared but broken get no second, misleading problem.
    let declared: Vec<String> = raw_upstreams.iter().map(|(n, _)| n.clone()).collect();
    let upstreams = super::upstreams::upstreams(&mut c, dir, raw_upstreams);
    let resolver = super::upstreams::resolver(&mut c, raw.resolver);
    let (route_specs, origin) = routes::routes(&mut c, raw.routes, &scopes, &upstreams, &declared);
    let limits = limits(&mut c, raw.limits.unwrap_or_default());
    let shutdown_grace = match raw.shutdown_grace {
        Some(text) => c
            .ok(&at(&["shutdown_grace"]), values::duration(&text, true))
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        None => DEFAULT_SHUTDOWN_GRACE,
    };

    let workers = workers(&mut c, raw.workers);

    let raw_log = raw.log.unwrap_or_default();
    let log = LogConfig {
        format: raw_log.format.unwrap_or_default(),
        access: raw_log.access.unwrap_or(DEFAULT_ACCESS_LOG),
    };

    let credentials = credentials(&mut c, dir, raw.credentials);
    if credentials.source.is_none() {
        for upstream in upstreams.iter().filter(|u| u.credential.is_some()) {
            c.at(
                &at(&["upstreams", &upstream.name, "credential"]),
                "names a stored credential, but the config has no `credentials:` block \
                 (master_key_env or master_key_file) to open it with",
            );
        }
    }

    let table = RouteTable::build(route_specs.clone())
        .map_err(|problems| route_problems(&mut c, problems, &origin));
    match table {
        Ok(routes) if c.problems.is_empty() => Ok(Config {
            path: file.to_path_buf(),
            listen,
            tls,
            admin,
            metrics,
            store,
            cache,
            keys,
            rate_limit,
            shared_rate_limit,
            quota,
            token_quota,
            scopes,
            upstreams,
            resolver,
            routes,
            route_specs,
            limits,
            shutdown_grace,
            workers,
            log,
            credentials,
        }),
        _ => Err(ConfigErrors {
            problems: c.problems,
        }),
    }
}

/// Reports the route table's problems at the `path` of the route each is about.
pub(super) fn route_problems(c: &mut Check<'_>, problems: Vec<RouteProblem>, origin: &[usize]) {
    for p in problems {
        // `index` is into the specs given to the table; map it back to the route's place in the file.
        let route = origin.get(p.index).copied().unwrap_or(p.index);
        c.at(&at(&["routes"]).index(route).key("path"), p.message);
    }
}

fn socket_addr(c: &mut Check<'_>, path: &YamlPath, text: &str) -> SocketAddr {
    let parsed = text.trim().parse::<SocketAddr>().map_err(|_| {
        format!("{text:?} is not an IP:PORT address (e.g. 127.0.0.1:8080 or [::1]:8080)")
    });
    c.ok(path, parsed).unwrap_or(NO_ADDR)
}

/// Two listeners on one address would fail at bind time; say so now.
fn distinct_listeners(
    c: &mut Check<'_>,
    listen: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
) {
    let named = [
        ("listen", listen, at(&["listen"])),
        ("admin.listen", admin, at(&["admin", "listen"])),
        ("metrics.listen", metrics, at(&["metrics", "listen"])),
    ];
    for (i, (_, addr, path)) in named.iter().enumerate() {
        let clash = named[..i]
            .iter()
            .find(|(_, other, _)| other == addr && addr.port() != 0);
        if let Some((name, _, _)) = clash {
            c.at(path, format!("{addr} is already used by `{name}`"));
        }
    }
}

/// `credentials:`: exactly one of `master_key_env` and `master_key_file`, read now so a key of
/// the wrong length or encoding is a `check` problem naming the variable or file (never the
/// key). A variable that is not set is no problem: the gateway runs without a master key.
fn credentials(c: &mut Check<'_>, dir: &Path, raw: Option<RawCredentials>) -> CredentialsConfig {
    let Some(raw) = raw else {
        return CredentialsConfig::default();
    };
    let (source, path) = match (raw.master_key_env, raw.master_key_file) {
        (Some(_), Some(_)) => {
            c.at(
                &at(&["credentials", "master_key_file"]),
                "give master_key_env or master_key_file, not both",
            );
            return CredentialsConfig::default();
        }
        (None, None) => {
            c.at(
                &at(&["credentials"]),
                "give master_key_env (a variable holding 32 random bytes, base64) or master_key_file",
            );
            return CredentialsConfig::default();
        }
        (Some(var), None) => (
            MasterKeySource::Env(var),
            at(&["credentials", "master_key_env"]),
        ),
        (None, Some(file)) => (
            MasterKeySource::File(dir.join(file)),
            at(&["credentials", "master_key_file"]),
        ),
    };
    let master_key = match &source {
        MasterKeySource::Env(var) => match values::env_name(var) {
            Err(msg) => {
                c.at(&path, msg);
                None
            }
            Ok(()) => MasterKey::from_env(var)
                .map_err(|e| c.at(&path, format!("the master key in ${var} {e}")))
                .ok()
                .flatten(),
        },
        MasterKeySource::File(file) => MasterKey::from_file(file)
            .map_err(|e| c.at(&path, format!("the master key in {} {e}", file.display())))
            .ok(),
    };
    CredentialsConfig {
        source: Some(source),
        master_key: master_key.map(Arc::new),
    }
}

fn admin(c: &mut Check<'_>, raw: RawAdmin) -> AdminConfig {
    let listen = socket_addr(
        c,
        &at(&["admin", "listen"]),
        raw.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
    );
    let token_env = raw
        .token_env
        .unwrap_or_else(|| DEFAULT_ADMIN_TOKEN_ENV.to_owned());
    c.ok(&at(&["admin", "token_env"]), values::env_name(&token_env));
    let mut tokens = vec![AdminIdentity {
        name: ADMIN_IDENTITY.to_owned(),
        env: token_env,
        role: Role::Admin,
    }];
    for (name, raw) in c.entries(&at(&["admin", "tokens"]), raw.tokens) {
        let path = at(&["admin", "tokens"]).key(&name);
        if name == ADMIN_IDENTITY {
            c.at_key(
                &path,
                "`admin` is the identity of `admin.token_env`; pick another name",
            );
        } else if let Err(msg) = values::plain_name("operator", &name) {
            c.at_key(&path, msg);
        }
        let env_path = if raw.mapping { path.key("env") } else { path };
        let env = raw.env;
        if let Err(msg) = values::env_name(&env) {
            c.at(&env_path, msg);
        } else if let Some(other) = tokens.iter().find(|t| t.env == env) {
            c.at(
                &env_path,
                format!("{env} is already the token of `{}`", other.name),
            );
        }
        let role = token_role(c, &at(&["admin", "tokens"]).key(&name), raw.role);
        tokens.push(AdminIdentity { name, env, role });
    }
    AdminConfig { listen, tokens }
}

/// An entry's role: `admin` when it names none, as a bare `name: VAR` entry does.
fn token_role(c: &mut Check<'_>, entry: &YamlPath, role: Option<String>) -> Role {
    let Some(name) = role else {
        return Role::Admin;
    };
    Role::parse(&name).unwrap_or_else(|| {
        let expected = Role::NAMES;
        c.at(
            &entry.key("role"),
            format!("unknown role {name:?}; expected {expected}"),
        );
        // Never used: the config is refused.
        Role::Read
    })
}

fn store(c: &mut Check<'_>, dir: &Path, raw: RawStore) -> StoreConfig {
    if let Some(url) = &raw.redis {
        c.ok(&at(&["store", "redis"]), redis_url(url));
    }
    let path = raw.path.unwrap_or_else(|| DEFAULT_STORE_PATH.to_owned());
    if path.trim().is_empty() {
        c.at(&at(&["store", "path"]), "must name a directory");
    }
    let timeout = match raw.timeout {
        Some(text) => c
            .ok(&at(&["store", "timeout"]), values::duration(&text, false))
            .unwrap_or(DEFAULT_STORE_TIMEOUT),
        None => DEFAULT_STORE_TIMEOUT,
    };
    let prefix = raw
        .prefix
        .unwrap_or_else(|| crate::store::DEFAULT_PREFIX.to_owned());
    if let Err(message) = valid_prefix(&prefix) {
        c.at(&at(&["store", "prefix"]), message);
    }
    StoreConfig {
        redis: raw.redis,
        prefix,
        path: dir.join(path),
        timeout,
    }
}

/// Printable, without spaces (key names show up in `redis-cli` and logs), and short.
fn valid_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 64 {
        return Err("must be 1 to 64 characters (e.g. \"sg:\" or \"tenant-a:\")".to_owned());
    }
    if !prefix.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!("{prefix:?} must be printable ASCII without spaces"));
    }
    Ok(())
}

/// A Redis URL the store can connect with: checked here, as the store will parse it, so that a
/// malformed one is a `check` problem rather than a start-up failure. Messages show the URL
/// with its credentials masked.
fn redis_url(url: &str) -> Result<(), String> {
    let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
    let shown = redact::url(url);
    if !schemes
        .iter()
        .any(|s| url.starts_with(s) && url.len() > s.len())
    {
        return Err(format!(
            "{shown:?} must be a redis://, rediss:// or unix:// URL"
        ));
    }
    redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| {
        let why = redact::scrub(&e.to_string(), url);
        format!("{shown:?} is not a usable Redis URL: {why}")
    })?;
    Ok(())
}

fn key_policy(c: &mut Check<'_>, raw: RawKeys) -> KeyPolicy {
    let retain_revoked = match raw.retain_revoked {
        Some(text) => c
            .ok(
                &at(&["keys", "retain_revoked"]),
                values::duration(&text, true),
            )
            .unwrap_or(DEFAULT_RETAIN_REVOKED),
        None => DEFAULT_RETAIN_REVOKED,
    };
    for (field, days) in [
        ("default_expires_in_days", raw.default_expires_in_days),
        ("max_expires_in_days", raw.max_expires_in_days),
    ] {
        if days == Some(0) {
            c.at(&at(&["keys", field]), "must be at least 1");
        }
    }
    if let (Some(default), Some(max)) = (raw.default_expires_in_days, raw.max_expires_in_days) {
        if default > max {
            c.at(
                &at(&["keys", "default_expires_in_days"]),
                format!("must not be more than max_expires_in_days ({max})"),
            );
        }
    }
    KeyPolicy {
        default_expires_in_days: raw.default_expires_in_days,
        max_expires_in_days: raw.max_expires_in_days,
        retain_revoked,
    }
}

/// Whether the top-level `quota:` can be used; each problem is reported at its window.
fn valid_quota(c: &mut Check<'_>, quota: &Quota) -> bool {
    let mut ok = true;
    for (key, value) in [("per_day", quota.per_day), ("per_month", quota.per_month)] {
        if value == Some(0) {
            c.at(
                &at(&["quota", key]),
                "must be at least 1 (leave it out for no limit)",
            );
            ok = false;
        }
    }
    if !quota.is_limited() {
        c.at(&at(&["quota"]), "give per_day, per_month or both");
        ok = false;
    }
    ok
}

/// Whether the top-level `token_quota:` can be used; each problem is reported at its window.
fn valid_token_quota(c: &mut Check<'_>, quota: &TokenQuota) -> bool {
    let mut ok = true;
    for (window, value) in quota.windows() {
        if value == Some(0) {
            let key = format!("per_{window}");
            c.at(
                &at(&["token_quota", &key]),
                "must be at least 1 (leave it out for no limit)",
            );
            ok = false;
        }
    }
    if !quota.is_limited() {
        c.at(
            &at(&["token_quota"]),
            "give per_minute, per_day, per_month or any of them",
        );
        ok = false;
    }
    ok
}

fn cache(c: &mut Check<'_>, raw: RawCache) -> CacheConfig {
    let ttl = match raw.ttl {
        Some(text) => c
            .ok(&at(&["cache", "ttl"]), values::duration(&text, false))
            .unwrap_or(DEFAULT_CACHE_TTL),
        None => DEFAULT_CACHE_TTL,
    };
    let max_entries = raw.max_entries.unwrap_or(DEFAULT_CACHE_MAX_ENTRIES);
    if max_entries < 1 {
        c.at(&at(&["cache", "max_entries"]), "must be at least 1");
    }
    CacheConfig { ttl, max_entries }
}

fn scopes(c: &mut Check<'_>, raw: Vec<(String, String)>) -> Vec<(String, String)> {
    for (name, description) in &raw {
        let path = at(&["scopes"]).key(name);
        if name == "public" {
            c.at_key(
                &path,
                "`public` is reserved (routes use `scope: public` to need no key); it cannot be defined",
            );
        } else if let Err(msg) = values::scope_name(name) {
            c.at_key(&path, msg);
        }
        if description.trim().is_empty() {
            c.at(&path, "needs a description");
        }
    }
    raw
}

fn limits(c: &mut Check<'_>, raw: RawLimits) -> Limits {
    let d = Limits::default();
    let mut count = |key: &str, value: Option<u64>, default: usize| -> usize {
        match value.map(usize::try_from) {
            None => default,
            Some(Ok(n)) if n >= 1 => n,
            Some(_) => {
                c.at(&at(&["limits", key]), "must be at least 1");
                default
            }
        }
    };
    let max_connections = count("max_connections", raw.max_connections, d.max_connections);
    let max_uri_bytes = count("max_uri_bytes", raw.max_uri_bytes, d.max_uri_bytes);
    let max_header_bytes = count("max_header_bytes", raw.max_header_bytes, d.max_header_bytes);
    let max_body = match &raw.max_body {
        Some(v) => c
            .ok(&at(&["limits", "max_body"]), routes::size_value(v))
            .unwrap_or(d.max_body),
        None => d.max_body,
    };
    let mut timeout = |key: &str, value: Option<String>, default: Duration| match value {
        Some(text) => c
            .ok(&at(&["limits", key]), values::duration(&text, false))
            .unwrap_or(default),
        None => default,
    };
    let header_read_timeout = timeout(
        "header_read_timeout",
        raw.header_read_timeout,
        d.header_read_timeout,
    );
    let idle_timeout = timeout("idle_timeout", raw.idle_timeout, d.idle_timeout);
    let send_timeout = timeout("send_timeout", raw.send_timeout, d.send_timeout);
    let mut trusted_proxies = Vec::new();
    for (i, text) in raw.trusted_proxies.unwrap_or_default().iter().enumerate() {
        let path = at(&["limits", "trusted_proxies"]).index(i);
        trusted_proxies.extend(c.ok(&path, values::cidr(text)));
    }
    Limits {
        max_connections,
        max_uri_bytes,
        max_header_bytes,
        max_body,
        header_read_timeout,
        idle_timeout,
        send_timeout,
        trusted_proxies,
    }
}

/// `workers:`, or one per CPU the process may run on.
fn workers(c: &mut Check<'_>, raw: Option<u64>) -> usize {
    let Some(n) = raw else {
        return std::thread::available_parallelism().map_or(1, |n| n.get());
    };
    if !(1..=super::MAX_WORKERS).contains(&n) {
        c.at(
            &at(&["workers"]),
            format!("must be between 1 and {}", super::MAX_WORKERS),
        );
        return 1;
    }
    usize::try_from(n).unwrap_or(1)
}
