//! Rate limits, usage counts and metrics over real sockets, with a real Redis.

mod common;

use common::gateway::{config_yaml, TestGateway, Upstreams};
use common::http::get;
use common::redis::RedisServer;
use common::upstream::Upstream;
use http::Method;
use serde_json::json;
use std::time::Duration;

async fn gateway(
    redis: Option<&RedisServer>,
    upstream: &Upstream,
    default_limit: Option<(u32, u32)>,
) -> TestGateway {
    let dir = tempfile::tempdir().expect("dir");
    let url = redis.map(|r| r.url());
    let mut yaml = config_yaml(
        &Upstreams {
            tools: upstream.url(),
        },
        url.as_deref(),
        &dir.path().join("data"),
    );
    if let Some((rate, burst)) = default_limit {
        yaml = yaml.replace(
            "  per_second: 1000\n  burst: 1000",
            &format!("  per_second: {rate}\n  burst: {burst}"),
        );
    }
    TestGateway::start_in(&yaml, dir).await
}

async fn app_with_limit(gw: &TestGateway, name: &str, limit: Option<(u32, u32)>) -> String {
    let mut body = json!({"name": name, "scopes": ["view_job_status", "deploy_tool"]});
    if let Some((per_second, burst)) = limit {
        body["rate_limit"] = json!({"per_second": per_second, "burst": burst});
    }
    let answer = gw.admin(Method::POST, "/v1/apps", Some(body)).await;
    assert_eq!(answer.status, 201);
    answer.json()["id"].as_str().expect("id").to_owned()
}

