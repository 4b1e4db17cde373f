//! Targets taken out of rotation and put back: passively (consecutive failed requests eject a
//! target for `eject_for`, doubled on a repeat), actively (a `/healthz` that fails
//! `unhealthy_after` times in a row, back after `healthy_after` passes), and what a request
//! gets when no target is left (503 with `Retry-After`, and no connection tried).

mod common;

use common::pool::{
    eventually, get, pool_metric, replica_of, target_status, target_up, PoolConfig,
};
use common::replica::{Mode, Replica};
use std::time::{Duration, SystemTime};

const PASSIVE: &str =
    "balance: round_robin\npassive:\n  failures: 3\n  eject_for: 3s\nretry:\n  attempts: 0";
const EJECT_FOR: Duration = Duration::from_secs(3);
/// Margin kept before an ejection's end, so a request sent in the window surely lands in it.
const MARGIN: Duration = Duration::from_millis(500);

/// When the target is ejected until, per `GET /v1/upstreams` (`None`: not ejected).
async fn ejected_until(gw: &common::gateway::TestGateway, url: &str) -> Option<SystemTime> {
    let status = target_status(gw, url).await;
    let until = status["ejected_until"].as_str()?;
    Some(humantime::parse_rfc3339_weak(until).unwrap_or_else(|e| panic!("{until}: {e}")))
}

async fn ejections(gw: &common::gateway::TestGateway, url: &str) -> f64 {
    pool_metric(gw, "scopegate_upstream_ejections_total", &[("target", url)]).await
}

