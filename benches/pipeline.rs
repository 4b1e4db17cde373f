//! Micro-benchmarks of the request path's pure parts, through the crate's public API.
//!
//! `cargo bench --bench pipeline` (quick look: `cargo bench --bench pipeline -- --quick`).
//! The end-to-end load benchmark is `bench/run`; see bench/README.md.

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use scopegate::auth::{credential, key};
use scopegate::budgets::local::RateLimits;
use scopegate::cache::KeyCache;
use scopegate::metrics::Metrics;
use scopegate::model::RateLimit;
use scopegate::routing::normalize::normalize;
use scopegate::routing::{RouteMatch, RouteTable};
use scopegate::store::{EmbeddedStore, KeyStore};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A key shaped like the ones `key::generate` makes (12-character id, 38-character secret ending
/// in its checksum), so `parse` is measured with the checksum check.
const KEY: &str = "sg_AbCdEf012345_0123456789abcdefghijKLMNOPqrstuv2D7Ymt";

fn routes() -> RouteTable {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
    match scopegate::config::load(&path) {
        Ok(config) => config.routes,
        Err(e) => panic!("{} does not load: {e}", path.display()),
    }
}

fn bench_normalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize");
    // Already normal: the borrowed fast path.
    group.bench_function("typical", |b| {
        b.iter(|| normalize(black_box("/api/v1/tools/tool-42/deploy")).is_ok())
    });
    // Repeated slashes, dot-segments, encoded unreserved characters and lower-case hex.
    group.bench_function("dirty", |b| {
        b.iter(|| {
            normalize(black_box(
                "//api/v1/./tools/%7etool-%34%32/../tool-42//de%70loy;v=1/%3a/.",
            ))
            .is_ok()
        })
    });
    group.finish();
}

fn bench_route_find(c: &mut Criterion) {
    let table = routes();
    let mut group = c.benchmark_group("route_find");
    let cases = [
        ("first_route", Method::POST, "/api/v1/tools/tool-42/deploy"),
        ("late_route", Method::GET, "/api/v1/jobs/job-7"),
        ("not_found", Method::GET, "/api/v1/nothing/here"),
        (
            "method_not_allowed",
            Method::PATCH,
            "/api/v1/connections/c1",
        ),
    ];
    for (name, method, path) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                matches!(
                    table.find(black_box(&method), black_box(path)),
                    RouteMatch::Found(_)
                )
            })
        });
    }
    group.finish();
}

fn bench_key(c: &mut Criterion) {
    let stored = key::digest("0123456789abcdefghijKLMNOPqrstuv");
    let mut group = c.benchmark_group("key");
    group.bench_function("parse", |b| b.iter(|| key::parse(black_box(KEY)).is_some()));
    group.bench_function("digest", |b| {
        b.iter(|| key::digest(black_box("0123456789abcdefghijKLMNOPqrstuv")))
    });
    group.bench_function("digests_match", |b| {
        let offered = key::digest("0123456789abcdefghijKLMNOPqrstuv");
        b.iter(|| key::digests_match(black_box(&offered), black_box(&stored)))
    });
    // What a cached-key request pays for its key: parse, hash the secret, compare.
    group.bench_function("parse_digest_match", |b| {
        b.iter(|| {
            let parsed = key::parse(black_box(KEY)).map(|p| key::digest(p.secret));
            parsed.is_some_and(|d| key::digests_match(&d, &stored))
        })
    });
    group.finish();
}

fn bench_credential(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "gateway.example:8080"),
        ("user-agent", "agent/1.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", "27"),
        ("x-api-key", KEY),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    let mut bearer = headers.clone();
    bearer.remove("x-api-key");
    bearer.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {KEY}")).expect("header value"),
    );
    let mut group = c.benchmark_group("credential_extract");
    group.bench_function("x_api_key", |b| {
        b.iter(|| credential::extract(black_box(&headers)).is_ok())
    });
    group.bench_function("bearer", |b| {
        b.iter(|| credential::extract(black_box(&bearer)).is_ok())
    });
    group.finish();
}

fn bench_rate_limit(c: &mut Criterion) {
    let limits = RateLimits::new(100_000);
    let key_id: Arc<str> = Arc::from("AbCdEf012345");
    // Far above what the loop can reach, so every check is Allowed (the proxy's hot path).
    let limit = RateLimit {
        per_second: 1_000_000_000,
        burst: 1_000_000_000,
    };
    c.bench_function("rate_limit_check", |b| {
        b.iter(|| limits.check(black_box(&key_id), limit))
    });
}

/// A cached key and its app, as `Authenticator::authenticate` looks them up on every request.
fn bench_cache_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let store: Arc<dyn KeyStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    let cache = KeyCache::new(
        store.clone(),
        Duration::from_secs(600),
        10_000,
        Metrics::new(),
    );
    let (app, new) = runtime.block_on(support::seed_key(&*store));
    runtime.block_on(async {
        // Warm: the loop measures hits only.
        cache.key(&new.id).await.expect("key read");
        cache.app(&app.id).await.expect("app read");
    });
    c.bench_function("cache_hit_key_and_app", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = std::time::Instant::now();
                for _ in 0..iterations {
                    let key = cache.key(black_box(&new.id)).await.expect("hit");
                    let app = cache.app(black_box(&app.id)).await.expect("hit");
                    black_box((key.is_some(), app.is_some()));
                }
                started.elapsed()
            })
        })
    });
}

fn bench_metrics(c: &mut Criterion) {
    let metrics = Metrics::new();
    let route = metrics.route(
        &Arc::from("/api/v1/tools/{tool_id}/deploy"),
        Some("tools"),
        false,
    );
    let app: Arc<str> = Arc::from("AppId0123456");
    // The first call registers the label set; the loop measures the steady state.
    metrics.record_request(
        &route,
        &Method::POST,
        StatusCode::OK,
        Some(&app),
        Duration::from_micros(250),
    );
    c.bench_function("metrics_record_request", |b| {
        b.iter(|| {
            metrics.record_request(
                black_box(&route),
                &Method::POST,
                StatusCode::OK,
                Some(&app),
                Duration::from_micros(250),
            )
        })
    });
}

criterion_group!(
    benches,
    bench_normalize,
    bench_route_find,
    bench_key,
    bench_credential,
    bench_cache_hit,
    bench_rate_limit,
    bench_metrics
);
criterion_main!(benches);