fn header(answer: &common::http::Answer, name: &str) -> String {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn a_burst_over_the_limit_gets_429_with_headers_and_the_next_window_admits_again() {
    let upstream = Upstream::start().await;
    let gw = gateway(None, &upstream, Some((2, 3))).await;
    let key = gw.key_with(&["view_job_status"]).await;
    let url = gw.url("/api/v1/jobs/1");
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let answer = get(&url, &[("x-api-key", &key)]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(header(&answer, "ratelimit-limit"), "3");
        remaining.push(header(&answer, "ratelimit-remaining"));
        assert!(header(&answer, "ratelimit-reset").parse::<u64>().is_ok());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let limited = get(&url, &[("x-api-key", &key)]).await;
    assert_eq!(
        (limited.status.as_u16(), limited.error_code().as_str()),
        (429, "rate_limited")
    );
    let retry_after: u64 = header(&limited, "retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    assert_eq!(header(&limited, "ratelimit-remaining"), "0");
    assert_eq!(upstream.count(), 3, "the limited call was not forwarded");

    // At 2/s one more call is allowed half a second later; Retry-After rounds that up to 1 s.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(get(&url, &[("x-api-key", &key)]).await.status, 200);
}

#[tokio::test]
async fn an_app_override_applies_to_all_its_keys_and_keys_are_limited_independently() {
    let upstream = Upstream::start().await;
    let gw = gateway(None, &upstream, None).await;
    let limited_app = app_with_limit(&gw, "tight", Some((1, 2))).await;
    let (_, k1) = gw.create_key(&limited_app, None).await;
    let (_, k2) = gw.create_key(&limited_app, None).await;
    let free_app = app_with_limit(&gw, "default", None).await;
    let (_, k3) = gw.create_key(&free_app, None).await;
    let url = gw.url("/api/v1/jobs/1");
    for key in [&k1, &k2] {
        for _ in 0..2 {
            let answer = get(&url, &[("x-api-key", key)]).await;
            assert_eq!(answer.status, 200);
            assert_eq!(header(&answer, "ratelimit-limit"), "2");
        }
        assert_eq!(get(&url, &[("x-api-key", key)]).await.status, 429);
    }
    let answer = get(&url, &[("x-api-key", &k3)]).await;
    assert_eq!(
        (answer.status.as_u16(), header(&answer, "ratelimit-limit")),
        (200, "1000".to_owned())
    );

    // Editing the app's limit applies to its keys at once.
    let patch = json!({"rate_limit": {"per_second": 100, "burst": 50}});
    assert_eq!(
        gw.admin(
            Method::PATCH,
            &format!("/v1/apps/{limited_app}"),
            Some(patch)
        )
        .await
        .status,
        200
    );
    let answer = get(&url, &[("x-api-key", &k1)]).await;
    assert_eq!(
        (answer.status.as_u16(), header(&answer, "ratelimit-limit")),
        (200, "50".to_owned())
    );
}

/// Today's count, or `None` while the store is still coming back.
async fn usage(gw: &TestGateway, path: &str) -> Option<u64> {
    let answer = gw.admin(Method::GET, path, None).await;
    if answer.status == 503 {
        return None;
    }
    assert_eq!(answer.status, 200, "{path}");
    let days = answer.json();
    let days = days.as_array().expect("list");
    assert_eq!(days.len(), 1, "?days=1 gives today only");
    days[0]["requests"].as_u64()
}

async fn wait_for_usage(gw: &TestGateway, path: &str, want: u64) {
    for _ in 0..200 {
        if usage(gw, path).await == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{path}: usage is {:?}, wanted {want}",
        usage(gw, path).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_match_the_calls_made_even_under_concurrency() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = gateway(Some(&redis), &upstream, None).await;
    let app = app_with_limit(&gw, "counted", None).await;
    let (k1, key1) = gw.create_key(&app, None).await;
    let (k2, key2) = gw.create_key(&app, None).await;
    let url = gw.url("/api/v1/jobs/1");
    let calls: Vec<_> = (0..300)
        .map(|i| {
            let url = url.clone();
            let key = if i % 3 == 0 {
                key2.clone()
            } else {
                key1.clone()
            };
            tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await.status })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("task"), 200);
    }
    wait_for_usage(&gw, &format!("/v1/keys/{k1}/usage?days=1"), 200).await;
    wait_for_usage(&gw, &format!("/v1/keys/{k2}/usage?days=1"), 100).await;
    wait_for_usage(&gw, &format!("/v1/apps/{app}/usage?days=1"), 300).await;
    let week = gw
        .admin(Method::GET, &format!("/v1/apps/{app}/usage"), None)
        .await
        .json();
    let week = week.as_array().expect("list");
    assert_eq!(week.len(), 7, "seven days by default, oldest first");
    assert!(week[0]["date"].as_str() < week[6]["date"].as_str());
    assert_eq!(week[6]["requests"], 300);
    let bad = gw
        .admin(Method::GET, &format!("/v1/apps/{app}/usage?days=0"), None)
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(
        gw.admin(Method::GET, "/v1/keys/nope/usage", None)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_neither_fails_cached_calls_nor_loses_their_counts() {
    let mut redis = RedisServer::start_persistent();
    let upstream = Upstream::start().await;
    let gw = gateway(Some(&redis), &upstream, None).await;
    let app = app_with_limit(&gw, "outage", None).await;
    let (key_id, key) = gw.create_key(&app, None).await;
    let url = gw.url("/api/v1/jobs/1");
    assert_eq!(get(&url, &[("x-api-key", &key)]).await.status, 200);
    wait_for_usage(&gw, &format!("/v1/keys/{key_id}/usage?days=1"), 1).await;

    redis.stop();
    for _ in 0..50 {
        // Each call is bounded generously: a call that waited on the dead store would hang here.
        let answer =
            tokio::time::timeout(Duration::from_secs(5), get(&url, &[("x-api-key", &key)]))
                .await
                .expect("a cached key is served without waiting on the store");
        assert_eq!(answer.status, 200);
    }
    // Let at least one flush fail while Redis is down.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    redis.start_again();
    wait_for_usage(&gw, &format!("/v1/keys/{key_id}/usage?days=1"), 51).await;
    wait_for_usage(&gw, &format!("/v1/apps/{app}/usage?days=1"), 51).await;
    let metrics = get(&format!("http://{}/metrics", gw.metrics), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        sample(&text, "scopegate_store_errors_total", &[("op", "flush")]) >= 1.0,
        "{text}"
    );
}

/// The value of one series in Prometheus text (0 when absent); panics if the text is malformed.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    common::prom::sum(&common::prom::parse(text), name, labels)
}

#[tokio::test]
async fn metrics_parse_and_count_calls_by_route_status_app_and_reason() {
    let upstream = Upstream::start().await;
    let gw = gateway(None, &upstream, None).await;
    let app = app_with_limit(&gw, "metered", Some((1, 2))).await;
    let (_, key) = gw.create_key(&app, None).await;
    let jobs = gw.url("/api/v1/jobs/7");
    for _ in 0..2 {
        assert_eq!(get(&jobs, &[("x-api-key", &key)]).await.status, 200);
    }
    assert_eq!(get(&jobs, &[("x-api-key", &key)]).await.status, 429);
    assert_eq!(get(&jobs, &[]).await.status, 401);
    assert_eq!(
        get(&jobs, &[("x-api-key", "sg_nope_nope")]).await.status,
        401
    );
    let deploy = common::http::send(
        Method::POST,
        &gw.url("/api/v1/models/m/deploy"),
        &[("x-api-key", &key)],
        "",
    )
    .await;
    assert_eq!(deploy.status, 403);
    assert_eq!(get(&gw.url("/no/such/route"), &[]).await.status, 404);

    let metrics = get(&format!("http://{}/metrics", gw.metrics), &[]).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let jobs_route = "/api/v1/jobs/{job_id}";
    let requests = |status: &str, app_label: &str, route: &str| {
        sample(
            &text,
            "scopegate_requests_total",
            &[
                ("route", route),
                ("method", "GET"),
                ("status", status),
                ("app", app_label),
            ],
        )
    };
    assert_eq!(requests("200", &app, jobs_route), 2.0, "{text}");
    assert_eq!(requests("429", &app, jobs_route), 1.0);
    assert_eq!(requests("401", "none", jobs_route), 2.0);
    assert_eq!(requests("404", "none", "unmatched"), 1.0);
    assert!(
        !text.contains("/api/v1/jobs/7"),
        "raw paths never become labels"
    );
    assert_eq!(
        sample(
            &text,
            "scopegate_auth_failures_total",
            &[("reason", "missing_key")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "scopegate_auth_failures_total",
            &[("reason", "invalid_key")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "scopegate_auth_failures_total",
            &[("reason", "scope_denied")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "scopegate_auth_failures_total",
            &[("reason", "expired_key")]
        ),
        0.0
    );
    assert_eq!(
        sample(&text, "scopegate_rate_limited_total", &[("app", &app)]),
        1.0
    );
    assert!(sample(&text, "scopegate_key_cache_total", &[("result", "hit")]) >= 3.0);
    assert!(sample(&text, "scopegate_key_cache_total", &[("result", "miss")]) >= 1.0);
    for histogram in [
        "scopegate_request_duration_seconds_bucket",
        "scopegate_upstream_duration_seconds_bucket",
    ] {
        assert!(text.contains(histogram), "{histogram} missing");
    }
    assert!(
        text.contains(r#"scopegate_upstream_duration_seconds_count{upstream="tools"} 2"#),
        "{text}"
    );
    assert!(text.contains("scopegate_config_reloads_total"));
    assert!(text.contains("scopegate_store_errors_total"));
    assert_eq!(
        get(&format!("http://{}/healthz", gw.metrics), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&format!("http://{}/readyz", gw.metrics), &[])
            .await
            .status,
        200
    );
}
