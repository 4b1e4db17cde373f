//! Quotas (`quota: {per_day, per_month}`) on the wire: 429 `quota_exceeded` with `Retry-After`
//! to the window's end, `X-Quota-*` headers, `GET /v1/keys/{id}/quota`, the app override, the
//! embedded store's counts across a restart, and the bound across three instances on one Redis.

mod common;

use bytes::Bytes;
use common::gateway::TestGateway;
use common::http::{client, send, Answer};
use common::instances::{gateway_on_url, wait_subscribers};
use common::prom;
use common::redis::RedisServer;
use common::upstream::Upstream;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DEPLOY: &str = "/api/v1/tools/t1/deploy";

fn with_quota(quota: &'static str) -> impl FnOnce(String) -> String {
    move |yaml| {
        yaml.replace(
            "shutdown_grace: 5s\n",
            &format!("shutdown_grace: 5s\n{quota}"),
        )
    }
}

async fn deploy(gw: &TestGateway, key: &str) -> Answer {
    send(
        Method::POST,
        &gw.url(DEPLOY),
        &[("x-api-key", key)],
        Bytes::new(),
    )
    .await
}

fn header(answer: &Answer, name: &str) -> String {
    answer
        .headers
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default()
}

fn seconds_to_utc_midnight() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    86_400 - now % 86_400
}

/// A key of a fresh app (the app's id, the key's id, the full key); `quota` as the app's own.
async fn app_key(gw: &TestGateway, quota: Option<serde_json::Value>) -> (String, String, String) {
    let mut body = json!({"name": format!("app-{}", common::gateway::rand_suffix()), "scopes": ["deploy_tool"]});
    if let Some(q) = quota {
        body["quota"] = q;
    }
    let answer = gw.admin(Method::POST, "/v1/apps", Some(body)).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    let app = answer.json()["id"].as_str().expect("id").to_owned();
    let (key_id, key) = gw.create_key(&app, None).await;
    (app, key_id, key)
}

#[tokio::test]
async fn past_the_day_quota_requests_get_429_with_retry_after_and_headers() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::in_front_of(&upstream.url(), with_quota("quota:\n  per_day: 5\n")).await;
    let (app, key_id, key) = app_key(&gw, None).await;
    for expected_remaining in (0..5).rev() {
        let answer = deploy(&gw, &key).await;
        assert_eq!(answer.status, 200);
        assert_eq!(header(&answer, "x-quota-limit"), "5");
        assert_eq!(
            header(&answer, "x-quota-remaining"),
            expected_remaining.to_string()
        );
    }
    let midnight = seconds_to_utc_midnight();
    let refused = deploy(&gw, &key).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "quota_exceeded");
    let retry: u64 = header(&refused, "retry-after")
        .parse()
        .expect("Retry-After");
    assert!(retry.abs_diff(midnight) <= 2, "{retry} vs {midnight}");
    assert_eq!(header(&refused, "x-quota-remaining"), "0");
    assert_eq!(header(&refused, "x-quota-reset"), retry.to_string());
    assert_eq!(upstream.count(), 5, "a refused request is not forwarded");

    let quota = gw
        .admin(Method::GET, &format!("/v1/keys/{key_id}/quota"), None)
        .await;
    assert_eq!(quota.status, 200);
    let day = &quota.json()["per_day"];
    assert_eq!(
        (&day["limit"], &day["used"], &day["remaining"]),
        (&json!(5), &json!(5), &json!(0))
    );
    assert!(day["resets_at"]
        .as_str()
        .expect("time")
        .ends_with("T00:00:00Z"));
    assert!(quota.json()["per_month"].is_null());
    // The usage call shows what is left in the proxy's headers (its body is the usage list).
    let usage = gw
        .admin(Method::GET, &format!("/v1/keys/{key_id}/usage"), None)
        .await;
    assert_eq!(usage.status, 200);
    assert_eq!(header(&usage, "x-quota-limit"), "5");
    assert_eq!(header(&usage, "x-quota-remaining"), "0");
    assert!(usage.json().is_array());

    let metrics = common::http::get(&format!("http://{}/metrics", gw.metrics), &[]).await;
    let samples = prom::parse(&String::from_utf8_lossy(&metrics.body));
    assert_eq!(
        prom::sum(&samples, "scopegate_quota_exceeded_total", &[("app", &app)]),
        1.0
    );
}

#[tokio::test]
async fn an_app_overrides_the_default_quota_and_can_go_back_to_it() {
    let upstream = Upstream::start().await;
    let gw =
        TestGateway::in_front_of(&upstream.url(), with_quota("quota:\n  per_day: 100\n")).await;
    let (app, key_id, key) = app_key(&gw, Some(json!({"per_day": 2}))).await;
    assert_eq!(deploy(&gw, &key).await.status, 200);
    assert_eq!(deploy(&gw, &key).await.status, 200);
    assert_eq!(deploy(&gw, &key).await.error_code(), "quota_exceeded");
    let shown = gw
        .admin(Method::GET, &format!("/v1/apps/{app}"), None)
        .await;
    assert_eq!(shown.json()["quota"], json!({"per_day": 2}));

    let back = gw
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{app}"),
            Some(json!({"quota": null})),
        )
        .await;
    assert_eq!(back.status, 200, "{:?}", back.body);
    let answer = deploy(&gw, &key).await;
    assert_eq!(answer.status, 200, "the default (100) applies again");
    assert_eq!(header(&answer, "x-quota-limit"), "100");
    let quota = gw
        .admin(Method::GET, &format!("/v1/keys/{key_id}/quota"), None)
        .await;
    assert_eq!(quota.json()["per_day"]["limit"], json!(100));

    let bad = gw
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{app}"),
            Some(json!({"quota": {"per_day": 0}})),
        )
        .await;
    assert_eq!(bad.status, 422);
}

