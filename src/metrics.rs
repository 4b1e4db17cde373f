//! Metrics and the metrics listener (`/metrics`, `/healthz`, `/readyz`).
//!
//! Each gateway owns its Prometheus recorder (no process-global state, so several gateways can
//! run in one process). Handles are registered ahead of the request path — per route, per
//! upstream, per reason — so recording a request formats no string and takes no global lock;
//! only a label combination seen for the first time (a new status or app on a route) registers.
//!
//! Every family has HELP text (`promtool check metrics` is clean); counters whose labels are a
//! known, bounded set are registered at start, so they are exported at 0 before anything
//! happens; process metrics (CPU, memory, file descriptors) are sampled at each scrape.

use crate::store::KeyStore;
use bytes::Bytes;
use dashmap::DashMap;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A readiness probe must answer quickly even when the store hangs.
const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// Latency buckets for a proxy: from 100 µs (a cached rejection) to 30 s (a slow upstream).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// The `route` label of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";
/// The `app` label of requests without a principal.
const NO_APP: &str = "none";

/// Why a caller was turned away, as the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    MissingKey,
    InvalidKey,
    ExpiredKey,
    ScopeDenied,
    DisabledKey,
    IpNotAllowed,
}

/// Which store call failed, as the `op` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// A key or app lookup on the request path.
    Lookup,
    /// Writing bookkeeping (last use, usage counts).
    Flush,
    /// The readiness probe.
    Ping,
    /// An admin API call.
    Admin,
}

impl StoreOp {
    const ALL: [StoreOp; 4] = [
        StoreOp::Lookup,
        StoreOp::Flush,
        StoreOp::Ping,
        StoreOp::Admin,
    ];

    fn label(self) -> &'static str {
        match self {
            StoreOp::Lookup => "lookup",
            StoreOp::Flush => "flush",
            StoreOp::Ping => "ping",
            StoreOp::Admin => "admin",
        }
    }
}

/// One gateway's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    /// Samples CPU, memory and file descriptors of this process into `recorder` at each scrape.
    process: metrics_process::Collector,
    handle: PrometheusHandle,
    auth_failures: [Counter; 6],
    cache_hit: Counter,
    cache_miss: Counter,
    store_errors: [Counter; 4],
    reload_ok: Counter,
    reload_error: Counter,
    usage_dropped: Counter,
    /// Keys (not revoked) that expire within a week; set by the lifecycle upkeep.
    keys_expiring_soon: metrics::Gauge,
    rate_limited: DashMap<Arc<str>, Counter, foldhash::fast::RandomState>,
    quota_exceeded: DashMap<Arc<str>, Counter, foldhash::fast::RandomState>,
    token_quota_exceeded: DashMap<Arc<str>, Counter, foldhash::fast::RandomState>,
    /// 1 while shared limits fall back to per-instance ones (the store is unreachable).
    shared_limits_fallback: metrics::Gauge,
}

opaque_debug!(Metrics);

/// The handles of one route (or of unmatched requests).
pub struct RouteMetrics {
    pattern: Arc<str>,
    duration: Histogram,
    upstream_duration: Option<Histogram>,
    /// Labels of authenticated requests only (app ids, bounded methods and statuses), so a
    /// fast (seeded) hash is safe here.
    requests: DashMap<RequestLabels, Counter, foldhash::fast::RandomState>,
    /// On a metered route: tokens by app (input, output), and responses without usage.
    tokens: Option<RouteTokens>,
}

struct RouteTokens {
    by_app: DashMap<Arc<str>, [Counter; 2], foldhash::fast::RandomState>,
    missing: Counter,
}

