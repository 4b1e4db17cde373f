//! One of three targets dies under load and comes back: no request that was safe to retry
//! fails, the dead target leaves rotation, and returns once it answers again. Prints the
//! failover figures (failed requests, time to eject, time to return) for the README and the
//! closing note; the assertions are on behaviour only, never on time.
//!
//! `cargo nextest run --test upstream_failover --no-capture` shows the figures.

mod common;

use common::pool::{call_at, eventually, target_up, PoolConfig};
use common::replica::Replica;
use http::Method;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Concurrent clients, each sending GETs back to back until told to stop.
const CLIENTS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_under_load_fails_no_request_that_was_safe_to_retry() {
    let replicas = [
        Replica::start("a").await,
        Replica::start("b").await,
        Replica::start("c").await,
    ];
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();
    let gw = PoolConfig::new(&urls)
        .with("health:\n  path: /healthz\n  interval: 300ms\n  timeout: 200ms\n  unhealthy_after: 2\n  healthy_after: 2")
        .with("passive:\n  failures: 3\n  eject_for: 1s")
        .start()
        .await;
    let proxy = gw.proxy;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let answer = call_at(proxy, Method::GET, format!("c{c}-{i}"), Vec::new()).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if answer.status != 200 {
                        let body = String::from_utf8_lossy(&answer.body).into_owned();
                        failed.lock().expect("lock").push((answer.status, body));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let loaded = |n: usize| {
        let sent = sent.clone();
        async move {
            let start = sent.load(Ordering::Relaxed);
            while sent.load(Ordering::Relaxed) < start + n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    loaded(300).await;
    let victim = &replicas[1];
    let before_kill = victim.received();
    let killed = Instant::now();
    victim.stop().await;
    eventually("the killed target leaves rotation", || async {
        target_up(&gw, &urls[1]).await == Some(0.0)
    })
    .await;
    let to_eject = killed.elapsed();
    // Well after it left rotation, the load still flows (and nothing more reaches it).
    loaded(300).await;
    let sent_while_down = sent.load(Ordering::Relaxed);
    let restarted = Instant::now();
    victim.restart().await;
    eventually("the target is back in rotation", || async {
        target_up(&gw, &urls[1]).await == Some(1.0)
    })
    .await;
    let to_return = restarted.elapsed();
    let after_return = victim.received();
    loaded(300).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }
    let total = sent.load(Ordering::Relaxed);
    let failed = failed.lock().expect("lock").clone();
    eprintln!(
        "failover: {total} GETs from {CLIENTS} clients, {} failed; target killed after {before_kill} of its requests; \
         out of rotation {:.0} ms after the kill; back {:.0} ms after its restart (health every 300 ms, 2 passes); \
         {} requests sent while it was down",
        failed.len(),
        to_eject.as_secs_f64() * 1000.0,
        to_return.as_secs_f64() * 1000.0,
        sent_while_down,
    );
    assert!(
        failed.is_empty(),
        "GETs failed while a target died: {failed:?}"
    );
    assert!(before_kill > 0, "the victim served nothing before it died");
    assert!(
        victim.received() > after_return,
        "the target back in rotation gets requests again"
    );
    for r in &replicas {
        assert!(r.received() > 0, "{} served nothing", r.name());
    }
}
