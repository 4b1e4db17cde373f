//! Requests spread over an upstream's targets by weight, under either balance: with targets
//! that answer alike, each target's share follows its weight.

mod common;

use bytes::Bytes;
use common::pool::{call_at, many, replica_of, PoolConfig};
use common::replica::Replica;
use http::Method;

const REQUESTS: usize = 400;
/// Requests in flight at once: enough for least_requests to see unequal loads.
const CONCURRENCY: usize = 8;

/// Weights 3:1 give the heavy target 75 % of the requests; the bounds are far wider than
/// chance allows (the binomial spread at 400 requests is about 2 %).
async fn shares_follow_weights(balance: &str) {
    let heavy = Replica::start("heavy").await;
    let light = Replica::start("light").await;
    let gw = PoolConfig::weighted(&[(heavy.url(), 3), (light.url(), 1)])
        .with(&format!("balance: {balance}"))
        .start()
        .await;
    let proxy = gw.proxy;
    let answers = many(REQUESTS, CONCURRENCY, |i| {
        call_at(proxy, Method::GET, format!("r{i}"), Bytes::new())
    })
    .await;
    let mut answered_by_heavy = 0;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        if replica_of(answer).as_deref() == Some("heavy") {
            answered_by_heavy += 1;
        }
    }
    assert_eq!(heavy.received() + light.received(), REQUESTS);
    assert_eq!(answered_by_heavy, heavy.received());
    let share = heavy.received() as f64 / REQUESTS as f64;
    assert!(
        (0.65..=0.85).contains(&share),
        "{balance}: the weight-3 target took {:.1} % of the requests ({} of {REQUESTS}), not ~75 %",
        share * 100.0,
        heavy.received()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_spreads_by_weight() {
    shares_follow_weights("least_requests").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_by_weight() {
    shares_follow_weights("round_robin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_targets_share_alike_by_default() {
    let replicas = [
        Replica::start("a").await,
        Replica::start("b").await,
        Replica::start("c").await,
    ];
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();
    let gw = PoolConfig::new(&urls).start().await;
    let proxy = gw.proxy;
    let answers = many(300, CONCURRENCY, |i| {
        call_at(proxy, Method::GET, format!("r{i}"), Bytes::new())
    })
    .await;
    assert!(answers.iter().all(|a| a.status == 200));
    for replica in &replicas {
        let share = replica.received() as f64 / 300.0;
        assert!(
            (0.23..=0.43).contains(&share),
            "{replica:?} took {} of 300 requests",
            replica.received()
        );
    }
}