opaque_debug!(RouteMetrics);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RequestLabels {
    method: Method,
    status: u16,
    app: Option<Arc<str>>,
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        describe(&recorder);
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());
        recorder
            .register_gauge(
                &key(
                    "scopegate_build_info",
                    &[("version", env!("CARGO_PKG_VERSION"))],
                ),
                &METADATA,
            )
            .set(1.0);
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &METADATA)
        };
        let reason = |r: &'static str| counter("scopegate_auth_failures_total", &[("reason", r)]);
        let op = |o: StoreOp| counter("scopegate_store_errors_total", &[("op", o.label())]);
        let metrics = Metrics {
            auth_failures: [
                reason("missing_key"),
                reason("invalid_key"),
                reason("expired_key"),
                reason("scope_denied"),
                reason("disabled_key"),
                reason("ip_not_allowed"),
            ],
            keys_expiring_soon: recorder
                .register_gauge(&key("scopegate_keys_expiring_soon", &[]), &METADATA),
            cache_hit: counter("scopegate_key_cache_total", &[("result", "hit")]),
            cache_miss: counter("scopegate_key_cache_total", &[("result", "miss")]),
            store_errors: StoreOp::ALL.map(op),
            reload_ok: counter("scopegate_config_reloads_total", &[("result", "ok")]),
            reload_error: counter("scopegate_config_reloads_total", &[("result", "error")]),
            usage_dropped: counter("scopegate_usage_dropped_total", &[]),
            rate_limited: DashMap::default(),
            quota_exceeded: DashMap::default(),
            token_quota_exceeded: DashMap::default(),
            shared_limits_fallback: recorder
                .register_gauge(&key("scopegate_rate_limit_fallback", &[]), &METADATA),
            process,
            recorder,
            handle,
        };
        Arc::new(metrics)
    }

    /// The counter of connections proxy worker `index` accepted.
    pub fn worker_connections(&self, index: usize) -> Counter {
        let label = Label::new("worker", index.to_string());
        self.recorder.register_counter(
            &Key::from_parts("scopegate_worker_connections_total", vec![label]),
            &METADATA,
        )
    }

    /// Handles for a route pattern (or [`UNMATCHED`]) and the upstream it forwards to; a
    /// `metered` route's token counters too (its missing-usage counter exported at 0).
    pub fn route(&self, pattern: &Arc<str>, upstream: Option<&str>, metered: bool) -> RouteMetrics {
        let route = Label::new("route", pattern.to_string());
        let duration = self.recorder.register_histogram(
            &Key::from_parts("scopegate_request_duration_seconds", vec![route]),
            &METADATA,
        );
        let upstream_duration = upstream.map(|name| {
            let label = Label::new("upstream", name.to_owned());
            self.recorder.register_histogram(
                &Key::from_parts("scopegate_upstream_duration_seconds", vec![label]),
                &METADATA,
            )
        });
        let tokens = metered.then(|| RouteTokens {
            by_app: DashMap::default(),
            missing: self.recorder.register_counter(
                &Key::from_parts(
                    "scopegate_token_usage_missing_total",
                    vec![Label::new("route", pattern.to_string())],
                ),
                &METADATA,
            ),
        });
        RouteMetrics {
            pattern: pattern.clone(),
            duration,
            upstream_duration,
            requests: DashMap::default(),
            tokens,
        }
    }

    /// Counts a metered response's tokens on its route, by app (`none` without a key).
    pub fn record_tokens(
        &self,
        route: &RouteMetrics,
        app: Option<&Arc<str>>,
        input: u64,
        output: u64,
    ) {
        let Some(tokens) = &route.tokens else { return };
        let app: Arc<str> = app.cloned().unwrap_or_else(|| Arc::from(NO_APP));
        let counters = tokens.by_app.entry(app.clone()).or_insert_with(|| {
            ["input", "output"].map(|direction| {
                self.recorder.register_counter(
                    &Key::from_parts(
                        "scopegate_tokens_total",
                        vec![
                            Label::new("route", route.pattern.to_string()),
                            Label::new("app", app.to_string()),
                            Label::new("direction", direction),
                        ],
                    ),
                    &METADATA,
                )
            })
        });
        counters[0].increment(input);
        counters[1].increment(output);
    }

    /// A metered response ended without (complete) usage.
    pub fn token_usage_missing(&self, route: &RouteMetrics) {
        if let Some(tokens) = &route.tokens {
            tokens.missing.increment(1);
        }
    }

    /// Counts one finished request on `route`.
    pub fn record_request(
        &self,
        route: &RouteMetrics,
        method: &Method,
        status: StatusCode,
        app: Option<&Arc<str>>,
        elapsed: Duration,
    ) {
        route.duration.record(elapsed.as_secs_f64());
        let labels = RequestLabels {
            method: bounded_method(method),
            status: status.as_u16(),
            app: app.cloned(),
        };
        if let Some(counter) = route.requests.get(&labels) {
            counter.increment(1);
            return;
        }
        let counter = self.recorder.register_counter(
            &Key::from_parts(
                "scopegate_requests_total",
                vec![
                    Label::new("route", route.pattern.to_string()),
                    Label::new("method", labels.method.as_str().to_owned()),
                    Label::new("status", labels.status.to_string()),
                    Label::new("app", app.map_or(NO_APP.to_owned(), |a| a.to_string())),
                ],
            ),
            &METADATA,
        );
        counter.increment(1);
        route.requests.insert(labels, counter);
    }

    /// Handles for one target of `upstream` (`target`: its url as configured).
    pub fn upstream_target(&self, upstream: &str, target: &str) -> TargetMetrics {
        let labels = |extra: Option<(&'static str, &'static str)>| {
            let mut labels = vec![
                Label::new("upstream", upstream.to_owned()),
                Label::new("target", target.to_owned()),
            ];
            labels.extend(extra.map(|(k, v)| Label::from_static_parts(k, v)));
            labels
        };
        let outcome = |o: Outcome| {
            self.recorder.register_counter(
                &Key::from_parts(
                    "scopegate_upstream_requests_total",
                    labels(Some(("outcome", o.label()))),
                ),
                &METADATA,
            )
        };
        let up = self.recorder.register_gauge(
            &Key::from_parts("scopegate_upstream_target_up", labels(None)),
            &METADATA,
        );
        up.set(1.0);
        TargetMetrics {
            up,
            out: Arc::new(AtomicI64::new(0)),
            ejections: self.recorder.register_counter(
                &Key::from_parts("scopegate_upstream_ejections_total", labels(None)),
                &METADATA,
            ),
            outcomes: Outcome::ALL.map(outcome),
        }
    }

    /// `scopegate_upstream_retries_total` of `upstream`.
    pub fn upstream_retries(&self, upstream: &str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(
                "scopegate_upstream_retries_total",
                vec![Label::new("upstream", upstream.to_owned())],
            ),
            &METADATA,
        )
    }

    pub fn record_upstream(&self, route: &RouteMetrics, elapsed: Duration) {
        if let Some(h) = &route.upstream_duration {
            h.record(elapsed.as_secs_f64());
        }
    }

    pub fn auth_failure(&self, reason: AuthFailure) {
        self.auth_failures[reason as usize].increment(1);
    }

    pub fn key_cache(&self, hit: bool) {
        if hit {
            self.cache_hit.increment(1);
        } else {
            self.cache_miss.increment(1);
        }
    }

    pub fn store_error(&self, op: StoreOp) {
        self.store_errors[op as usize].increment(1);
    }

    pub fn config_reload(&self, ok: bool) {
        if ok {
            self.reload_ok.increment(1);
        } else {
            self.reload_error.increment(1);
        }
    }

    pub fn keys_expiring_soon(&self, n: u64) {
        // A count of keys: far below 2^53, so exact as f64.
        self.keys_expiring_soon.set(n as f64);
    }

    pub fn usage_dropped(&self, n: u64) {
        self.usage_dropped.increment(n);
    }

    pub fn rate_limited(&self, app: &Arc<str>) {
        self.count_by_app(&self.rate_limited, "scopegate_rate_limited_total", app);
    }

    pub fn token_quota_exceeded(&self, app: &Arc<str>) {
        self.count_by_app(
            &self.token_quota_exceeded,
            "scopegate_token_quota_exceeded_total",
            app,
        );
    }

    pub fn quota_exceeded(&self, app: &Arc<str>) {
        self.count_by_app(&self.quota_exceeded, "scopegate_quota_exceeded_total", app);
    }

    /// Whether shared rate limits and quotas are enforced per instance right now.
    pub fn shared_limits_fallback(&self, active: bool) {
        self.shared_limits_fallback
            .set(if active { 1.0 } else { 0.0 });
    }

    /// One more in `family{app}`, registering the app's series the first time it is seen.
    fn count_by_app(
        &self,
        handles: &DashMap<Arc<str>, Counter, foldhash::fast::RandomState>,
        family: &'static str,
        app: &Arc<str>,
    ) {
        if let Some(counter) = handles.get(app) {
            counter.increment(1);
            return;
        }
        let counter = self.recorder.register_counter(
            &Key::from_parts(family, vec![Label::new("app", app.to_string())]),
            &METADATA,
        );
        counter.increment(1);
        handles.insert(app.clone(), counter);
    }

    /// The Prometheus text exposition, with the process metrics sampled now.
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.render()
    }

    /// Periodic housekeeping of the exporter (histogram buffers); run from a background task.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// HELP text of every scopegate family: (name, unit, text).