#[tokio::test]
async fn requests_refused_by_the_rate_limit_consume_no_quota() {
    let upstream = Upstream::start().await;
    let edit = |yaml: String| {
        with_quota("quota:\n  per_day: 1000\n")(yaml.replace(
            "  per_second: 1000\n  burst: 1000\n",
            "  per_second: 1\n  burst: 2\n",
        ))
    };
    let gw = TestGateway::in_front_of(&upstream.url(), edit).await;
    let (_, key_id, key) = app_key(&gw, None).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(deploy(&gw, &key).await.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    // The slice leased for the key goes back once unused (2 s), leaving what was admitted.
    let mut used = json!(null);
    for _ in 0..50 {
        let quota = gw
            .admin(Method::GET, &format!("/v1/keys/{key_id}/quota"), None)
            .await;
        used = quota.json()["per_day"]["used"].clone();
        if used == json!(2) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("quota used {used}, expected 2");
}

#[tokio::test]
async fn the_embedded_store_keeps_counts_across_a_restart() {
    let upstream = Upstream::start().await;
    let mut gw =
        TestGateway::in_front_of(&upstream.url(), with_quota("quota:\n  per_month: 4\n")).await;
    let (_, _, key) = app_key(&gw, None).await;
    assert_eq!(deploy(&gw, &key).await.status, 200);
    assert_eq!(deploy(&gw, &key).await.status, 200);
    let yaml = std::fs::read_to_string(gw.config_path()).expect("config");
    gw.stop().await;
    // Aborted background tasks release the store's file when the runtime next drops them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().expect("dir"));
    let again = TestGateway::start_in(&yaml, dir).await;
    assert_eq!(deploy(&again, &key).await.status, 200);
    assert_eq!(deploy(&again, &key).await.status, 200);
    let refused = deploy(&again, &key).await;
    assert_eq!(refused.error_code(), "quota_exceeded");
}

/// Three instances on one Redis, one key driven far past its quota, spread evenly: the
/// instances together admit exactly the quota (leases are counted in Redis before anything is
/// admitted, so never more; a request that finds the count at the limit while another instance
/// holds leased requests waits for them, so never fewer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_admit_the_quota_and_no_more() {
    const QUOTA: usize = 300;
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(
            gateway_on_url(
                &redis.url(),
                &upstream,
                with_quota("quota:\n  per_day: 300\n"),
            )
            .await,
        );
    }
    wait_subscribers(&redis.url(), 3).await;
    let (_, key_id, key) = app_key(&gateways[0], None).await;
    let proxies: Vec<_> = gateways.iter().map(|g| g.proxy).collect();
    let admitted = drive(&proxies, &key, QUOTA * 4).await;
    println!("quota {QUOTA}: three instances admitted {admitted}");
    assert_eq!(admitted, QUOTA);
    let quota = gateways[1]
        .admin(Method::GET, &format!("/v1/keys/{key_id}/quota"), None)
        .await;
    assert_eq!(quota.json()["per_day"]["remaining"], json!(0));
}

/// `total` requests with `key`, round-robin over `proxies`, 16 at a time; how many got 200.
async fn drive(proxies: &[std::net::SocketAddr], key: &str, total: usize) -> usize {
    let client = client();
    let mut admitted = 0;
    let mut sent = 0;
    while sent < total {
        let batch: Vec<_> = (sent..total.min(sent + 16))
            .map(|i| {
                let request =
                    Request::post(format!("http://{}{DEPLOY}", proxies[i % proxies.len()]))
                        .header("x-api-key", key)
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                let client = client.clone();
                tokio::spawn(async move { client.request(request).await.map(|r| r.status()) })
            })
            .collect();
        sent += batch.len();
        for task in batch {
            if task.await.expect("task").expect("response").as_u16() == 200 {
                admitted += 1;
            }
        }
    }
    admitted
}

/// With Redis down, an instance admits on its own last known count (never past the quota for
/// one instance), says so, and adds what it admitted to Redis's count once it answers.
#[tokio::test]
async fn with_redis_down_an_instance_counts_on_its_own_and_settles_later() {
    let mut redis = RedisServer::start_persistent();
    let upstream = Upstream::start().await;
    let gw = gateway_on_url(
        &redis.url(),
        &upstream,
        with_quota("quota:\n  per_day: 6\n"),
    )
    .await;
    wait_subscribers(&redis.url(), 1).await;
    let (_, key_id, key) = app_key(&gw, None).await;
    assert_eq!(deploy(&gw, &key).await.status, 200);
    assert_eq!(deploy(&gw, &key).await.status, 200);
    redis.stop();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(deploy(&gw, &key).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    redis.start_again();
    let mut used = json!(null);
    for _ in 0..100 {
        let quota = gw
            .admin(Method::GET, &format!("/v1/keys/{key_id}/quota"), None)
            .await;
        if quota.status == 200 {
            used = quota.json()["per_day"]["used"].clone();
            if used == json!(6) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Redis counts {used} after the outage, expected 6");
}
