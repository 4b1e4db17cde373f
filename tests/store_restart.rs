//! A Redis restart after a long outage: whatever backoff the gateway's links built up while
//! Redis was down, `/readyz` is 200 again within moments of Redis answering.

mod common;

use common::gateway::TestGateway;
use common::http::get;
use common::instances::{gateway_on_url, redis_conn, wait_subscribers};
use common::redis::RedisServer;
use common::upstream::Upstream;
use std::time::Duration;
use tokio::time::Instant;

/// Long enough for any reconnect backoff to have grown to its largest.
const OUTAGE: Duration = Duration::from_secs(9);
/// Every retry schedule tries at least once a second while Redis is down; this leaves room for
/// one missed try, a connect and a subscription on a busy machine.
const READY_WITHIN: Duration = Duration::from_secs(3);

async fn ready(g: &TestGateway) -> u16 {
    readiness(g).await.0
}

/// `/readyz`'s status and body (which says what is not ready).
async fn readiness(g: &TestGateway) -> (u16, String) {
    let answer = get(&format!("http://{}/readyz", g.metrics), &[]).await;
    let body = String::from_utf8_lossy(&answer.body).trim().to_owned();
    (answer.status.as_u16(), body)
}

/// Polls `/readyz` from the moment Redis answers again until it is 200, within
/// [`READY_WITHIN`]. On the way only "not subscribed" is allowed: once the feed is subscribed
/// again the store answers the very next probe (the link is remade, not reported down).
async fn ready_again(g: &TestGateway) {
    let back = Instant::now();
    let mut seen = Vec::new();
    loop {
        let (status, why) = readiness(g).await;
        if status == 200 {
            println!("ready {:?} after Redis came back", back.elapsed());
            return;
        }
        seen.push((back.elapsed(), why));
        assert!(
            seen.iter()
                .all(|(_, why)| why == "not subscribed to invalidations"),
            "the store was reported down after Redis was back and the feed subscribed: {seen:?}"
        );
        assert!(
            back.elapsed() < READY_WITHIN,
            "/readyz still {status} {:?} after Redis answered again: {seen:?}",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway on a persistent Redis with a key used (so cached) and one never used.
async fn gateway_with_keys(
    redis: &RedisServer,
    upstream: &Upstream,
) -> (TestGateway, String, String) {
    // Room in `store.timeout` for a connect on a busy machine: the bound under test is the
    // reconnect schedule, not the command timeout.
    let g = gateway_on_url(&redis.url(), upstream, |y| {
        y.replace("  redis: ", "  timeout: 1s\n  redis: ")
    })
    .await;
    wait_subscribers(&redis.url(), 1).await;
    let cached = g.key_with(&["deploy_tool"]).await;
    let uncached = g.key_with(&["deploy_tool"]).await;
    for _ in 0..5 {
        assert_eq!(g.deploy(&cached).await, 200);
    }
    assert_eq!(ready(&g).await, 200);
    (g, cached, uncached)
}

/// Traffic all through a long outage (cached and uncached keys, readiness probes), then Redis
/// restarts on the same port with its data (AOF): ready again within moments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_recovers_within_moments_of_redis_coming_back_after_a_long_outage() {
    let mut redis = RedisServer::start_persistent();
    let upstream = Upstream::start().await;
    let (g, cached, uncached) = gateway_with_keys(&redis, &upstream).await;

    redis.stop();
    let down = Instant::now();
    while down.elapsed() < OUTAGE {
        assert_eq!(
            g.deploy(&cached).await,
            200,
            "a cached key during the outage"
        );
        assert_eq!(
            g.deploy(&uncached).await,
            503,
            "an uncached key during the outage"
        );
        assert_eq!(ready(&g).await, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    redis.start_again();
    ready_again(&g).await;
    assert_eq!(g.deploy(&uncached).await, 200);
    assert_eq!(g.deploy(&cached).await, 200);
}

/// An outage with no traffic (only probes, which answer "not subscribed" without touching the
/// store once the feed has noticed): the command link still holds the connection Redis
/// dropped, or the failure of its last try.
/// Once the feed is subscribed again, the very next probe is 200: it remakes the link rather
/// than report its stale failure (which cost a whole probe period, ~3 s in a black-box run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_probe_after_an_idle_outage_remakes_the_link() {
    let mut redis = RedisServer::start_persistent();
    let upstream = Upstream::start().await;
    let (g, cached, uncached) = gateway_with_keys(&redis, &upstream).await;
    // The uses are written (last-used goes last), so nothing is left for the gateway to send.
    let id = cached.split('_').nth(1).expect("key id").to_owned();
    let mut conn = redis_conn(&redis.url()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !redis::cmd("HEXISTS")
        .arg("sg:last_used")
        .arg(&id)
        .query_async::<bool>(&mut conn)
        .await
        .expect("hexists")
    {
        assert!(Instant::now() < deadline, "uses never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    redis.stop();
    let down = Instant::now();
    while down.elapsed() < OUTAGE {
        assert_eq!(ready(&g).await, 503);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    redis.start_again();
    ready_again(&g).await;
    assert_eq!(g.deploy(&uncached).await, 200);
}