const DESCRIPTIONS: &[(&str, Option<Unit>, &str)] = &[
    (
        "scopegate_worker_connections_total",
        None,
        "Proxy connections accepted by each worker (its share of SO_REUSEPORT's spread).",
    ),
    (
        "scopegate_upstream_target_up",
        None,
        "1 while an upstream target is in rotation, 0 while it fails its active check or is ejected.",
    ),
    (
        "scopegate_upstream_requests_total",
        None,
        "Attempts toward upstream targets by outcome (response, connect_error, reset, timeout).",
    ),
    (
        "scopegate_upstream_retries_total",
        None,
        "Attempts sent again on another target of the upstream.",
    ),
    (
        "scopegate_upstream_ejections_total",
        None,
        "Passive ejections of upstream targets after consecutive failed requests.",
    ),
    (
        "scopegate_requests_total",
        None,
        "Proxied requests by route pattern, method, status and app id.",
    ),
    (
        "scopegate_request_duration_seconds",
        Some(Unit::Seconds),
        "Time from a proxied request's arrival to its response headers, by route pattern.",
    ),
    (
        "scopegate_upstream_duration_seconds",
        Some(Unit::Seconds),
        "Time from forwarding a request to the upstream's response headers, by upstream.",
    ),
    (
        "scopegate_auth_failures_total",
        None,
        "Requests refused for their key, by reason.",
    ),
    (
        "scopegate_rate_limited_total",
        None,
        "Requests refused with 429 rate_limited, by app id.",
    ),
    (
        "scopegate_quota_exceeded_total",
        None,
        "Requests refused with 429 quota_exceeded (a day or month quota used up), by app id.",
    ),
    (
        "scopegate_token_quota_exceeded_total",
        None,
        "Metered requests refused with 429 token_quota_exceeded, by app id.",
    ),
    (
        "scopegate_tokens_total",
        None,
        "Tokens read from metered responses, by route pattern, app id and direction (input, output).",
    ),
    (
        "scopegate_token_usage_missing_total",
        None,
        "Metered responses that ended without complete usage (an error, a hang-up, a cut stream), by route pattern.",
    ),
    (
        "scopegate_rate_limit_fallback",
        None,
        "1 while the store is unreachable and shared rate limits and quotas are enforced per instance.",
    ),
    (
        "scopegate_key_cache_total",
        None,
        "Key lookups answered from the cache (hit) or the store (miss).",
    ),
    (
        "scopegate_store_errors_total",
        None,
        "Failed or timed-out store calls, by operation.",
    ),
    (
        "scopegate_config_reloads_total",
        None,
        "Config reloads, by result (a refused edit counts as error).",
    ),
    (
        "scopegate_usage_dropped_total",
        None,
        "Usage counts dropped because the store was unreachable too long.",
    ),
    (
        "scopegate_build_info",
        None,
        "Always 1; the version label says which build runs.",
    ),
    (
        "scopegate_keys_expiring_soon",
        None,
        "Keys, not revoked, that expire within 7 days (refreshed every minute).",
    ),
];

