//! Hostile HTTP/2 on a raw socket: "rapid reset" (CVE-2023-44487), where a client opens
//! streams and cancels them at once, so the server does work the client never waits for.
//!
//! Each case asserts that the flooding connection is closed, that the upstream saw a bounded
//! number of the flood's requests, and that other clients are still served.

mod common;

use common::gateway::TestGateway;
use common::h2::{
    push_request, push_reset, RawH2, CANCEL, ENHANCE_YOUR_CALM, REFUSED_STREAM,
    SETTINGS_MAX_CONCURRENT_STREAMS,
};
use common::upstream::Upstream;
use std::time::Duration;

const QUIET: Duration = Duration::from_secs(3);

async fn setup() -> (Upstream, TestGateway, String) {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::in_front_of(&upstream.url(), |yaml| yaml).await;
    let key = gateway.key_with(&["view_job_status"]).await;
    (upstream, gateway, key)
}

/// Appends a keyed GET of `path` on `stream` to `out`.
fn push_get(out: &mut Vec<u8>, gateway: &TestGateway, stream: u32, path: &str, key: &str) {
    let authority = gateway.proxy.to_string();
    push_request(out, stream, "GET", &authority, path, &[("x-api-key", key)]);
}

/// Waits (up to 2 s) until the upstream has received `n` requests.
async fn upstream_has(upstream: &Upstream, n: usize) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while upstream.count() < n {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// A new connection still gets a normal answer.
async fn assert_still_served(gateway: &TestGateway, key: &str) {
    let mut client = RawH2::connect(gateway.proxy).await;
    let mut request = Vec::new();
    push_get(&mut request, gateway, 1, "/api/v1/jobs/1", key);
    client.write(&request).await.expect("write");
    assert!(
        client.read_response(1, QUIET).await,
        "a new connection is served after the flood"
    );
}

#[tokio::test]
async fn resets_in_one_burst_get_goaway() {
    let (upstream, gateway, key) = setup().await;
    let flood_streams = 2000u32;
    let mut burst = Vec::new();
    for i in 0..flood_streams {
        let stream = 2 * i + 1;
        let path = "/api/v1/jobs/1/sleep";
        push_get(&mut burst, &gateway, stream, path, &key);
        push_reset(&mut burst, stream, CANCEL);
    }
    let mut client = RawH2::connect(gateway.proxy).await;
    // The server may close before it has read everything; what it did matters, not the write.
    let _ = client.write(&burst).await;
    let received = client.read_until_quiet(QUIET).await;

    assert!(received.closed, "the flooding connection is closed");
    assert_eq!(
        received.goaway_code(),
        Some(ENHANCE_YOUR_CALM),
        "GOAWAY says why: {:?}",
        received.frames.iter().map(|f| f.kind).collect::<Vec<_>>()
    );
    let reached = upstream.count();
    assert!(
        reached < 300,
        "{reached} of {flood_streams} cancelled requests reached the upstream"
    );
    assert_still_served(&gateway, &key).await;
}

#[tokio::test]
async fn resets_after_each_request_is_under_way_close_the_connection() {
    let (upstream, gateway, key) = setup().await;
    let flood_streams = 600u32;
    let mut client = RawH2::connect(gateway.proxy).await;
    let mut sent = 0;
    for i in 0..flood_streams {
        let stream = 2 * i + 1;
        let mut request = Vec::new();
        let path = "/api/v1/jobs/1/sleep";
        push_get(&mut request, &gateway, stream, path, &key);
        if client.write(&request).await.is_err() {
            break;
        }
        // Reset only once the upstream has the request: the gateway accepted the stream and
        // made the upstream call, so h2's bound on streams reset before they are accepted
        // cannot apply, only the gateway's own budget. A closed connection forwards nothing.
        if !upstream_has(&upstream, i as usize + 1).await {
            break;
        }
        let mut reset = Vec::new();
        push_reset(&mut reset, stream, CANCEL);
        if client.write(&reset).await.is_err() {
            break;
        }
        sent += 1;
    }
    let received = client.read_until_quiet(QUIET).await;

    assert!(received.closed, "closed after {sent} abandoned requests");
    assert!(
        (100..=101).contains(&sent),
        "closed once 100 requests under way were abandoned, not after {sent}"
    );
    let reached = upstream.count();
    assert!(
        reached <= sent + 1,
        "{reached} requests reached the upstream"
    );
    assert_still_served(&gateway, &key).await;
}

#[tokio::test]
async fn a_client_that_cancels_some_requests_keeps_its_connection() {
    let (upstream, gateway, key) = setup().await;
    let mut client = RawH2::connect(gateway.proxy).await;
    let mut stream = 1u32;
    // Two answered requests for each cancelled one: 120 cancellations, over the budget's
    // count but not half of the connection's requests.
    for round in 0..120 {
        for _ in 0..2 {
            let mut request = Vec::new();
            let path = "/api/v1/jobs/1";
            push_get(&mut request, &gateway, stream, path, &key);
            client.write(&request).await.expect("write");
            assert!(
                client.read_response(stream, QUIET).await,
                "request on stream {stream} (round {round}) answered"
            );
            stream += 2;
        }
        let mut cancelled = Vec::new();
        let path = "/api/v1/jobs/1/sleep";
        push_get(&mut cancelled, &gateway, stream, path, &key);
        client.write(&cancelled).await.expect("write");
        // Under way before it is cancelled, so it counts as abandoned.
        let requests = 3 * (round + 1);
        assert!(
            upstream_has(&upstream, requests).await,
            "request {requests} forwarded"
        );
        let mut reset = Vec::new();
        push_reset(&mut reset, stream, CANCEL);
        client.write(&reset).await.expect("write");
        stream += 2;
    }
    let mut last = Vec::new();
    push_get(&mut last, &gateway, stream, "/api/v1/jobs/1", &key);
    client.write(&last).await.expect("write");
    assert!(
        client.read_response(stream, QUIET).await,
        "the connection still serves after 120 cancellations"
    );
}

#[tokio::test]
async fn streams_over_the_concurrency_bound_are_refused() {
    let (upstream, gateway, key) = setup().await;
    let opened = 300u32;
    let mut burst = Vec::new();
    for i in 0..opened {
        let path = "/api/v1/jobs/1/sleep";
        push_get(&mut burst, &gateway, 2 * i + 1, path, &key);
    }
    let mut client = RawH2::connect(gateway.proxy).await;
    client.write(&burst).await.expect("write");
    // The upstream holds each request for 3 s: nothing is answered while we look.
    let received = client.read_until_quiet(Duration::from_secs(1)).await;

    let advertised = received
        .frames
        .iter()
        .find_map(|f| f.setting(SETTINGS_MAX_CONCURRENT_STREAMS));
    assert_eq!(advertised, Some(256), "the bound is advertised");
    let refused = received
        .frames
        .iter()
        .filter(|f| f.reset_code() == Some(REFUSED_STREAM))
        .count();
    assert_eq!(refused, 300 - 256, "streams past the bound are refused");
    let reached = upstream.count();
    assert!(
        reached <= 256,
        "{reached} requests reached the upstream at once"
    );
}

/// A client whose h2c preface arrives in two pieces is still served HTTP/2 (the gateway picks
/// the protocol from the first bytes it sees, and lets the detection read on when they are
/// only a part of the preface).
#[tokio::test]
async fn a_preface_arriving_in_pieces_is_still_served() {
    let (_upstream, gateway, key) = setup().await;
    for split in [1, 10, 23] {
        let mut h2 =
            RawH2::connect_in_pieces(gateway.proxy, split, Duration::from_millis(50)).await;
        let mut out = Vec::new();
        push_get(&mut out, &gateway, 1, "/api/v1/jobs/1", &key);
        h2.write(&out).await.expect("write");
        assert!(
            h2.read_response(1, Duration::from_secs(5)).await,
            "split at {split}"
        );
    }
}
