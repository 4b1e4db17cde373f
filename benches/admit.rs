//! The whole in-process pipeline for one request with a cached key, without sockets:
//! head limits → path → route → credential → principal (cache hit) → scope → rate limit →
//! usage hand-off. Everything `Pipeline::admit` decides before a byte goes upstream.
//!
//! `cargo bench --bench admit`

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use scopegate::pipeline::Seen;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

/// The client address of the measured requests.
const PEER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The repo's gateway.yaml on free ports, an embedded store in `dir`, and a rate limit far above
/// what the benchmark sends.
fn config_text(dir: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
    let text = std::fs::read_to_string(&path).expect("repo gateway.yaml");
    text.replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8001", "127.0.0.1:0")
        .replace("127.0.0.1:8100", "127.0.0.1:0")
        .replace(
            "path: ./data",
            &format!("path: {}", dir.join("data").display()),
        )
        .replace("per_second: 50", "per_second: 1000000000")
        .replace("burst: 100", "burst: 1000000000")
}

fn bench_admit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let config_path = dir.path().join("gateway.yaml");
    std::fs::write(&config_path, config_text(dir.path())).expect("write config");
    let config = scopegate::config::load(&config_path).expect("config");
    let gateway = runtime
        .block_on(scopegate::gateway::start(config, vec![]))
        .expect("gateway");

    let (_, new) = runtime.block_on(support::seed_key(&*gateway.store));

    let request = http::Request::post("/api/v1/tools/web-search/deploy")
        .header("host", "gateway.example")
        .header("x-api-key", &new.full)
        .header("content-type", "application/json")
        .header("content-length", "17")
        .body(())
        .expect("request");
    let pipeline = gateway.pipeline.clone();
    let live = pipeline.live();
    // Warm the cache: the benchmark measures the cached-key path.
    runtime.block_on(async {
        let mut seen = Seen::default();
        pipeline
            .admit(&request, PEER, &live, &mut seen)
            .await
            .expect("admitted");
    });

    // One `block_on` per batch, not per request: entering the runtime is not part of a
    // request's cost. Yielding now and then lets the usage task drain its queue, as it would.
    c.bench_function("admit_cached_key", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = std::time::Instant::now();
                for i in 0..iterations {
                    let mut seen = Seen::default();
                    let admission = pipeline
                        .admit(black_box(&request), PEER, &live, &mut seen)
                        .await;
                    black_box(admission.is_ok());
                    if i % 1024 == 1023 {
                        tokio::task::yield_now().await;
                    }
                }
                started.elapsed()
            })
        })
    });
    runtime.block_on(gateway.shutdown());
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = bench_admit
}
criterion_main!(benches);