/// Sends GETs until `replica` has received `count` requests in all.
async fn until_received(gw: &common::gateway::TestGateway, replica: &Replica, count: usize) {
    for _ in 0..200 {
        if replica.received() >= count {
            return;
        }
        get(gw, "work").await;
    }
    panic!("{replica:?} never received {count} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_eject_a_target_for_eject_for_doubled_on_a_repeat() {
    let good = Replica::start("good").await;
    let bad = Replica::start("bad").await;
    let gw = PoolConfig::new(&[good.url(), bad.url()])
        .with(PASSIVE)
        .start()
        .await;
    assert_eq!(target_up(&gw, &bad.url()).await, Some(1.0));
    bad.set_mode(Mode::Status(503));
    until_received(&gw, &bad, 3).await;

    // Three 503s in a row: ejected, and seen so on /metrics and in the admin API.
    assert_eq!(ejections(&gw, &bad.url()).await, 1.0);
    assert_eq!(target_up(&gw, &bad.url()).await, Some(0.0));
    assert_eq!(target_up(&gw, &good.url()).await, Some(1.0));
    let until = ejected_until(&gw, &bad.url())
        .await
        .expect("ejected_until is set while ejected");
    // No request reaches it while it is ejected.
    let mut sent = 0;
    while SystemTime::now() + MARGIN < until {
        let answer = get(&gw, &format!("while-ejected-{sent}")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(replica_of(&answer).as_deref(), Some("good"));
        sent += 1;
    }
    assert!(sent >= 5, "only {sent} requests fitted in the ejection");
    assert_eq!(bad.received(), 3, "a request reached the ejected target");

    // Back after eject_for: it is tried again (and now answers).
    bad.set_mode(Mode::Answer);
    eventually("the ejected target takes requests again", || async {
        replica_of(&get(&gw, "back").await).as_deref() == Some("bad")
    })
    .await;
    assert_eq!(target_up(&gw, &bad.url()).await, Some(1.0));
    assert_eq!(ejected_until(&gw, &bad.url()).await, None);

    // A repeat ejection lasts twice as long.
    bad.set_mode(Mode::Status(503));
    let before = SystemTime::now();
    let base = bad.received();
    until_received(&gw, &bad, base + 3).await;
    assert_eq!(ejections(&gw, &bad.url()).await, 2.0);
    let until = ejected_until(&gw, &bad.url()).await.expect("ejected again");
    let lasts = until.duration_since(before).unwrap_or_default();
    assert!(
        lasts > EJECT_FOR * 3 / 2,
        "the second ejection lasts {lasts:?}, not twice {EJECT_FOR:?}"
    );
}

const ACTIVE: &str = "passive:\n  failures: 0\nhealth:\n  path: /healthz\n  interval: 200ms\n  timeout: 150ms\n  unhealthy_after: 3\n  healthy_after: 2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_takes_a_target_out_and_passing_ones_bring_it_back() {
    let steady = Replica::start("steady").await;
    let flaky = Replica::start("flaky").await;
    let gw = PoolConfig::new(&[steady.url(), flaky.url()])
        .with(ACTIVE)
        .start()
        .await;
    eventually("both targets are checked and up", || async {
        flaky.health_checks(200) >= 1 && target_up(&gw, &flaky.url()).await == Some(1.0)
    })
    .await;

    flaky.set_health(503);
    eventually("the failing target is taken out", || async {
        target_up(&gw, &flaky.url()).await == Some(0.0)
    })
    .await;
    let failed = flaky.health_checks(503);
    assert!(
        failed >= 3,
        "taken out after {failed} failed checks, before unhealthy_after (3)"
    );
    assert_eq!(target_status(&gw, &flaky.url()).await["healthy"], false);
    assert_eq!(target_status(&gw, &steady.url()).await["healthy"], true);
    let received = flaky.received();
    for i in 0..20 {
        let answer = get(&gw, &format!("out-{i}")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(replica_of(&answer).as_deref(), Some("steady"));
    }
    assert_eq!(
        flaky.received(),
        received,
        "a request reached the unhealthy target"
    );

    let passed_before = flaky.health_checks(200);
    flaky.set_health(200);
    eventually("the target is back once its checks pass", || async {
        target_up(&gw, &flaky.url()).await == Some(1.0)
    })
    .await;
    let passed = flaky.health_checks(200) - passed_before;
    assert!(
        passed >= 2,
        "back after {passed} passing checks, before healthy_after (2)"
    );
    eventually("requests reach it again", || async {
        replica_of(&get(&gw, "again").await).as_deref() == Some("flaky")
    })
    .await;
}

/// The 503 the contract gives when no target is in rotation.
fn assert_no_target_left(answer: &common::http::Answer) {
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(answer.error_code(), "upstream_unavailable");
    let retry_after = answer
        .headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ASCII");
    assert!(
        retry_after.parse::<u64>().is_ok(),
        "Retry-After {retry_after:?} is not a number of seconds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_target_unhealthy_a_request_gets_503_and_reaches_no_target() {
    let a = Replica::start("a").await;
    let b = Replica::start("b").await;
    a.set_health(503);
    b.set_health(503);
    let health = "health:\n  path: /healthz\n  interval: 200ms\n  timeout: 150ms\n  unhealthy_after: 1\n  healthy_after: 1";
    let gw = PoolConfig::new(&[a.url(), b.url()])
        .with(health)
        .start()
        .await;
    eventually("both targets are out", || async {
        target_up(&gw, &a.url()).await == Some(0.0) && target_up(&gw, &b.url()).await == Some(0.0)
    })
    .await;
    assert_no_target_left(&get(&gw, "nobody").await);
    let post = common::pool::call(&gw, http::Method::POST, "nobody", "body").await;
    assert_no_target_left(&post);
    assert_eq!(
        (a.received(), b.received()),
        (0, 0),
        "a request reached a target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_target_ejected_a_request_gets_503_without_a_connection_attempt() {
    let a = Replica::start("a").await;
    let b = Replica::start("b").await;
    a.stop().await;
    b.stop().await;
    let gw = PoolConfig::new(&[a.url(), b.url()])
        .with("passive:\n  failures: 1\n  eject_for: 60s")
        .start()
        .await;
    // Refused by one target, then (the retry) by the other: both ejected.
    let answer = get(&gw, "refused").await;
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    assert_eq!(answer.error_code(), "upstream_unavailable");
    assert_eq!(ejections(&gw, &a.url()).await, 1.0);
    assert_eq!(ejections(&gw, &b.url()).await, 1.0);

    // Listening again, but ejected: the gateway does not even connect.
    a.restart().await;
    b.restart().await;
    assert_no_target_left(&get(&gw, "nobody").await);
    assert_eq!(
        (a.connections_accepted(), b.connections_accepted()),
        (0, 0),
        "the gateway connected to an ejected target"
    );
}