/// Registers HELP text with the exporter (which writes it before each family).
/// How one attempt toward an upstream target ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived (whatever its status).
    Response,
    ConnectError,
    /// The connection failed after the request was (maybe partly) sent.
    Reset,
    /// No response head within `header_timeout`.
    Timeout,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Response,
        Outcome::ConnectError,
        Outcome::Reset,
        Outcome::Timeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Response => "response",
            Outcome::ConnectError => "connect_error",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
        }
    }
}

/// One upstream target's handles. Addresses of one hostname share them (and their label), so
/// the `up` gauge is 1 only while none of them is out of rotation.
#[derive(Clone)]
pub struct TargetMetrics {
    up: Gauge,
    /// Addresses of this label out of rotation now.
    out: Arc<AtomicI64>,
    pub ejections: Counter,
    outcomes: [Counter; 4],
}

opaque_debug!(TargetMetrics);

impl TargetMetrics {
    pub fn outcome(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].increment(1);
    }

    /// One address left rotation (`true`) or came back (`false`).
    pub fn rotation(&self, left: bool) {
        let out = match left {
            true => self.out.fetch_add(1, Relaxed) + 1,
            false => self.out.fetch_sub(1, Relaxed) - 1,
        };
        self.up.set(if out <= 0 { 1.0 } else { 0.0 });
    }

    /// The label is no longer configured: its last value must not keep an alert firing.
    pub fn retire(&self) {
        self.up.set(1.0);
    }
}

