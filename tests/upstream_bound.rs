//! `max_connections` bounds the connections open to each target, whether the requests come
//! over many HTTP/1.1 connections or as streams of one HTTP/2 connection; a request waiting for
//! a connection gets 504 `upstream_timeout` once `header_timeout` passes.

mod common;

use bytes::Bytes;
use common::pool::{call_at, eventually, get, many, PoolConfig};
use common::replica::{Mode, Replica};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use std::time::Duration;

const CONCURRENT: usize = 10;
/// Each request takes this long upstream, so all of them overlap.
const SLOW: Duration = Duration::from_millis(300);

async fn bounded(replica: &Replica, header_timeout: &str) -> common::gateway::TestGateway {
    PoolConfig::new(&[replica.url()])
        .with(&format!(
            "max_connections: 2\nheader_timeout: {header_timeout}\ntimeout: 60s"
        ))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_share_at_most_max_connections_to_a_target() {
    let replica = Replica::start("a").await;
    replica.set_slow(SLOW);
    let gw = bounded(&replica, "30s").await;
    let proxy = gw.proxy;
    // `call_at` makes a client (so a connection to the gateway) per request.
    let answers = many(CONCURRENT, CONCURRENT, |i| {
        call_at(proxy, Method::GET, format!("{i}-slow"), Bytes::new())
    })
    .await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    assert_eq!(replica.received(), CONCURRENT);
    let peak = replica.peak_connections();
    assert!(
        (1..=2).contains(&peak),
        "{peak} connections open at once to a target with max_connections 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http2_clients_streams_share_at_most_max_connections_to_a_target() {
    let replica = Replica::start("a").await;
    replica.set_slow(SLOW);
    let gw = bounded(&replica, "30s").await;
    let sender = common::h2::one_connection(gw.proxy).await;
    let requests = (0..CONCURRENT).map(|i| {
        let mut sender = sender.clone();
        let uri = format!("http://{}/pool/{i}-slow", gw.proxy);
        async move {
            let request = Request::get(uri)
                .body(Full::new(Bytes::new()))
                .expect("request");
            let response = sender.send_request(request).await.expect("response");
            let status = response.status();
            let _ = response.into_body().collect().await;
            status
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(replica.received(), CONCURRENT);
    let peak = replica.peak_connections();
    assert!(
        (1..=2).contains(&peak),
        "{peak} connections open at once to a target with max_connections 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_a_busy_targets_connection_get_504_after_header_timeout() {
    let replica = Replica::start("a").await;
    let gw = bounded(&replica, "1s").await;
    // Two answers that stay open mid-body hold both connections (no header timeout runs for
    // them: their heads came).
    let busy: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(call_at(
                gw.proxy,
                Method::GET,
                format!("{i}-halfway"),
                Bytes::new(),
            ))
        })
        .collect();
    eventually("both connections are busy", || async {
        replica.received() == 2
    })
    .await;
    let proxy = gw.proxy;
    let waiting = many(4, 4, |i| {
        call_at(proxy, Method::GET, format!("waiting-{i}"), Bytes::new())
    })
    .await;
    for answer in &waiting {
        assert_eq!(answer.status, 504, "{:?}", answer.body);
        assert_eq!(answer.error_code(), "upstream_timeout");
    }
    assert_eq!(
        replica.received(),
        2,
        "a waiting request reached the target"
    );
    assert_eq!(replica.peak_connections(), 2);

    replica.release_held();
    for task in busy {
        let answer = task.await.expect("task");
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body[..], b"first;last");
    }
    assert_eq!(get(&gw, "after").await.status, 200);
    assert_eq!(replica.peak_connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_stalled_target_get_504_and_free_their_connections() {
    let replica = Replica::start("a").await;
    replica.set_mode(Mode::Stall);
    let gw = bounded(&replica, "1s").await;
    let proxy = gw.proxy;
    let answers = many(6, 6, |i| {
        call_at(proxy, Method::GET, format!("stalled-{i}"), Bytes::new())
    })
    .await;
    for answer in &answers {
        assert_eq!(answer.status, 504, "{:?}", answer.body);
        assert_eq!(answer.error_code(), "upstream_timeout");
    }
    // (No bound on the replica's peak here: a connection the gateway gave up and one it
    // opened in its place may overlap in the replica's count for a moment.)
    // The stalled connections were given up, and their places with them.
    replica.set_mode(Mode::Answer);
    eventually("the target answers again", || async {
        get(&gw, "after").await.status == 200
    })
    .await;
}
