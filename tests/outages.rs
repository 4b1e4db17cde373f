//! Start-up and outages: a gateway whose Redis is down when it starts serves anyway (not ready,
//! uncached keys 503) and recovers by itself; failed authentications never evict good keys.

mod common;

use common::gateway::TestGateway;
use common::http::get;
use common::instances::{gateway_on_url, wait_subscribers};
use common::redis::RedisServer;
use common::upstream::Upstream;
use http::Method;
use std::time::Duration;
use tokio::time::Instant;

async fn ready(g: &TestGateway) -> u16 {
    get(&format!("http://{}/readyz", g.metrics), &[])
        .await
        .status
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_while_redis_is_down_serves_and_recovers_by_itself() {
    let mut redis = RedisServer::start();
    redis.stop();
    let upstream = Upstream::start().await;
    let g = gateway_on_url(&redis.url(), &upstream, |y| {
        y.replace("  redis: ", "  timeout: 300ms\n  redis: ")
    })
    .await;

    // Up, not ready; a key (which cannot be cached yet) gets 503, public routes work.
    assert_eq!(ready(&g).await, 503);
    let made_up = "sg_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    assert_eq!(g.deploy(made_up).await, 503);
    assert_eq!(get(&g.url("/api/v1/health"), &[]).await.status, 200);
    let created = g
        .admin(
            Method::POST,
            "/v1/apps",
            Some(serde_json::json!({"name": "x", "scopes": []})),
        )
        .await;
    assert_eq!(created.status, 503, "admin writes need the store");

    redis.start_again();
    let started = Instant::now();
    while ready(&g).await != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("ready {:?} after Redis came back", started.elapsed());
    wait_subscribers(&redis.url(), 1).await;
    let key = g.key_with(&["deploy_tool"]).await;
    assert_eq!(g.deploy(&key).await, 200);
    assert_eq!(g.deploy(made_up).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_keys_does_not_evict_a_cached_good_key() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start().await;
    // Room for 50 keys in the cache, and 5000 made-up ones on the way.
    let g = gateway_on_url(&redis.url(), &upstream, |y| {
        y.replace("max_entries: 10000", "max_entries: 50")
    })
    .await;
    wait_subscribers(&redis.url(), 1).await;
    let key = g.key_with(&["deploy_tool"]).await;
    assert_eq!(g.deploy(&key).await, 200);
    for i in 0..5000 {
        let made_up = format!("sg_{:0>12}_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB", i);
        assert_eq!(g.deploy(&made_up).await, 401);
    }
    // With Redis gone, only the cache can answer for the good key.
    redis.stop();
    assert_eq!(g.deploy(&key).await, 200, "the good key was evicted");
}
