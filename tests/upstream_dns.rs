//! A hostname target, resolved through the config's `resolver:` (a DNS server the test
//! controls): every address it resolves to is a target, traffic follows the answer when it
//! changes (TTL 1 s), and when the server stops answering the last addresses keep serving.
//! Two replicas listen on one port of 127.0.0.1 and 127.0.0.2, so the name moves between them.

mod common;

use common::dns::DnsServer;
use common::gateway::TestGateway;
use common::pool::{
    eventually, eventually_within, get, metrics, replica_of, target_status, PoolConfig,
};
use common::replica::Replica;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const NAME: &str = "replicas.test";
const FIRST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const SECOND: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Replicas on FIRST:P and SECOND:P for one port P.
async fn same_port_pair() -> (Replica, Replica) {
    for _ in 0..10 {
        let first = Replica::start("first").await;
        let other = SocketAddr::new(SECOND.into(), first.addr().port());
        if let Ok(second) = Replica::try_start_on("second", other).await {
            return (first, second);
        }
        first.stop().await;
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// Which replicas answered `count` GETs in a row: (by first, by second).
async fn answered_by(gw: &TestGateway, count: usize) -> (usize, usize) {
    let (mut first, mut second) = (0, 0);
    for i in 0..count {
        let answer = get(gw, &format!("n{i}")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        match replica_of(&answer).as_deref() {
            Some("first") => first += 1,
            Some("second") => second += 1,
            other => panic!("answered by {other:?}"),
        }
    }
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostname_target_follows_its_dns_answer_and_keeps_its_last_addresses() {
    let (first, second) = same_port_pair().await;
    let port = first.addr().port();
    let dns = DnsServer::start().await;
    dns.set(NAME, &[FIRST], 1);
    let url = format!("http://{NAME}:{port}");
    let gw = PoolConfig::new(std::slice::from_ref(&url))
        .resolver(dns.addr)
        .start()
        .await;
    assert_eq!(answered_by(&gw, 10).await, (10, 0));

    // Two addresses: both are targets.
    dns.set(NAME, &[FIRST, SECOND], 1);
    eventually("the second address takes requests", || async {
        answered_by(&gw, 4).await.1 > 0
    })
    .await;

    // The name moves: traffic follows, the old address gets nothing more.
    dns.set(NAME, &[SECOND], 1);
    eventually("traffic moved to the second address", || async {
        answered_by(&gw, 10).await == (0, 10)
    })
    .await;
    let at_first = first.received();
    assert_eq!(answered_by(&gw, 20).await, (0, 20));
    assert_eq!(first.received(), at_first);
    assert!(second.received() >= 20);

    // Both addresses of the name share its label: no raw address on /metrics.
    let samples = metrics(&gw).await;
    let labels: Vec<&String> = samples
        .iter()
        .filter(|s| s.name.starts_with("scopegate_upstream_"))
        .filter_map(|s| s.labels.get("target"))
        .collect();
    assert!(!labels.is_empty(), "no per-target upstream series");
    assert!(labels.iter().all(|l| **l == url), "{labels:?}");
    let status = target_status(&gw, &url).await;
    assert_eq!(status["address"], format!("{SECOND}:{port}"));

    // The server goes silent: the last addresses keep serving while it is asked again.
    dns.set_silent(true);
    let asked = dns.queries();
    eventually_within(
        "the name is asked again",
        Duration::from_secs(40),
        || async {
            assert_eq!(answered_by(&gw, 2).await, (0, 2));
            dns.queries() >= asked + 2
        },
    )
    .await;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(answered_by(&gw, 2).await, (0, 2));
    }
}
