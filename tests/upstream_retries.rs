//! When a failed attempt is tried again on another target, and when never: a request that
//! never reached an upstream (connection refused) is retried for any method; an idempotent
//! request with a small body is retried after a 502/503/504 answer or a reset; a POST or PATCH
//! that reached an upstream is never sent twice (502 instead), nor is a GET whose body is over
//! 64 KiB; and retries stay within the budget when every target fails.
//!
//! Every request here has a path of its own, so the replicas' counts say exactly where each
//! one went and how many times.

mod common;

use bytes::Bytes;
use common::gateway::TestGateway;
use common::pool::{call_at, many, pool_metric, replica_of, retries, PoolConfig};
use common::replica::{Mode, Replica};
use http::Method;
use std::time::Instant;

/// Round robin (so the failing target surely gets its share) and no passive ejection (so it
/// keeps getting it): only the retry rules decide.
const RULES_ONLY: &str = "balance: round_robin\npassive:\n  failures: 0";

async fn pair(failing_mode: Mode) -> (Replica, Replica, TestGateway) {
    let failing = Replica::start("failing").await;
    let fine = Replica::start("fine").await;
    failing.set_mode(failing_mode);
    let gw = PoolConfig::new(&[failing.url(), fine.url()])
        .with(RULES_ONLY)
        .start()
        .await;
    (failing, fine, gw)
}

/// How many times `path` reached each of (failing, fine), for `method`.
fn receipts(failing: &Replica, fine: &Replica, method: &str, path: &str) -> (usize, usize) {
    (
        failing.received_of(method, path),
        fine.received_of(method, path),
    )
}

