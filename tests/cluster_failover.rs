//! Gateways on a Redis Cluster through a failover: the master holding the gateway's slot is
//! killed mid-traffic, its replica takes over, and nothing needs a restart.

mod common;

use common::cluster::RedisCluster;
use common::gateway::{deploy_at, TestGateway};
use common::instances::gateway_on_url;
use common::upstream::Upstream;
use http::Method;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// Any key of the default layout: all of them share this slot on a cluster.
const A_GATEWAY_KEY: &str = "sg:{sg:}appidx";
/// Far beyond what a failover takes (node timeout 2 s, then an election), so only a gateway
/// that never recovers trips it.
const RECOVER_WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// A gateway on the cluster whose cache outlives the test (a cached key is then served by the
/// cache alone for as long as the feed stays subscribed).
async fn gateway(seed: &str, upstream: &Upstream) -> TestGateway {
    gateway_on_url(seed, upstream, |yaml| {
        yaml.replace("  ttl: 30s", "  ttl: 10m")
            .replace("  redis: ", "  timeout: 500ms\n  redis: ")
    })
    .await
}

/// Waits until the gateway is ready: the config is loaded, the store answers and (from
/// start-up on) the feed is subscribed.
async fn wait_ready(g: &TestGateway) {
    let deadline = Instant::now() + RECOVER_WITHIN;
    loop {
        let status = common::http::get(&format!("http://{}/readyz", g.metrics), &[])
            .await
            .status;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "gateway never became ready");
        sleep(POLL).await;
    }
}

/// Each live node's port with how many connections it holds subscribed to the feed's channel
/// (for the log: the feeds should sit on a replica, not on the master about to die).
fn subscribers(cluster: &RedisCluster) -> Vec<(u16, String)> {
    cluster
        .live_ports()
        .into_iter()
        .map(|port| {
            let answer = common::cluster::cli(port, &["PUBSUB", "NUMSUB", "sg:invalidate"]);
            let count = answer.and_then(|a| a.lines().nth(1).map(str::to_owned));
            (port, count.unwrap_or_default())
        })
        .collect()
}

/// Calls with `key` through `proxy` until `stop`, every status seen.
fn traffic(
    proxy: std::net::SocketAddr,
    key: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u16>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            seen.push(deploy_at(proxy, &key).await);
            sleep(Duration::from_millis(20)).await;
        }
        seen
    })
}

/// Polls `call` until it gives `want`, allowing only `meanwhile` before that.
async fn until_status<F, Fut>(what: &str, want: u16, meanwhile: &[u16], mut call: F) -> Vec<u16>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = Instant::now() + RECOVER_WITHIN;
    let mut seen = Vec::new();
    loop {
        let status = call().await;
        seen.push(status);
        if status == want {
            return seen;
        }
        assert!(
            meanwhile.contains(&status),
            "{what}: got {status} (seen {seen:?})"
        );
        assert!(Instant::now() < deadline, "{what}: never {want} ({seen:?})");
        sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_without_a_gateway_restart() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster");
    let upstream = Upstream::start().await;
    // The worst case: the node named in `store.redis` is the one that dies.
    let master = cluster.master_of(A_GATEWAY_KEY);
    let seed = cluster.url_of(master);
    let a = gateway(&seed, &upstream).await;
    let b = gateway(&seed, &upstream).await;
    wait_ready(&a).await;
    wait_ready(&b).await;

    // `cached` is used on `a` before the failover, `uncached` never; `revoked` is cached on
    // `b` and revoked through `a` once the cluster has failed over.
    let app = a.create_app("failover", &["deploy_tool"]).await;
    let (_, cached) = a.create_key(&app, None).await;
    let (_, uncached) = a.create_key(&app, None).await;
    let (revoked_id, revoked) = a.create_key(&app, None).await;
    assert_eq!(a.deploy(&cached).await, 200);
    assert_eq!(b.deploy(&revoked).await, 200);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_replicated();
        cluster
    })
    .await
    .expect("replicated");

    let stop = Arc::new(AtomicBool::new(false));
    let served = traffic(a.proxy, cached.clone(), stop.clone());
    sleep(Duration::from_millis(200)).await;
    let mut cluster = cluster;
    println!("subscribers before the kill: {:?}", subscribers(&cluster));
    cluster.kill(master);
    println!("killed master 127.0.0.1:{master}");

    // During the failover an uncached key may get 503 store_unavailable, never a wrong answer;
    // once a replica has taken over it works, on the same gateway.
    let started = Instant::now();
    let seen = until_status("uncached key", 200, &[503], || a.deploy(&uncached)).await;
    println!(
        "uncached key served {:?} after the kill ({} tries)",
        started.elapsed(),
        seen.len()
    );

    // The cached key never noticed.
    stop.store(true, Ordering::SeqCst);
    let statuses = served.await.expect("traffic task");
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a cached key was refused during the failover: {statuses:?}"
    );

    // A revocation made now reaches the other instance: the feeds survived or resubscribed.
    until_status("revocation", 204, &[503], || async {
        a.admin(Method::DELETE, &format!("/v1/keys/{revoked_id}"), None)
            .await
            .status
            .as_u16()
    })
    .await;
    until_status("revoked key on the other gateway", 401, &[200, 503], || {
        b.deploy(&revoked)
    })
    .await;
    assert_ne!(cluster.master_of(A_GATEWAY_KEY), master);
}
