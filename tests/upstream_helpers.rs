//! The helpers the upstream tests stand on, checked on their own: a replica really answers,
//! fails, resets (RST, not FIN), stalls, stops (refusing connections) and comes back on the
//! same address, and counts what it saw; the DNS server answers what it is told, with the TTL
//! it is told, and goes silent when told.

mod common;

use bytes::Bytes;
use common::dns::{query, DnsServer};
use common::http::send;
use common::pool::eventually;
use common::replica::{Mode, Replica, REPLICA_HEADER};
use http::Method;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long a "nothing comes" check listens before it concludes nothing came.
const QUIET: Duration = Duration::from_millis(500);

async fn request(
    replica: &Replica,
    method: Method,
    path: &str,
    body: &'static [u8],
) -> (u16, String) {
    let answer = send(
        method,
        &format!("{}{path}", replica.url()),
        &[],
        Bytes::from_static(body),
    )
    .await;
    let name = answer
        .headers
        .get(REPLICA_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (answer.status.as_u16(), name)
}

/// Writes one GET on a fresh connection; what reading then gives.
async fn raw_read(addr: SocketAddr) -> Result<std::io::Result<usize>, tokio::time::error::Elapsed> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /raw HTTP/1.1\r\nhost: replica\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    tokio::time::timeout(QUIET, stream.read(&mut buf)).await
}

#[tokio::test]
async fn a_replica_answers_with_its_name_and_counts_what_it_received() {
    let replica = Replica::start("a").await;
    assert_eq!(
        request(&replica, Method::GET, "/pool/x", b"").await,
        (200, "a".into())
    );
    assert_eq!(
        request(&replica, Method::POST, "/pool/x", &[b'z'; 1000]).await,
        (200, "a".into())
    );
    assert_eq!(replica.received_of("GET", "/pool/x"), 1);
    assert_eq!(replica.received_of("POST", "/pool/x"), 1);
    assert_eq!(replica.received(), 2);
    assert_eq!(replica.body_lens(), vec![0, 1000]);

    replica.set_mode(Mode::Status(503));
    assert_eq!(request(&replica, Method::GET, "/pool/y", b"").await.0, 503);
    assert_eq!(replica.received(), 3);
}

#[tokio::test]
async fn a_replica_in_reset_mode_resets_the_connection_after_the_head() {
    let replica = Replica::start("a").await;
    replica.set_mode(Mode::Reset);
    let read = raw_read(replica.addr())
        .await
        .expect("an answer or a reset, not silence");
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} bytes (0: a FIN)"),
    }
    assert_eq!(replica.received_of("GET", "/raw"), 1);
}

