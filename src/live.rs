//! What a reload may change, as one snapshot: the proxy's routes, limits and defaults, and the
//! admin API's scopes, route list and key policy. Swapped as one pointer ([`Live`]) and read
//! once per request or admin call, so neither ever sees half of one config and half of another.
//!
//! Settings that need a restart are not here: the reloader keeps the running value and warns.

use crate::config::{Config, KeyPolicy, Limits};
use crate::metrics::{Metrics, RouteMetrics, UNMATCHED};
use crate::model::{Quota, RateLimit, TokenQuota};
use crate::proxy::UpstreamSet;
use crate::routing::{RouteSpec, RouteTable};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// The config in force, shared by the proxy, the admin API and the reloader.
pub(crate) type Live = Arc<ArcSwap<LiveConfig>>;

/// One config's reloadable settings.
pub struct LiveConfig {
    pub routes: RouteTable,
    pub limits: Limits,
    /// For keys whose app sets no limit of its own.
    pub default_rate_limit: RateLimit,
    /// `rate_limit.shared` on a store other instances share (Redis); with the embedded store
    /// there is one instance, and its local limiter is the shared one.
    pub shared_rate_limits: bool,
    /// `quota:`, for keys whose app sets none.
    pub default_quota: Option<Quota>,
    /// `token_quota:`, for keys whose app sets none.
    pub default_token_quota: Option<TokenQuota>,
    /// `log.access`: one line per proxied request.
    pub access_log: bool,
    /// The config's scopes (name, description), for the admin API.
    pub scopes: Vec<(String, String)>,
    /// The routes as configured, for `GET /v1/routes`.
    pub route_specs: Vec<RouteSpec>,
    /// The `keys:` policy.
    pub key_policy: KeyPolicy,
    /// Each upstream's live targets, in config order (`Upstream::index`).
    pub upstreams: Vec<Arc<UpstreamSet>>,
    /// Per route, in the table's order.
    pub(crate) route_metrics: Vec<RouteMetrics>,
    pub(crate) unmatched: RouteMetrics,
}

opaque_debug!(LiveConfig);

impl LiveConfig {
    /// The reloadable part of `config` (its route table is taken, the rest copied), serving
    /// `upstreams` (from [`crate::proxy::Forwarder::prepare`]).
    pub fn new(
        config: &mut Config,
        metrics: &Metrics,
        upstreams: Vec<Arc<UpstreamSet>>,
    ) -> LiveConfig {
        let routes = std::mem::take(&mut config.routes);
        let route_metrics = routes
            .routes()
            .iter()
            .map(|r| {
                let metered = r.spec.meter.is_some();
                metrics.route(&r.pattern, Some(&r.spec.upstream.name), metered)
            })
            .collect();
        let unmatched = metrics.route(&Arc::from(UNMATCHED), None, false);
        LiveConfig {
            routes,
            limits: config.limits.clone(),
            default_rate_limit: config.rate_limit,
            shared_rate_limits: config.shared_rate_limit && config.store.redis.is_some(),
            default_quota: config.quota,
            default_token_quota: config.token_quota,
            access_log: config.log.access,
            scopes: config.scopes.clone(),
            route_specs: config.route_specs.clone(),
            key_policy: config.keys,
            upstreams,
            route_metrics,
            unmatched,
        }
    }

    /// A snapshot of its own, to share.
    pub fn shared(
        config: &mut Config,
        metrics: &Metrics,
        upstreams: Vec<Arc<UpstreamSet>>,
    ) -> Live {
        Arc::new(ArcSwap::from_pointee(LiveConfig::new(
            config, metrics, upstreams,
        )))
    }
}
