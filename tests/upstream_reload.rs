//! A reload that changes an upstream's targets: a request in flight to a target that goes
//! away completes; a target that stays keeps its state (an ejection) and its idle connections.

mod common;

use common::pool::{
    eventually, get, pool_metric, replica_of, target_status, target_up, PoolConfig,
};
use common::replica::{Mode, Replica};

const SETTINGS: &str =
    "balance: round_robin\npassive:\n  failures: 2\n  eject_for: 60s\nretry:\n  attempts: 0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_requests_in_flight_and_the_ejection_of_a_target_that_stays() {
    let leaving = Replica::start("leaving").await;
    let staying = Replica::start("staying").await;
    let joining = Replica::start("joining").await;
    let gw = PoolConfig::new(&[leaving.url(), staying.url()])
        .with(SETTINGS)
        .start()
        .await;

    // `staying` fails twice in a row: ejected for a minute.
    staying.set_mode(Mode::Status(503));
    for i in 0..100 {
        if staying.received() >= 2 {
            break;
        }
        get(&gw, &format!("warm-{i}")).await;
    }
    assert_eq!(target_up(&gw, &staying.url()).await, Some(0.0));

    // A request held by `leaving`, in flight across the reload.
    let proxy = gw.proxy;
    let held = tokio::spawn(async move {
        common::pool::call_at(proxy, http::Method::GET, "hold", bytes::Bytes::new()).await
    });
    eventually("the held request reached its target", || async {
        leaving.received_of("GET", "/pool/hold") == 1
    })
    .await;

    PoolConfig::new(&[staying.url(), joining.url()])
        .with(SETTINGS)
        .write_over(&gw);
    eventually("the new target takes requests", || async {
        let answer = get(&gw, "after").await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        replica_of(&answer).as_deref() == Some("joining")
    })
    .await;

    // `staying` is still ejected: no request reaches it, the metric and the API say so.
    let received = staying.received();
    for i in 0..20 {
        let answer = get(&gw, &format!("kept-{i}")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(replica_of(&answer).as_deref(), Some("joining"));
    }
    assert_eq!(
        staying.received(),
        received,
        "the reload forgot the ejection"
    );
    assert_eq!(target_up(&gw, &staying.url()).await, Some(0.0));
    assert!(target_status(&gw, &staying.url()).await["ejected_until"].is_string());
    let ejections = pool_metric(
        &gw,
        "scopegate_upstream_ejections_total",
        &[("target", &staying.url())],
    )
    .await;
    assert_eq!(ejections, 1.0);

    assert!(
        !held.is_finished(),
        "the held request ended before its release"
    );
    leaving.release_held();
    let answer = held.await.expect("task");
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(replica_of(&answer).as_deref(), Some("leaving"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stays_keeps_its_idle_connections() {
    let staying = Replica::start("staying").await;
    let joining = Replica::start("joining").await;
    let gw = PoolConfig::new(&[staying.url()])
        .with("balance: round_robin")
        .start()
        .await;
    for i in 0..5 {
        assert_eq!(get(&gw, &format!("before-{i}")).await.status, 200);
    }
    assert_eq!(
        staying.connections_accepted(),
        1,
        "one keep-alive connection"
    );

    PoolConfig::new(&[staying.url(), joining.url()])
        .with("balance: round_robin")
        .write_over(&gw);
    eventually("the new target takes requests", || async {
        replica_of(&get(&gw, "after").await).as_deref() == Some("joining")
    })
    .await;
    for i in 0..10 {
        assert_eq!(get(&gw, &format!("again-{i}")).await.status, 200);
    }
    assert!(staying.received() >= 5 + 5);
    assert_eq!(
        staying.connections_accepted(),
        1,
        "the reload dropped the idle connection of a target that stayed"
    );
}
