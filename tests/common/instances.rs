//! Several gateway instances on one Redis: start one (directly or through a proxy's URL) and
//! wait until each listens for invalidations.

use super::gateway::{config_yaml, TestGateway, Upstreams};
use super::upstream::Upstream;
use std::time::Duration;

/// A gateway in front of `upstream`, with its store at `redis_url`, after `edit` of the YAML.
pub async fn gateway_on_url(
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

pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

/// Waits until `n` subscribers listen for invalidations (each gateway subscribes as it starts).
pub async fn wait_subscribers(redis_url: &str, n: u64) {
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
