//! Starting and stopping a whole gateway: store, cache, background tasks and the three
//! listeners (proxy, admin, metrics), wired from a validated [`Config`].

use crate::admin::{Admin, AdminIdentity};
use crate::auth::Authenticator;
use crate::budgets::local::RateLimits;
use crate::budgets::quota::Quotas;
use crate::budgets::shared::SharedRateLimits;
use crate::budgets::slice::Fallback;
use crate::budgets::tokens::{self, TokenQuotas};
use crate::budgets::Budgets;
use crate::cache::KeyCache;
use crate::config::{Config, Role, StoreConfig};
use crate::credentials::CredentialCache;
use crate::lifecycle;
use crate::live::LiveConfig;
use crate::metrics::{Metrics, MetricsEndpoint};
use crate::pipeline::Pipeline;
use crate::proxy::Forwarder;
use crate::redact;
use crate::reload::{self, FixedSettings, Reloader};
use crate::server::workers::{self, Workers};
use crate::server::{serve, serve_with_tls, ConnectionSettings};
use crate::store::{EmbeddedStore, KeyStore, Ping, RedisStore, StoreError};
use crate::throttle::Throttle;
use crate::tls::{TlsAcceptorSource, TlsError};
use crate::usage;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `store` names the configured store (`store.redis` with its URL's credentials masked,
    /// or `store.path`).
    #[error("cannot open the store ({store}): {source}")]
    Store { store: String, source: StoreError },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// A gateway serving on its listeners until [`RunningGateway::shutdown`].
pub struct RunningGateway {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The proxy listener's TLS config when `tls:` is set; `replace` it to serve a new
    /// certificate to new connections.
    pub tls: Option<Arc<TlsAcceptorSource>>,
    pub store: Arc<dyn KeyStore>,
    /// The request pipeline, for measuring it without sockets.
    pub pipeline: Arc<Pipeline>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    /// The proxy's workers when there are several (one serves on this runtime).
    workers: Option<Workers>,
    usage_stop: watch::Sender<bool>,
    usage_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    reload_tx: mpsc::Sender<()>,
}

opaque_debug!(RunningGateway);

/// Opens the configured store: Redis when a URL is given, the embedded file store otherwise.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn KeyStore>, StoreError> {
    Ok(match &config.redis {
        Some(url) => {
            tracing::info!(url = %redact::url(url), "opening the Redis store");
            let store = RedisStore::open(url, config.timeout)?.with_prefix(&config.prefix);
            // Redis being down is not a reason to refuse to start: the gateway serves (not
            // ready, uncached keys 503) and connects once Redis answers.
            if let Err(e) = store.ping().await {
                tracing::warn!(url = %redact::url(url), error = %e,
                    "the Redis store does not answer yet; /readyz says 503 until it does");
            }
            Arc::new(store)
        }
        None => {
            tracing::info!(path = %config.path.display(), "opening the embedded store");
            Arc::new(EmbeddedStore::open(&config.path)?.with_timeout(config.timeout))
        }
    })
}

