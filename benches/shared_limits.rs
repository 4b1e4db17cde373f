//! What `rate_limit.shared` and quotas add to a request: the per-instance limiter alone, the
//! shared one (slices leased from a real `redis-server` on a free port), and a quota check.
//! Limits are far above what the benchmark sends, so every check admits; leases are amortised
//! over their slice as they are in service.
//!
//! `cargo bench --bench shared_limits` (needs `redis-server` on the PATH)

use criterion::{criterion_group, criterion_main, Criterion};
use scopegate::budgets::local::RateLimits;
use scopegate::budgets::quota::Quotas;
use scopegate::budgets::shared::SharedRateLimits;
use scopegate::budgets::slice::Fallback;
use scopegate::metrics::Metrics;
use scopegate::model::{Quota, RateLimit};
use scopegate::store::{KeyStore, RedisStore};
use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const LIMIT: RateLimit = RateLimit {
    per_second: 1_000_000_000,
    burst: 1_000_000_000,
};

/// A throwaway `redis-server` on a port the OS just handed out; killed on drop.
struct Redis(Child, u16);

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis(child, port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench_limits(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis = Redis::start();
    let url = format!("redis://127.0.0.1:{}/", redis.1);
    let store: Arc<dyn KeyStore> = Arc::new(
        runtime
            .block_on(RedisStore::connect(&url, Duration::from_secs(1)))
            .expect("redis store"),
    );
    let fallback = Arc::new(Fallback::new(Metrics::new()));
    let local = RateLimits::new(1_000);
    let shared = SharedRateLimits::new(store.clone(), fallback.clone(), true);
    let quotas = Quotas::new(store, fallback, None);
    let quota = Some(Quota {
        per_day: Some(1_000_000_000_000),
        per_month: None,
    });
    let key: Arc<str> = Arc::from("benchkey");

    c.bench_function("rate_limit_local", |b| {
        b.iter(|| black_box(local.check(black_box(&key), LIMIT)));
    });
    let mut group = c.benchmark_group("shared");
    group.bench_function("rate_limit_shared", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = std::time::Instant::now();
                for _ in 0..iterations {
                    black_box(shared.check(&local, black_box(&key), LIMIT).await);
                }
                started.elapsed()
            })
        });
    });
    group.bench_function("quota", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = std::time::Instant::now();
                for _ in 0..iterations {
                    let _ = black_box(quotas.check(black_box(&key), quota).await);
                }
                started.elapsed()
            })
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench_limits
}
criterion_main!(benches);
