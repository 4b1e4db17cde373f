//! `rate_limit.shared: true`: one budget per key across instances on one Redis (the bound,
//! measured on three instances over real sockets), and the per-instance fallback while Redis
//! is down.

mod common;

use bytes::Bytes;
use common::gateway::{deploy_at, TestGateway};
use common::http::{client, get, send};
use common::instances::{command_calls, gateway_on_url, reset_stats, wait_subscribers};
use common::process::ServeProcess;
use common::prom;
use common::redis::RedisServer;
use common::upstream::Upstream;
use http::{Method, Request};
use http_body_util::Full;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const DEPLOY: &str = "/api/v1/tools/t1/deploy";

fn shared(per_second: u32, burst: u32) -> impl FnOnce(String) -> String {
    move |yaml| {
        yaml.replace(
            "  per_second: 1000\n  burst: 1000\n",
            &format!("  per_second: {per_second}\n  burst: {burst}\n  shared: true\n"),
        )
    }
}

/// Sends `rate` requests a second with `key`, spread evenly over `proxies`, for `length`; how
/// many were admitted (200) and refused (429). Requests are not awaited one by one, so a slow
/// answer never slows the rate.
async fn drive(proxies: &[SocketAddr], key: &str, rate: u32, length: Duration) -> (usize, usize) {
    let client = client();
    let per_instance = Duration::from_secs(1) * u32::try_from(proxies.len()).expect("few") / rate;
    let drivers: Vec<_> = proxies
        .iter()
        .map(|proxy| {
            let (client, key, url) = (
                client.clone(),
                key.to_owned(),
                format!("http://{proxy}{DEPLOY}"),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(per_instance);
                let started = Instant::now();
                let mut calls = Vec::new();
                while started.elapsed() < length {
                    tick.tick().await;
                    let request = Request::post(&url)
                        .header("x-api-key", &key)
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    let client = client.clone();
                    calls.push(tokio::spawn(async move {
                        client.request(request).await.map(|r| r.status().as_u16())
                    }));
                }
                calls
            })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for driver in drivers {
        for call in driver.await.expect("driver") {
            match call.await.expect("call").expect("response") {
                200 => admitted += 1,
                429 => refused += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    (admitted, refused)
}

/// The bound: every admitted request was granted by the Redis script first, which grants no
/// more than GCRA allows (`per_second * t + burst` over `t`), so three instances driven at ten
/// times the budget admit at most that, plus 5%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_budget_within_five_percent() {
    const PER_SECOND: u32 = 50;
    const BURST: u32 = 100;
    const SECONDS: u64 = 10;
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(gateway_on_url(&redis.url(), &upstream, shared(PER_SECOND, BURST)).await);
    }
    wait_subscribers(&redis.url(), 3).await;
    let key = gateways[0].key_with(&["deploy_tool"]).await;
    let proxies: Vec<SocketAddr> = gateways.iter().map(|g| g.proxy).collect();
    // Every instance knows the key before the clock starts (a cold lookup is not the test).
    for g in &gateways {
        g.deploy(&key).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    reset_stats(&redis.url()).await;

    let (admitted, refused) = drive(
        &proxies,
        &key,
        PER_SECOND * 10,
        Duration::from_secs(SECONDS),
    )
    .await;
    let budget =
        usize::try_from(u64::from(PER_SECOND) * SECONDS + u64::from(BURST)).expect("small");
    let leases = command_calls(&redis.url(), "eval").await;
    println!(
        "shared rate limit: budget {budget}, three instances admitted {admitted}, refused {refused}; \
         {leases} leases (EVAL), {:.3} per request",
        leases as f64 / (admitted + refused) as f64
    );
    assert!(
        admitted <= budget + budget / 20,
        "overshoot: {admitted} > {budget} + 5%"
    );
    // Per-instance limits would have admitted about three budgets; a stingy lease much less.
    assert!(
        admitted >= budget * 8 / 10,
        "undershoot: {admitted} of {budget}"
    );
    assert!(refused > admitted, "the load was ten times the budget");
}

async fn fallback_gauge(gw: &TestGateway) -> f64 {
    let metrics = get(&format!("http://{}/metrics", gw.metrics), &[]).await;
    let samples = prom::parse(&String::from_utf8_lossy(&metrics.body));
    assert!(
        samples
            .iter()
            .any(|s| s.name == "scopegate_rate_limit_fallback"),
        "the gauge is exported from the start"
    );
    prom::sum(&samples, "scopegate_rate_limit_fallback", &[])
}

async fn statuses(gw: &TestGateway, key: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(gw.deploy(key).await);
    }
    out
}

#[tokio::test]
async fn with_redis_down_each_instance_falls_back_to_its_own_limit_and_says_so() {
    // Persistent, so the key is still there when it comes back.
    let mut redis = RedisServer::start_persistent();
    let upstream = Upstream::start().await;
    let gw = gateway_on_url(&redis.url(), &upstream, shared(1, 3)).await;
    wait_subscribers(&redis.url(), 1).await;
    let key = gw.key_with(&["deploy_tool"]).await;
    assert_eq!(statuses(&gw, &key, 4).await, [200, 200, 200, 429]);
    assert_eq!(fallback_gauge(&gw).await, 0.0);

    redis.stop();
    // Past the shared refusal's wait; the key stays cached, its budget is now this instance's.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(statuses(&gw, &key, 4).await, [200, 200, 200, 429]);
    assert_eq!(fallback_gauge(&gw).await, 1.0);

    redis.start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fallback_gauge(&gw).await != 0.0 {
        assert!(Instant::now() < deadline, "never left the fallback");
        tokio::time::sleep(Duration::from_millis(600)).await;
        gw.deploy(&key).await;
    }
}

/// What an operator sees: one warning per outage (not one per request), and a line when Redis
/// answers again. The real binary, its log read from its stderr.
#[tokio::test]
async fn an_outage_is_logged_once_and_so_is_the_recovery() {
    const WARNING: &str = "shared rate limits and quotas are enforced per instance";
    const RECOVERED: &str = "the store answers again";
    let mut redis = RedisServer::start_persistent();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let yaml = common::gateway::config_yaml(
        &common::gateway::Upstreams {
            tools: upstream.url(),
        },
        Some(&redis.url()),
        &dir.path().join("data"),
    );
    let mut gw = ServeProcess::start(dir.path(), &shared(1_000, 1_000)(yaml)).await;
    let key = process_key(&gw).await;
    let deploy = || deploy_at(gw.proxy, &key);
    assert_eq!(deploy().await, 200);

    for outage in 1..=2 {
        redis.stop();
        // Past several probes (one per 500 ms): each fails, none logs again.
        for _ in 0..30 {
            let status = deploy().await;
            assert_eq!(
                status,
                200,
                "served on the per-instance limiter:\n{}",
                gw.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            gw.output().matches(WARNING).count(),
            outage,
            "{}",
            gw.output()
        );
        redis.start_again();
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.output().matches(RECOVERED).count() < outage {
            assert!(
                Instant::now() < deadline,
                "no recovery line:\n{}",
                gw.output()
            );
            deploy().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The next outage must find the key cached again: the feed's return drops the cache
        // (it may have missed invalidations), and a read made before the feed is back is not
        // cached. Wait for the subscription, then for hits.
        wait_subscribers(&redis.url(), 1).await;
        let before = cache_hits(&gw).await;
        while cache_hits(&gw).await < before + 2 {
            assert!(Instant::now() < deadline, "the key is never cached again");
            assert_eq!(deploy().await, 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    gw.stop().await;
}

/// Key lookups the process answered from its cache, from its `/metrics`.
async fn cache_hits(gw: &ServeProcess) -> u64 {
    let scrape = get(&format!("http://{}/metrics", gw.metrics), &[]).await;
    let text = String::from_utf8_lossy(&scrape.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("scopegate_key_cache_total{result=\"hit\"} "))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// An app with `deploy_tool` and a key for it, through the process's admin API: the full key.
async fn process_key(gw: &ServeProcess) -> String {
    let auth = format!("Bearer {}", common::gateway::ADMIN_TOKEN);
    let headers = [("authorization", auth.as_str())];
    let app = send(
        Method::POST,
        &format!("http://{}/v1/apps", gw.admin),
        &headers,
        serde_json::json!({"name": "outage", "scopes": ["deploy_tool"]}).to_string(),
    )
    .await;
    assert_eq!(app.status, 201, "{:?}", app.body);
    let app_id = app.json()["id"].as_str().expect("id").to_owned();
    let key = send(
        Method::POST,
        &format!("http://{}/v1/apps/{app_id}/keys", gw.admin),
        &headers,
        serde_json::json!({"name": "k"}).to_string(),
    )
    .await;
    assert_eq!(key.status, 201, "{:?}", key.body);
    key.json()["key"].as_str().expect("key").to_owned()
}