fn describe(recorder: &PrometheusRecorder) {
    for (name, unit, help) in DESCRIPTIONS {
        let key = KeyName::from_const_str(name);
        if name.ends_with("_seconds") {
            recorder.describe_histogram(key, *unit, (*help).into());
        } else if name.ends_with("_total") {
            recorder.describe_counter(key, *unit, (*help).into());
        } else {
            recorder.describe_gauge(key, *unit, (*help).into());
        }
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::from_static_parts(k, v))
        .collect();
    Key::from_parts(name, labels)
}

/// Known methods keep their name; anything else counts as `OTHER`, so clients cannot mint labels.
fn bounded_method(method: &Method) -> Method {
    const KNOWN: [Method; 7] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ];
    if KNOWN.contains(method) {
        method.clone()
    } else {
        Method::from_bytes(b"OTHER").unwrap_or(Method::GET)
    }
}

/// State behind the metrics listener.
pub struct MetricsEndpoint {
    pub store: Arc<dyn KeyStore>,
    pub metrics: Arc<Metrics>,
}

opaque_debug!(MetricsEndpoint);

impl MetricsEndpoint {
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>> {
        match request.uri().path() {
            "/metrics" => {
                let mut response = text(StatusCode::OK, Bytes::from(self.metrics.render()));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            "/healthz" => text(StatusCode::OK, Bytes::from_static(b"ok\n")),
            "/readyz" => self.readiness().await,
            _ => text(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
        }
    }

    async fn readiness(&self) -> Response<Full<Bytes>> {
        if !self.store.feed_live() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(b"not subscribed to invalidations\n"),
            );
        }
        match tokio::time::timeout(READY_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => text(StatusCode::OK, Bytes::from_static(b"ready\n")),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "not ready");
                self.metrics.store_error(StoreOp::Ping);
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Bytes::from_static(b"store unavailable\n"),
                )
            }
            Err(_) => {
                self.metrics.store_error(StoreOp::Ping);
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Bytes::from_static(b"store timed out\n"),
                )
            }
        }
    }
}

fn text(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_requests_by_route_method_status_and_app() {
        let metrics = Metrics::new();
        let pattern: Arc<str> = Arc::from("/api/v1/jobs/{job_id}");
        let route = metrics.route(&pattern, Some("tools"), false);
        let app: Arc<str> = Arc::from("app1");
        for _ in 0..3 {
            metrics.record_request(
                &route,
                &Method::GET,
                StatusCode::OK,
                Some(&app),
                Duration::from_millis(2),
            );
        }
        metrics.record_request(
            &route,
            &Method::from_bytes(b"BREW").expect("m"),
            StatusCode::NOT_FOUND,
            None,
            Duration::ZERO,
        );
        metrics.auth_failure(AuthFailure::ScopeDenied);
        metrics.rate_limited(&app);
        let text = metrics.render();
        assert!(text.contains(r#"scopegate_requests_total{route="/api/v1/jobs/{job_id}",method="GET",status="200",app="app1"} 3"#), "{text}");
        assert!(
            text.contains(r#"method="OTHER",status="404",app="none"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"scopegate_auth_failures_total{reason="scope_denied"} 1"#));
        assert!(text.contains(r#"scopegate_rate_limited_total{app="app1"} 1"#));
        assert!(
            text.contains("scopegate_request_duration_seconds_bucket"),
            "histograms, not summaries"
        );
    }
}
