//! Several gateway instances on one Redis: start one (directly or through a proxy's URL) and
//! wait until each listens for invalidations.

use super::delay_proxy::DelayProxy;
use super::gateway::{config_yaml, TestGateway, Upstreams};
use super::redis::RedisServer;
use super::upstream::Upstream;
use std::time::Duration;

/// A gateway in front of `upstream`, with its store at `redis_url`, after `edit` of the YAML.
pub(crate) async fn gateway_on_url(
    redis_url: &str,
    upstream: &Upstream,
    edit: impl FnOnce(String) -> String,
) -> TestGateway {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream.url(),
        },
        Some(redis_url),
        &dir.path().join("data"),
    );
    TestGateway::start_in(&edit(yaml), dir).await
}

pub(crate) async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

/// How many times Redis has run a command since the last reset.
pub(crate) async fn command_calls(redis_url: &str, command: &str) -> u64 {
    let mut conn = redis_conn(redis_url).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("info");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Zeroes Redis's command counters (`CONFIG RESETSTAT`).
pub(crate) async fn reset_stats(redis_url: &str) {
    let mut conn = redis_conn(redis_url).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .expect("resetstat");
}

/// Waits until `n` subscribers listen for invalidations (each gateway subscribes as it starts).
pub(crate) async fn wait_subscribers(redis_url: &str, n: u64) {
    let mut conn = redis_conn(redis_url).await;
    for _ in 0..500 {
        let (_, count): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("sg:invalidate")
            .query_async(&mut conn)
            .await
            .expect("numsub");
        if count >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gateways never subscribed to invalidations");
}

/// Two instances on one Redis: `a` direct, `b` through a proxy that holds command replies back
/// `delay` (see [`DelayProxy`]), both with room in `store.timeout` for the slowed round trips.
pub(crate) struct SlowPair {
    pub redis: RedisServer,
    pub upstream: Upstream,
    pub proxy: DelayProxy,
    pub a: TestGateway,
    pub b: std::sync::Arc<TestGateway>,
}

pub(crate) async fn slow_pair(delay: Duration) -> SlowPair {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let target = format!("127.0.0.1:{}", redis.port()).parse().expect("addr");
    let proxy = DelayProxy::start(target, delay).await;
    let slow_store = |yaml: String| yaml.replace("  redis: ", "  timeout: 2s\n  redis: ");
    let a = gateway_on_url(&redis.url(), &upstream, slow_store).await;
    let b = gateway_on_url(&proxy.url(), &upstream, slow_store).await;
    wait_subscribers(&redis.url(), 2).await;
    SlowPair {
        redis,
        upstream,
        proxy,
        a,
        b: std::sync::Arc::new(b),
    }
}