/// `scopegate_upstream_requests_total` of `target` with `outcome`.
async fn attempts(gw: &TestGateway, target: &Replica, outcome: &str) -> f64 {
    pool_metric(
        gw,
        "scopegate_upstream_requests_total",
        &[("target", &target.url()), ("outcome", outcome)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_target_for_any_method() {
    let (stopped, fine, gw) = pair(Mode::Answer).await;
    stopped.stop().await;
    for i in 0..20 {
        let method = if i % 2 == 0 {
            Method::POST
        } else {
            Method::GET
        };
        let body = Bytes::from(format!("payload {i}"));
        let answer = call_at(gw.proxy, method.clone(), &format!("r{i}"), body.clone()).await;
        assert_eq!(answer.status, 200, "{method} r{i}: {:?}", answer.body);
        assert_eq!(replica_of(&answer).as_deref(), Some("fine"));
        assert_eq!(fine.received_of(method.as_str(), &format!("/pool/r{i}")), 1);
    }
    let payloads: u64 = (0..20).map(|i| format!("payload {i}").len() as u64).sum();
    assert_eq!(
        fine.body_lens().iter().sum::<u64>(),
        payloads,
        "every body arrived whole"
    );
    let counted = retries(&gw).await;
    assert!(
        (1.0..=20.0).contains(&counted),
        "{counted} retries counted; round robin sent about half to the stopped target"
    );
    assert_eq!(attempts(&gw, &stopped, "connect_error").await, counted);
    assert_eq!(attempts(&gw, &fine, "response").await, 20.0);
}

/// GETs (no body) to a pair whose first target fails by `mode`: every one is answered 200 by
/// the other target, and each failed attempt is one retry on the metric.
async fn a_get_failed_by(mode: Mode) {
    let (failing, fine, gw) = pair(mode).await;
    for i in 0..20 {
        let path = format!("/pool/g{i}");
        let answer = call_at(gw.proxy, Method::GET, &format!("g{i}"), Bytes::new()).await;
        assert_eq!(answer.status, 200, "{mode:?} g{i}: {:?}", answer.body);
        assert_eq!(replica_of(&answer).as_deref(), Some("fine"));
        let (at_failing, at_fine) = receipts(&failing, &fine, "GET", &path);
        assert!(
            at_failing <= 1 && at_fine == 1,
            "{path}: {at_failing} + {at_fine}"
        );
    }
    assert!(
        failing.received() >= 1,
        "round robin never chose the failing target"
    );
    assert_eq!(retries(&gw).await, failing.received() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_answered_503_is_retried_on_the_other_target() {
    a_get_failed_by(Mode::Status(503)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_answered_502_or_504_is_retried_on_the_other_target() {
    a_get_failed_by(Mode::Status(502)).await;
    a_get_failed_by(Mode::Status(504)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_connection_was_reset_is_retried_on_the_other_target() {
    a_get_failed_by(Mode::Reset).await;
}

const HAMMER: usize = 200;

/// Many POSTs and PATCHes at once to a pair whose first target fails by `mode`: each reached
/// exactly one target, exactly once; the failing target's got its own answer (a 503 passes
/// through as the upstream sent it) or, after a reset, 502; the other's 200.
async fn writes_are_never_sent_twice(mode: Mode) {
    let (failing, fine, gw) = pair(mode).await;
    let proxy = gw.proxy;
    let method = |i: usize| {
        if i % 2 == 0 {
            Method::POST
        } else {
            Method::PATCH
        }
    };
    let answers = many(HAMMER, 10, |i| {
        call_at(proxy, method(i), format!("w{i}"), vec![b'w'; 1024])
    })
    .await;
    for (i, answer) in answers.iter().enumerate() {
        let path = format!("/pool/w{i}");
        let m = method(i);
        match receipts(&failing, &fine, m.as_str(), &path) {
            (1, 0) => match mode {
                Mode::Status(status) => {
                    assert_eq!(answer.status, status, "{m} {path}: {:?}", answer.body);
                    assert_eq!(replica_of(answer).as_deref(), Some(failing.name()));
                }
                _ => {
                    assert_eq!(answer.status, 502, "{mode:?} {m} {path}: {:?}", answer.body);
                    assert_eq!(answer.error_code(), "upstream_unavailable");
                }
            },
            (0, 1) => assert_eq!(answer.status, 200, "{m} {path}: {:?}", answer.body),
            seen => panic!("{mode:?} {m} {path} reached (failing, fine) {seen:?} times"),
        }
    }
    assert_eq!(failing.received() + fine.received(), HAMMER);
    assert!(
        failing.received() >= 1,
        "round robin never chose the failing target"
    );
    assert_eq!(retries(&gw).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_503_gets_that_answer_and_is_never_sent_twice() {
    writes_are_never_sent_twice(Mode::Status(503)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_connection_was_reset_is_answered_502_and_never_sent_twice() {
    writes_are_never_sent_twice(Mode::Reset).await;
}

/// The largest body a retried request may carry.
const RETRYABLE_BODY: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_over_64_kib_is_not_retried() {
    let (failing, fine, gw) = pair(Mode::Status(503)).await;
    for (size, retried) in [(RETRYABLE_BODY, true), (RETRYABLE_BODY + 1, false)] {
        for i in 0..6 {
            let name = format!("b{size}-{i}");
            let path = format!("/pool/{name}");
            let answer = call_at(gw.proxy, Method::GET, &name, vec![b'b'; size]).await;
            match (receipts(&failing, &fine, "GET", &path), retried) {
                ((0, 1), _) | ((1, 1), true) => assert_eq!(answer.status, 200),
                ((1, 0), false) => assert_ne!(
                    answer.status,
                    200,
                    "{path}: answered by {:?}",
                    replica_of(&answer)
                ),
                (seen, _) => panic!("{size}-byte GET {path} reached (failing, fine) {seen:?}"),
            }
        }
    }
    // Round robin sent three of each size to the failing target, which read each body whole.
    let lens = failing.body_lens();
    for size in [RETRYABLE_BODY, RETRYABLE_BODY + 1] {
        assert!(
            lens.contains(&(size as u64)),
            "no {size}-byte body reached the failing target: {lens:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_every_target_fails() {
    const SENT: usize = 300;
    let a = Replica::start("a").await;
    let b = Replica::start("b").await;
    a.set_mode(Mode::Status(503));
    b.set_mode(Mode::Status(503));
    let gw = PoolConfig::new(&[a.url(), b.url()])
        .with("passive:\n  failures: 0\nretry:\n  attempts: 1\n  budget: 20%")
        .start()
        .await;
    let started = Instant::now();
    let proxy = gw.proxy;
    let answers = many(SENT, 4, |i| {
        call_at(proxy, Method::GET, format!("f{i}"), Bytes::new())
    })
    .await;
    let window = started.elapsed().as_secs_f64().max(10.0);
    assert!(answers.iter().all(|a| a.status != 200));
    let received = a.received() + b.received();
    assert!(received >= SENT, "{received} receipts for {SENT} requests");
    let retried = received - SENT;
    // 20 % of the requests, plus 3 per second over the (10 s, or longer) window, plus one per
    // client in flight: tower checks the balance and withdraws in two steps, so concurrent
    // retries may each pass the check for the last retry's worth.
    let allowed = 0.2 * SENT as f64 + 3.0 * window + 4.0;
    assert!(
        retried as f64 <= allowed,
        "{retried} retries for {SENT} requests; the budget allows {allowed:.0}"
    );
    assert!(
        retried >= 1,
        "the budget allows some retries; none was made"
    );
    assert_eq!(retries(&gw).await, retried as f64);
}
