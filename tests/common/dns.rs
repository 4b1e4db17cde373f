//! A tiny DNS server for tests: UDP on 127.0.0.1 (ephemeral port), answering A queries for the
//! names a test sets, with the TTL it sets, changeable at runtime; and able to go silent (read
//! queries, answer none), as a resolver that stopped answering.
//!
//! Messages are encoded by hand (RFC 1035 §4): the question is echoed, answers point back at it
//! (`0xC00C`). A known name asked for another type gets an empty answer (NODATA) and an unknown
//! name NXDOMAIN, both with an SOA whose minimum is the name's TTL (1 s for unknown names), so
//! a resolver caches neither for long.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
/// The TTL of the SOA that comes with a negative answer for a name nobody set.
const UNKNOWN_TTL: u32 = 1;

/// The running server; clones share it.
#[derive(Clone, Debug)]
pub(crate) struct DnsServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Lowercase name without the final dot -> (addresses, TTL in seconds).
    names: Mutex<HashMap<String, (Vec<Ipv4Addr>, u32)>>,
    silent: AtomicBool,
    queries: AtomicUsize,
}

impl DnsServer {
    pub(crate) async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS");
        let addr = socket.local_addr().expect("DNS address");
        let shared = Arc::new(Shared::default());
        let server = shared.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                server.queries.fetch_add(1, Ordering::SeqCst);
                if server.silent.load(Ordering::SeqCst) {
                    continue;
                }
                let names = server.names.lock().expect("lock").clone();
                if let Some(reply) = reply(&buf[..n], |name| names.get(name).cloned()) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        DnsServer { addr, shared }
    }

    /// `name` resolves to `addrs` (A records) with `ttl` seconds from now on.
    pub(crate) fn set(&self, name: &str, addrs: &[Ipv4Addr], ttl: u32) {
        self.shared
            .names
            .lock()
            .expect("lock")
            .insert(normal(name), (addrs.to_vec(), ttl));
    }

    /// Silent: queries are read (and counted) but never answered.
    pub(crate) fn set_silent(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::SeqCst);
    }

    /// Queries received so far, answered or not.
    pub(crate) fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }

    /// The `resolver:` line of a config that uses this server.
    pub(crate) fn resolver_yaml(&self) -> String {
        format!("resolver: [\"{}\"]\n", self.addr)
    }
}

fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The reply to one query, or `None` when it is not a query this server can read.
pub(crate) fn reply(
    query: &[u8],
    lookup: impl Fn(&str) -> Option<(Vec<Ipv4Addr>, u32)>,
) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let questions = u16::from_be_bytes([header[4], header[5]]);
    if flags & 0x8000 != 0 || questions != 1 {
        return None;
    }
    let (name, question_end) = read_name(query, 12)?;
    let fixed = query.get(question_end..question_end + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let question = &query[12..question_end + 4];

    let found = lookup(&name);
    let (answers, ttl, rcode) = match &found {
        Some((addrs, ttl)) if qtype == TYPE_A => (addrs.as_slice(), *ttl, 0),
        Some((_, ttl)) => (&[][..], *ttl, 0),
        None => (&[][..], UNKNOWN_TTL, RCODE_NXDOMAIN),
    };
    // QR, the query's opcode and RD, AA and RA, the rcode.
    let flags = 0x8000 | (flags & 0x7800) | 0x0400 | (flags & 0x0100) | 0x0080 | rcode;
    let negative = answers.is_empty();
    let mut out = Vec::with_capacity(64 + 16 * answers.len());
    out.extend_from_slice(&header[..2]);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::try_from(answers.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&u16::from(negative).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(question);
    for addr in answers {
        push_record_head(&mut out, TYPE_A, ttl, 4);
        out.extend_from_slice(&addr.octets());
    }
    if negative {
        // SOA: root MNAME and RNAME, then serial, refresh, retry, expire and minimum.
        push_record_head(&mut out, TYPE_SOA, ttl, 2 + 20);
        out.extend_from_slice(&[0, 0]);
        for value in [1, ttl, ttl, ttl, ttl] {
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
    Some(out)
}

/// Owner (a pointer to the question's name), type, class, TTL and data length.
fn push_record_head(out: &mut Vec<u8>, kind: u16, ttl: u32, len: u16) {
    out.extend_from_slice(&[0xC0, 0x0C]);
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// The uncompressed name at `at` (lowercase, dotted) and where it ends.
fn read_name(message: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*message.get(at)?);
        at += 1;
        if len == 0 {
            return Some((labels.join("."), at));
        }
        if len & 0xC0 != 0 {
            return None;
        }
        let label = message.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
}

/// A query for `name` of `qtype` with `id`, as a stub resolver sends it (RD set).
pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        out.push(u8::try_from(label.len()).expect("short label"));
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}
