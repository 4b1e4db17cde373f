//! Usage counts are exact across a store stall: a usage flush that times out while Redis is
//! paused, but is applied once Redis resumes, must not be counted again by its retries.

mod common;

use common::gateway::{config_yaml, TestGateway, Upstreams};
use common::http::get;
use common::prom;
use common::redis::RedisServer;
use common::upstream::Upstream;
use http::Method;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests sent, one after the other.
const REQUESTS: usize = 300;
/// The pause starts after this many requests, mid-way through the traffic.
const PAUSE_AFTER: usize = 100;
/// Longer than the store timeout (250 ms) and than the flush interval (500 ms): several
/// flushes time out during it, and Redis runs what they sent once it ends.
const PAUSE_MS: u64 = 1500;
/// Spreads the traffic over a few seconds, so counts keep arriving before, during and after the
/// pause.
const GAP: Duration = Duration::from_millis(10);
/// Counts must hold still this long (four flush intervals) to count as settled.
const STABLE_FOR: Duration = Duration::from_secs(2);
const SETTLE_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_exact_across_a_redis_pause() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = gateway_with_timeout(&redis, &upstream).await;
    let app = gw.create_app("exact", &["view_job_status"]).await;
    let (key_id, key) = gw.create_key(&app, None).await;

    for i in 0..REQUESTS {
        if i == PAUSE_AFTER {
            pause_redis(&redis, PAUSE_MS).await;
        }
        let answer = get(
            &gw.url(&format!("/api/v1/jobs/{i}")),
            &[("x-api-key", &key)],
        )
        .await;
        assert_eq!(answer.status, 200, "request {i}: {:?}", answer.body);
        tokio::time::sleep(GAP).await;
    }

    // The pause did stall flushes (else this would test nothing): at least one timed out.
    let metrics = get(&format!("http://{}/metrics", gw.metrics), &[]).await;
    let samples = prom::parse(&String::from_utf8_lossy(&metrics.body));
    let failed = prom::sum(&samples, "scopegate_store_errors_total", &[("op", "flush")]);
    assert!(failed >= 1.0, "no flush failed during the pause");

    let forwarded = u64::try_from(upstream.count()).expect("count");
    assert_eq!(forwarded, u64::try_from(REQUESTS).expect("requests"));
    let key_count = settled_usage(&gw, &format!("/v1/keys/{key_id}/usage?days=2")).await;
    let app_count = settled_usage(&gw, &format!("/v1/apps/{app}/usage?days=2")).await;
    assert_eq!(
        (key_count, app_count),
        (forwarded, forwarded),
        "usage (key, app) against requests the upstream received"
    );
}

/// The standard test gateway on `redis`, with the store timeout spelled out: the pause must
/// outlast it.
async fn gateway_with_timeout(redis: &RedisServer, upstream: &Upstream) -> TestGateway {
    let dir = tempfile::tempdir().expect("dir");
    let url = redis.url();
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream.url(),
        },
        Some(&url),
        &dir.path().join("data"),
    )
    .replace(
        &format!("  redis: {url}\n"),
        &format!("  redis: {url}\n  timeout: 250ms\n"),
    );
    assert!(yaml.contains("timeout: 250ms"), "{yaml}");
    TestGateway::start_in(&yaml, dir).await
}

/// `CLIENT PAUSE ms ALL` from a connection of its own (raw RESP): every other client's
/// commands wait until the pause ends, and then run.
async fn pause_redis(redis: &RedisServer, ms: u64) {
    let mut conn = TcpStream::connect(("127.0.0.1", redis.port()))
        .await
        .expect("connect to redis");
    let ms = ms.to_string();
    let command = format!(
        "*4\r\n$6\r\nCLIENT\r\n$5\r\nPAUSE\r\n${}\r\n{ms}\r\n$3\r\nALL\r\n",
        ms.len()
    );
    conn.write_all(command.as_bytes()).await.expect("send");
    let mut reply = [0u8; 5];
    conn.read_exact(&mut reply).await.expect("reply");
    assert_eq!(&reply, b"+OK\r\n");
}

/// The sum of a usage answer once it has stopped changing (flushes settled).
async fn settled_usage(gw: &TestGateway, path: &str) -> u64 {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut last = (usage_sum(gw, path).await, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = usage_sum(gw, path).await;
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= STABLE_FOR {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never settled (last {now})"
        );
    }
}

async fn usage_sum(gw: &TestGateway, path: &str) -> u64 {
    let answer = gw.admin(Method::GET, path, None).await;
    assert_eq!(answer.status, 200, "{path}: {:?}", answer.body);
    answer
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|day| day["requests"].as_u64().expect("requests"))
        .sum()
}