/// Which store the config names, for logs and errors; a Redis URL's credentials are masked.
pub fn describe_store(config: &StoreConfig) -> String {
    match &config.redis {
        Some(url) => format!("store.redis = {}", redact::url(url)),
        None => format!("store.path = {}", config.path.display()),
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn local_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

/// The proxy's listener: one, served on the caller's runtime, or one per worker.
enum ProxyListener {
    One(TcpListener),
    PerWorker(Vec<std::net::TcpListener>),
}

impl ProxyListener {
    async fn bind(addr: SocketAddr, workers: usize) -> Result<ProxyListener, StartError> {
        if workers <= 1 {
            return Ok(ProxyListener::One(bind("proxy", addr).await?));
        }
        workers::bind_reuseport(addr, workers)
            .map(ProxyListener::PerWorker)
            .map_err(|source| StartError::Bind {
                what: "proxy",
                addr,
                source,
            })
    }

    fn local_addr(&self, fallback: SocketAddr) -> SocketAddr {
        match self {
            ProxyListener::One(listener) => local_addr(listener, fallback),
            ProxyListener::PerWorker(listeners) => listeners
                .first()
                .and_then(|l| l.local_addr().ok())
                .unwrap_or(fallback),
        }
    }
}

/// Starts a gateway. `admin_tokens` are (identity name, token) pairs, already read from the
/// environment by the caller; each identity's role is the one `admin.tokens` gives that name
/// (`admin` for a name the config does not list, as for a bare `name: VAR` entry).
pub async fn start(
    config: Config,
    admin_tokens: Vec<(String, String)>,
) -> Result<RunningGateway, StartError> {
    let store = open_store(&config.store)
        .await
        .map_err(|source| StartError::Store {
            store: describe_store(&config.store),
            source,
        })?;
    start_with_store(config, admin_tokens, store).await
}

/// Like [`start`], with a store opened by the caller.
pub async fn start_with_store(
    mut config: Config,
    admin_tokens: Vec<(String, String)>,
    store: Arc<dyn KeyStore>,
) -> Result<RunningGateway, StartError> {
    let fixed = FixedSettings::of(&config);
    let identities = identities(&config, &admin_tokens);
    let config_path = config.path.clone();
    let store_name = describe_store(&config.store);
    let tls = match &config.tls {
        Some(t) => Some(Arc::new(TlsAcceptorSource::from_files(&t.cert, &t.key)?)),
        None => None,
    };
    let proxy_listener = ProxyListener::bind(config.listen, config.workers).await?;
    let admin_listener = bind("admin", config.admin.listen).await?;
    let metrics_listener = bind("metrics", config.metrics.listen).await?;

    let metrics = Metrics::new();
    let credentials = Arc::new(CredentialCache::new(
        store.clone(),
        config.credentials.master_key.clone(),
    ));
    let cache = KeyCache::new(
        store.clone(),
        config.cache.ttl,
        config.cache.max_entries,
        metrics.clone(),
    )
    .with_credentials(credentials.clone());
    let mut background = Vec::new();
    background.extend(cache.spawn_invalidation_listener());
    wait_for_feed(&*store, config.store.timeout).await;
    background.push(spawn_metrics_upkeep(metrics.clone()));
    let (stop, stop_rx) = watch::channel(false);
    let (usage_stop, usage_stop_rx) = watch::channel(false);
    let (usage, usage_task) = usage::spawn(store.clone(), metrics.clone(), usage_stop_rx);

    let settings = ConnectionSettings {
        max_connections: config.limits.max_connections,
        header_read_timeout: config.limits.header_read_timeout,
        idle_timeout: config.limits.idle_timeout,
        send_timeout: config.limits.send_timeout,
        max_header_bytes: config.limits.max_header_bytes,
        grace: config.shutdown_grace,
        slots: None,
        accepted: None,
    };
    let fallback = Arc::new(Fallback::new(metrics.clone()));
    let shared_rate_limits = SharedRateLimits::new(store.clone(), fallback.clone());
    if config.shared_rate_limit && config.store.redis.is_none() {
        tracing::info!("rate_limit.shared: one instance on the embedded store; its own limiter is the shared one");
    }
    let quotas = Quotas::new(store.clone(), fallback);
    let admin_quotas = quotas.clone();
    let tokens = Arc::new(TokenQuotas::new(store.clone()));
    let forwarder = Forwarder::new(&config.resolver, metrics.clone())?;
    let upstreams = forwarder.prepare(&config.upstreams, &[]).await?;
    let live = LiveConfig::shared(&mut config, &metrics, upstreams);
    let pipeline = Arc::new(Pipeline {
        live: live.clone(),
        budgets: Budgets {
            local: RateLimits::new(config.cache.max_entries),
            shared: shared_rate_limits,
            quotas,
            tokens: tokens.clone(),
        },
        auth: Authenticator::new(cache.clone()),
        forwarder,
        usage,
        credentials: credentials.clone(),
        metrics: metrics.clone(),
        proto: if config.tls.is_some() {
            "https"
        } else {
            "http"
        },
    });
    background.push(spawn_rate_limit_upkeep(pipeline.clone()));
    background.push(spawn_credential_uses(credentials));
    background.push(spawn_token_flush(tokens.clone()));
    let admin = Arc::new(Admin {
        store: store.clone(),
        cache: cache.clone(),
        live,
        identities,
        metrics: metrics.clone(),
        quotas: admin_quotas,
        tokens: tokens.clone(),
        master_key: config.credentials.master_key.clone(),
    });
    background.push(spawn_lifecycle_upkeep(admin.clone()));
    let endpoint = Arc::new(MetricsEndpoint {
        metrics: metrics.clone(),
        store: store.clone(),
    });

    let (reload_tx, reload_rx) = mpsc::channel(1);
    let config_path_shown = config_path.clone();
    let reloader = Reloader::new(
        config_path,
        fixed,
        pipeline.clone(),
        cache,
        metrics.clone(),
        tls.clone(),
    );
    background.push(reload::spawn(
        Arc::new(reloader),
        reload_rx,
        stop_rx.clone(),
    ));

    let addrs = (
        proxy_listener.local_addr(config.listen),
        local_addr(&admin_listener, config.admin.listen),
        local_addr(&metrics_listener, config.metrics.listen),
    );
    let proxy_pipeline = pipeline.clone();
    let failed_logins = Arc::new(Throttle::new(FAILED_LOGIN_LINES, FAILED_LOGIN_WINDOW));
    let proxy_settings = ConnectionSettings {
        slots: Some(Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_connections,
        ))),
        ..settings.clone()
    };
    let serve_proxy = {
        let (tls, stop_rx, metrics) = (tls.clone(), stop_rx.clone(), metrics.clone());
        move |listener: TcpListener, worker: usize| {
            // On the worker's own thread: the upstream connections it opens are kept for it.
            crate::proxy::pool::set_worker(worker);
            let pipeline = proxy_pipeline.clone();
            let settings = ConnectionSettings {
                accepted: Some(metrics.worker_connections(worker)),
                ..proxy_settings.clone()
            };
            serve_with_tls(
                listener,
                settings,
                tls.clone(),
                move |request, peer| {
                    let pipeline = pipeline.clone();
                    async move { pipeline.handle(request, peer).await }
                },
                stop_rx.clone(),
            )
        }
    };
    let (proxy_server, workers) = match proxy_listener {
        ProxyListener::One(listener) => (Some(tokio::spawn(serve_proxy(listener, 0))), None),
        ProxyListener::PerWorker(listeners) => {
            let workers =
                Workers::start(listeners, serve_proxy).map_err(|source| StartError::Bind {
                    what: "proxy",
                    addr: addrs.0,
                    source,
                })?;
            (None, Some(workers))
        }
    };
    let servers = vec![
        tokio::spawn(serve(
            admin_listener,
            settings.clone(),
            move |request, peer| {
                let admin = admin.clone();
                let failed_logins = failed_logins.clone();
                async move {
                    let response = admin.handle(request).await;
                    if response.status() == http::StatusCode::UNAUTHORIZED {
                        log_failed_login(&failed_logins, peer);
                    }
                    response
                }
            },
            stop_rx.clone(),
        )),
        tokio::spawn(serve(
            metrics_listener,
            settings,
            move |request, _peer| {
                let endpoint = endpoint.clone();
                async move { endpoint.handle(request).await }
            },
            stop_rx,
        )),
    ];
    // The one line that says what this process is: its config, its store, its listeners.
    tracing::info!(
        config = %config_path_shown.display(),
        store = %store_name,
        proxy = %addrs.0,
        admin = %addrs.1,
        metrics = %addrs.2,
        version = env!("CARGO_PKG_VERSION"),
        "scopegate listening"
    );
    let servers = servers.into_iter().chain(proxy_server).collect();
    Ok(RunningGateway {
        proxy_addr: addrs.0,
        admin_addr: addrs.1,
        metrics_addr: addrs.2,
        tls,
        store,
        pipeline,
        stop,
        servers,
        workers,
        usage_stop,
        usage_task,
        background,
        reload_tx,
    })
}