#[tokio::test]
async fn a_stalled_replica_reads_the_request_and_never_answers() {
    let replica = Replica::start("a").await;
    replica.set_mode(Mode::Stall);
    assert!(
        raw_read(replica.addr()).await.is_err(),
        "a stalled replica answered"
    );
    assert_eq!(replica.received(), 1);
    assert_eq!(replica.body_lens(), vec![0]);
    // The client gave up (and closed): the stalled connection ends with it.
    eventually("the stalled connection is closed", || async {
        replica.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn a_stopped_replica_drops_its_connections_refuses_new_ones_and_comes_back_on_its_address() {
    let replica = Replica::start("a").await;
    let addr = replica.addr();
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    eventually("the connection is counted", || async {
        replica.open_connections() == 1
    })
    .await;

    replica.stop().await;
    assert_eq!(replica.open_connections(), 0);
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("the dropped connection ends");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let refused = TcpStream::connect(addr).await;
    assert_eq!(
        refused.expect_err("a stopped replica refuses").kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    replica.restart().await;
    assert_eq!(replica.addr(), addr);
    assert_eq!(
        request(&replica, Method::GET, "/back", b"").await,
        (200, "a".into())
    );
    assert_eq!(replica.connections_accepted(), 2);
}

#[tokio::test]
async fn a_replica_counts_open_connections_and_their_peak() {
    let replica = Replica::start("a").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(replica.addr()).await.expect("connect"));
    }
    eventually("three open", || async { replica.open_connections() == 3 }).await;
    drop(held);
    eventually("all closed", || async { replica.open_connections() == 0 }).await;
    assert_eq!(replica.peak_connections(), 3);
    assert_eq!(replica.connections_accepted(), 3);
}

#[tokio::test]
async fn health_is_switched_apart_from_the_mode_and_counted_apart_from_requests() {
    let replica = Replica::start("a").await;
    replica.set_mode(Mode::Status(502));
    assert_eq!(request(&replica, Method::GET, "/healthz", b"").await.0, 200);
    replica.set_health(503);
    assert_eq!(request(&replica, Method::GET, "/healthz", b"").await.0, 503);
    assert_eq!(
        (replica.health_checks(200), replica.health_checks(503)),
        (1, 1)
    );
    assert_eq!(replica.received(), 0);
}

#[tokio::test]
async fn a_held_request_is_answered_once_released() {
    let replica = Replica::start("a").await;
    let url = format!("{}/pool/hold", replica.url());
    let held = tokio::spawn(async move { send(Method::GET, &url, &[], Bytes::new()).await });
    eventually("the held request arrived", || async {
        replica.received_of("GET", "/pool/hold") == 1
    })
    .await;
    assert!(!held.is_finished());
    replica.release_held();
    assert_eq!(held.await.expect("task").status, 200);
}

#[tokio::test]
async fn two_replicas_share_a_port_on_two_loopback_addresses() {
    let a = Replica::start("a").await;
    let other: SocketAddr = format!("127.0.0.2:{}", a.addr().port())
        .parse()
        .expect("addr");
    let b = Replica::start_on("b", other).await;
    assert_eq!(request(&a, Method::GET, "/x", b"").await, (200, "a".into()));
    assert_eq!(request(&b, Method::GET, "/x", b"").await, (200, "b".into()));
}

/// A DNS answer as read back: (rcode, A records as (address, TTL), SOA records in authority).
fn parse_answer(message: &[u8], id: u16) -> (u16, Vec<(Ipv4Addr, u32)>, usize) {
    assert_eq!(
        u16::from_be_bytes([message[0], message[1]]),
        id,
        "the id is echoed"
    );
    let flags = u16::from_be_bytes([message[2], message[3]]);
    assert!(flags & 0x8000 != 0, "a response");
    let count = |at: usize| usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
    let (answers, authority) = (count(6), count(8));
    let mut at = 12;
    while message[at] != 0 {
        at += 1 + usize::from(message[at]);
    }
    at += 1 + 4;
    let mut records = Vec::new();
    let mut soa = 0;
    for i in 0..answers + authority {
        assert_eq!(
            &message[at..at + 2],
            &[0xC0, 0x0C],
            "owner points at the question"
        );
        let kind = u16::from_be_bytes([message[at + 2], message[at + 3]]);
        let ttl = u32::from_be_bytes([
            message[at + 6],
            message[at + 7],
            message[at + 8],
            message[at + 9],
        ]);
        let len = usize::from(u16::from_be_bytes([message[at + 10], message[at + 11]]));
        let data = &message[at + 12..at + 12 + len];
        match (kind, i < answers) {
            (1, true) => records.push((Ipv4Addr::new(data[0], data[1], data[2], data[3]), ttl)),
            (6, false) => soa += 1,
            other => panic!("unexpected record {other:?}"),
        }
        at += 12 + len;
    }
    assert_eq!(at, message.len(), "nothing after the records");
    (flags & 0xF, records, soa)
}

async fn ask(server: &DnsServer, id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket
        .send_to(&query(id, name, qtype), server.addr)
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(QUIET, socket.recv(&mut buf))
        .await
        .ok()?
        .expect("recv");
    buf.truncate(n);
    Some(buf)
}

#[tokio::test]
async fn the_dns_server_answers_what_it_is_told_and_goes_silent_when_told() {
    let dns = DnsServer::start().await;
    let one = Ipv4Addr::new(127, 0, 0, 1);
    let two = Ipv4Addr::new(127, 0, 0, 2);
    dns.set("svc.test", &[one, two], 7);
    let answer = ask(&dns, 1, "SVC.test.", 1).await.expect("an answer");
    assert_eq!(parse_answer(&answer, 1), (0, vec![(one, 7), (two, 7)], 0));

    dns.set("svc.test", &[two], 1);
    let answer = ask(&dns, 2, "svc.test", 1).await.expect("an answer");
    assert_eq!(parse_answer(&answer, 2), (0, vec![(two, 1)], 0));

    // AAAA of a known name: no records, no error; an unknown name: NXDOMAIN.
    let answer = ask(&dns, 3, "svc.test", 28).await.expect("an answer");
    assert_eq!(parse_answer(&answer, 3), (0, vec![], 1));
    let answer = ask(&dns, 4, "other.test", 1).await.expect("an answer");
    assert_eq!(parse_answer(&answer, 4), (3, vec![], 1));

    dns.set_silent(true);
    assert!(
        ask(&dns, 5, "svc.test", 1).await.is_none(),
        "a silent server answered"
    );
    assert_eq!(dns.queries(), 5);
}
