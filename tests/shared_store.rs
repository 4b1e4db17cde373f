//! Several gateways on one real Redis: invalidation across instances, one store read per
//! concurrent miss, and behaviour while Redis is down.

mod common;

use bytes::Bytes;
use common::gateway::TestGateway;
use common::http::{get, send};
use common::instances;
use common::redis::RedisServer;
use common::upstream::Upstream;
use http::Method;
use std::time::{Duration, Instant};

/// The contract's bound for a change to reach every instance.
const PROPAGATION: Duration = Duration::from_secs(1);

async fn gateway_on(redis: &RedisServer, upstream: &Upstream) -> TestGateway {
    instances::gateway_on_url(&redis.url(), upstream, |yaml| yaml).await
}

async fn wait_subscribers(redis: &RedisServer, n: u64) {
    instances::wait_subscribers(&redis.url(), n).await
}

async fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    instances::command_calls(&redis.url(), command).await
}

async fn reset_stats(redis: &RedisServer) {
    instances::reset_stats(&redis.url()).await
}

/// Polls `status_of` until it returns `want`; returns how long that took, or panics past `within`.
async fn wait_for_status<F, Fut>(within: Duration, want: u16, mut status_of: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let started = Instant::now();
    loop {
        let status = status_of().await;
        if status == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "still {status} after {within:?}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_edit_and_key_deletion_reach_a_second_instance_within_a_second() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let a = gateway_on(&redis, &upstream).await;
    let b = gateway_on(&redis, &upstream).await;
    wait_subscribers(&redis, 2).await;

    let app = a.create_app("shared", &["view_job_status"]).await;
    let (key_id, key) = a.create_key(&app, None).await;
    let deploy_on_b = || async {
        send(
            Method::POST,
            &b.url("/api/v1/tools/t/deploy"),
            &[("x-api-key", &key)],
            Bytes::new(),
        )
        .await
        .status
        .as_u16()
    };
    // B caches the key and app (scope missing → 403).
    assert_eq!(deploy_on_b().await, 403);
    assert_eq!(
        get(&b.url("/api/v1/jobs/1"), &[("x-api-key", &key)])
            .await
            .status,
        200
    );

    let patch = serde_json::json!({"scopes": ["view_job_status", "deploy_tool"]});
    assert_eq!(
        a.admin(Method::PATCH, &format!("/v1/apps/{app}"), Some(patch))
            .await
            .status,
        200
    );
    let took = wait_for_status(PROPAGATION, 200, deploy_on_b).await;
    println!("scope edit seen by the second instance after {took:?}");

    assert_eq!(
        a.admin(Method::DELETE, &format!("/v1/keys/{key_id}"), None)
            .await
            .status,
        204
    );
    let jobs_on_b = || async {
        get(&b.url("/api/v1/jobs/1"), &[("x-api-key", &key)])
            .await
            .status
            .as_u16()
    };
    let took = wait_for_status(PROPAGATION, 401, jobs_on_b).await;
    println!("key deletion seen by the second instance after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_deletion_reaches_a_second_instance_within_a_second() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let a = gateway_on(&redis, &upstream).await;
    let b = gateway_on(&redis, &upstream).await;
    wait_subscribers(&redis, 2).await;
    let app = a.create_app("doomed", &["view_job_status"]).await;
    let (_, key) = a.create_key(&app, None).await;
    assert_eq!(
        get(&b.url("/api/v1/jobs/1"), &[("x-api-key", &key)])
            .await
            .status,
        200
    );
    assert_eq!(
        a.admin(Method::DELETE, &format!("/v1/apps/{app}"), None)
            .await
            .status,
        204
    );
    let jobs_on_b = || async {
        get(&b.url("/api/v1/jobs/1"), &[("x-api-key", &key)])
            .await
            .status
            .as_u16()
    };
    wait_for_status(PROPAGATION, 401, jobs_on_b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_key_cost_one_store_read_and_hits_cost_none() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let a = gateway_on(&redis, &upstream).await;
    let b = gateway_on(&redis, &upstream).await;
    let key = a.key_with(&["view_job_status"]).await;
    reset_stats(&redis).await;

    let url = b.url("/api/v1/jobs/1");
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            let key = key.clone();
            tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await.status })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("task"), 200);
    }
    // One GET for the key and one for its app, however many requests raced.
    assert_eq!(
        command_calls(&redis, "get").await,
        2,
        "store reads for 40 concurrent misses"
    );
    assert_eq!(command_calls(&redis, "hget").await, 1);

    reset_stats(&redis).await;
    for _ in 0..20 {
        assert_eq!(get(&url, &[("x-api-key", &key)]).await.status, 200);
    }
    assert_eq!(
        command_calls(&redis, "get").await,
        0,
        "cached keys never touch the store"
    );

    // Unknown keys are remembered too: a repeated random key costs one read (a key in the
    // pre-checksum format, which only a lookup can refuse).
    reset_stats(&redis).await;
    for _ in 0..10 {
        assert_eq!(
            get(
                &url,
                &[(
                    "x-api-key",
                    "sg_unknownkey12_0123456789abcdefghijKLMNOPqrstuv"
                )]
            )
            .await
            .status,
            401
        );
    }
    assert_eq!(command_calls(&redis, "get").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_cached_keys_working_and_refuses_uncached_ones_with_503() {
    let mut redis = RedisServer::start_persistent();
    let upstream = Upstream::start().await;
    let gw = gateway_on(&redis, &upstream).await;
    wait_subscribers(&redis, 1).await;
    let cached = gw.key_with(&["view_job_status"]).await;
    let uncached = gw.key_with(&["view_job_status"]).await;
    let url = gw.url("/api/v1/jobs/1");
    assert_eq!(get(&url, &[("x-api-key", &cached)]).await.status, 200);

    redis.stop();
    assert_eq!(
        get(&url, &[("x-api-key", &cached)]).await.status,
        200,
        "cached key during outage"
    );
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        get(&url, &[("x-api-key", &uncached)]),
    )
    .await
    .expect("an uncached key fails fast instead of hanging");
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (503, "store_unavailable")
    );
    assert_eq!(answer.headers["retry-after"], "1");
    let ready = get(&format!("http://{}/readyz", gw.metrics), &[]).await;
    assert_eq!(ready.status, 503);

    redis.start_again();
    wait_subscribers(&redis, 1).await;
    let took = wait_for_status(Duration::from_secs(10), 200, || async {
        get(&url, &[("x-api-key", &uncached)]).await.status.as_u16()
    })
    .await;
    println!("uncached key served again {took:?} after Redis returned");
    assert_eq!(
        get(&format!("http://{}/readyz", gw.metrics), &[])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_is_dropped_when_the_invalidation_feed_reconnects() {
    let mut redis = RedisServer::start_persistent();
    let upstream = Upstream::start().await;
    let gw = gateway_on(&redis, &upstream).await;
    wait_subscribers(&redis, 1).await;
    let key = gw.key_with(&["view_job_status"]).await;
    let url = gw.url("/api/v1/jobs/1");
    assert_eq!(get(&url, &[("x-api-key", &key)]).await.status, 200);

    redis.stop();
    redis.start_again();
    wait_subscribers(&redis, 1).await;
    // Invalidations may have been missed while the feed was down: the key must be re-read.
    let mut reread = false;
    for _ in 0..100 {
        reset_stats(&redis).await;
        assert_eq!(get(&url, &[("x-api-key", &key)]).await.status, 200);
        if command_calls(&redis, "get").await > 0 {
            reread = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reread,
        "the cached key was re-read from the store after the feed reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_is_visible_through_the_admin_api_within_two_seconds() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = gateway_on(&redis, &upstream).await;
    let app = gw.create_app("used", &["view_job_status"]).await;
    let (key_id, key) = gw.create_key(&app, None).await;
    let before = gw
        .admin(Method::GET, &format!("/v1/keys/{key_id}"), None)
        .await
        .json();
    assert!(before["last_used_at"].is_null());
    assert_eq!(
        get(&gw.url("/api/v1/jobs/1"), &[("x-api-key", &key)])
            .await
            .status,
        200
    );
    let started = Instant::now();
    loop {
        let view = gw
            .admin(Method::GET, &format!("/v1/keys/{key_id}"), None)
            .await
            .json();
        if let Some(at) = view["last_used_at"].as_str() {
            assert!(at.ends_with('Z') && at.len() == 20, "RFC 3339 UTC: {at}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "last_used_at not shown within 2s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