/// The admin identities of `tokens`, each with its role from the config.
fn identities(config: &Config, tokens: &[(String, String)]) -> Vec<AdminIdentity> {
    let role_of = |name: &str| {
        config
            .admin
            .tokens
            .iter()
            .find(|t| t.name == name)
            .map_or(Role::Admin, |t| t.role)
    };
    tokens
        .iter()
        .map(|(name, token)| AdminIdentity::new(name.clone(), token, role_of(name)))
        .collect()
}

/// Failed admin logins logged per window: enough to see who is trying, too few to fill a disk.
const FAILED_LOGIN_LINES: u32 = 10;
const FAILED_LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// A warning per failed admin login (a missing or wrong token), within the throttle's budget.
fn log_failed_login(throttle: &Throttle, client: SocketAddr) {
    if let Some(held_back) = throttle.admit(std::time::Instant::now()) {
        tracing::warn!(
            %client,
            held_back,
            "admin login failed: missing or unknown token"
        );
    }
}

/// The exporter keeps histogram samples in buffers until upkeep folds them in.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);
/// How often idle rate-limit state is dropped; the smallest idle time is one second.
const RATE_LIMIT_UPKEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Gives the invalidation feed the time to subscribe before keyed traffic is served, so the
/// first requests' fills can be cached. If it does not (Redis down), the gateway serves all the
/// same: fills are answered uncached until the feed is live.
async fn wait_for_feed(store: &dyn KeyStore, timeout: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + timeout * 4;
    while !store.feed_live() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    if !store.feed_live() {
        tracing::warn!("not subscribed to invalidations yet; keys are not cached until it is");
    }
}

/// Key lifecycle upkeep (see [`crate::lifecycle`]); the retention is read each round, so a
/// reloaded `keys.retain_revoked` applies from the next one.
fn spawn_lifecycle_upkeep(admin: Arc<Admin>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(lifecycle::UPKEEP_EVERY);
        loop {
            tick.tick().await;
            lifecycle::upgrade(&*admin.store).await;
            lifecycle::revoke_keys_of_deleted_apps(admin.store.clone()).await;
            let retain = admin.live.load().key_policy.retain_revoked;
            lifecycle::purge_revoked(&*admin.store, retain).await;
            lifecycle::count_expiring_soon(&*admin.store, &admin.metrics).await;
        }
    })
}

/// Drops idle rate-limit state off the request path; gives unused quota slices back and
/// settles what was admitted during a store outage.
fn spawn_rate_limit_upkeep(pipeline: Arc<Pipeline>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RATE_LIMIT_UPKEEP);
        loop {
            tick.tick().await;
            pipeline.budgets.upkeep().await;
        }
    })
}

/// Sends tokens spent on token quotas and reads back every instance's totals (see
/// [`TokenQuotas::flush`]).
fn spawn_token_flush(tokens: Arc<TokenQuotas>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(tokens::FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            tokens.flush().await;
        }
    })
}

/// How often credential uses are written as `last_used_at`: the admin API's view of them
/// lags by at most this.
const CREDENTIAL_USES_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes credential uses off the request path (see [`CredentialCache::flush_uses`]).
fn spawn_credential_uses(credentials: Arc<CredentialCache>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CREDENTIAL_USES_EVERY);
        loop {
            tick.tick().await;
            if let Err(e) = credentials.flush_uses().await {
                tracing::debug!(error = %e, "credential uses not written yet; retried");
            }
        }
    })
}

fn spawn_metrics_upkeep(metrics: Arc<Metrics>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        loop {
            tick.tick().await;
            metrics.run_upkeep();
        }
    })
}

impl RunningGateway {
    /// Asks for the config file to be loaded again (as SIGHUP does). Returns at once.
    pub fn reload(&self) {
        let _ = self.reload_tx.try_send(());
    }

    /// Stops accepting, drains in-flight requests, then flushes bookkeeping to the store.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for server in self.servers {
            let _ = server.await;
        }
        if let Some(workers) = &mut self.workers {
            workers.drain().await;
        }
        let _ = self.usage_stop.send(true);
        let _ = self.usage_task.await;
        let _ = self.pipeline.credentials.flush_uses().await;
        // Unused quota slices go back, so the counts say what was admitted.
        self.pipeline.budgets.quotas.give_back_all().await;
        // Tokens of the last responses, so no instance's spending is lost with it.
        self.pipeline.budgets.tokens.flush().await;
        for task in self.background {
            task.abort();
        }
        if let Some(workers) = self.workers {
            workers.finish().await;
        }
        tracing::info!("scopegate stopped");
    }
}
