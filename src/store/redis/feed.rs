//! The invalidation feed: one task that keeps a pub/sub subscription to `{prefix}invalidate`
//! and forwards what other instances announce to the cache. It owns the `live` flag the cache
//! reads before caching anything; it never sends a command other than SUBSCRIBE, PING and,
//! before subscribing, `CLUSTER NODES`.
//!
//! On a standalone Redis it subscribes on the configured server. On a Cluster, classic
//! PUBLISH is broadcast to every node, so one subscription on any node hears every write; the
//! task reads the node list from `CLUSTER NODES` before each subscription and tries replicas
//! first (a master's death then costs the feed nothing unless it was the one subscribed), then
//! masters, then the configured seed. Whenever the subscription is lost it subscribes again on
//! whichever node answers, and the gap is announced as [`Invalidation::All`] before anything
//! else: events published while nobody listened are lost.

use super::link::{self, Mode};
use crate::store::Invalidation;
use futures_util::StreamExt;
use redis::aio::{PubSub, PubSubSink};
use redis::{ConnectionAddr, ConnectionInfo, RedisError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Buffered invalidations between the pub/sub task and the cache.
pub(super) const FEED_CAPACITY: usize = 1024;
const FEED_MIN_BACKOFF: Duration = Duration::from_millis(100);
const FEED_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often an idle subscription is pinged, to notice a server that vanished without closing
/// the socket (a killed server closes it, and the stream ends at once).
const FEED_PROBE_EVERY: Duration = Duration::from_secs(5);

/// What the feed task needs: where to subscribe, and the flag it keeps up to date.
pub(super) struct Feed {
    /// The server named by `store.redis` (credentials and all; other nodes reuse them).
    pub(super) seed: ConnectionInfo,
    pub(super) channel: String,
    pub(super) op_timeout: Duration,
    pub(super) live: Arc<AtomicBool>,
}

/// Why a subscription stopped forwarding.
#[derive(PartialEq, Eq)]
enum FeedEnd {
    /// The connection died; subscribe again.
    Dropped,
    /// Nobody listens any more; the task ends.
    ReceiverGone,
}

/// The feed task: subscribe, forward, and on any loss resubscribe with backoff, announcing the
/// gap with `Invalidation::All`. A gap includes a failed first attempt: events may have been
/// missed between `connect` and the first successful subscription.
pub(super) async fn run(feed: Feed, tx: mpsc::Sender<Invalidation>) {
    let mut backoff = FEED_MIN_BACKOFF;
    let mut gap = false;
    let mut known = vec![feed.seed.clone()];
    loop {
        known = nodes(&known, &feed).await;
        if let Some(pubsub) = subscribe_any(&known, &feed).await {
            backoff = FEED_MIN_BACKOFF;
            if gap && tx.send(Invalidation::All).await.is_err() {
                return;
            }
            feed.live.store(true, Ordering::SeqCst);
            let end = forward(pubsub, &tx, feed.op_timeout).await;
            feed.live.store(false, Ordering::SeqCst);
            if end == FeedEnd::ReceiverGone {
                return;
            }
        }
        gap = true;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(FEED_MAX_BACKOFF);
    }
}

/// Where to try subscribing, in order: on a Cluster, the nodes the first answering node of
/// `known` lists (replicas first), then the seed; on a standalone server, the seed alone.
/// When no node answers, `known` as it was, to try again later.
async fn nodes(known: &[ConnectionInfo], feed: &Feed) -> Vec<ConnectionInfo> {
    for node in known {
        match cluster_nodes(node, feed.op_timeout).await {
            Ok(Some(text)) => {
                let mut found: Vec<ConnectionInfo> = subscribable(&text)
                    .into_iter()
                    .map(|(host, port)| at(&feed.seed, host, port))
                    .collect();
                found.push(feed.seed.clone());
                return found;
            }
            Ok(None) => return vec![feed.seed.clone()],
            Err(_) => continue,
        }
    }
    known.to_vec()
}

/// `CLUSTER NODES` of `node`; `None` from a server that is not part of a cluster.
async fn cluster_nodes(
    node: &ConnectionInfo,
    op_timeout: Duration,
) -> Result<Option<String>, RedisError> {
    let attempt = async {
        let client = redis::Client::open(node.clone())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await?;
        if link::mode_of(&info) == Mode::Standalone {
            return Ok(None);
        }
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await?;
        Ok(Some(text))
    };
    // Two round trips after the connect, each allowed `op_timeout` by the connection itself.
    match tokio::time::timeout(op_timeout * 2, attempt).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        ))),
    }
}

/// The healthy nodes of a `CLUSTER NODES` answer (`id host:port@bus[,hostname] flags ...`),
/// replicas before masters. Nodes flagged failing, without an address or still in handshake
/// are left out.
fn subscribable(text: &str) -> Vec<(String, u16)> {
    let mut replicas = Vec::new();
    let mut masters = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_id), Some(address), Some(flags)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let unusable = flags
            .split(',')
            .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"));
        let Some(node) = host_port(address).filter(|_| !unusable) else {
            continue;
        };
        if flags.split(',').any(|f| f == "slave") {
            replicas.push(node);
        } else {
            masters.push(node);
        }
    }
    replicas.extend(masters);
    replicas
}

/// `host:port` out of `host:port@bus[,hostname]`; the host may be an IPv6 address.
fn host_port(address: &str) -> Option<(String, u16)> {
    let address = address.split(['@', ',']).next()?;
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// The seed's settings (credentials, database) at another address.
fn at(seed: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    seed.clone().set_addr(ConnectionAddr::Tcp(host, port))
}

/// The first node of `candidates` that accepts the subscription.
async fn subscribe_any(candidates: &[ConnectionInfo], feed: &Feed) -> Option<PubSub> {
    for node in candidates {
        if let Some(pubsub) = subscribe(node, &feed.channel, feed.op_timeout).await {
            return Some(pubsub);
        }
    }
    None
}

/// A fresh pub/sub connection subscribed to the channel, or `None` if the node is not there.
/// `get_async_pubsub` has no connect timeout of its own, hence the explicit one.
async fn subscribe(node: &ConnectionInfo, channel: &str, op_timeout: Duration) -> Option<PubSub> {
    let attempt = async {
        let client = redis::Client::open(node.clone())?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, RedisError>(pubsub)
    };
    tokio::time::timeout(op_timeout, attempt).await.ok()?.ok()
}

async fn forward(pubsub: PubSub, tx: &mpsc::Sender<Invalidation>, op_timeout: Duration) -> FeedEnd {
    let (mut sink, mut stream) = pubsub.split();
    let mut probe = tokio::time::interval_at(
        tokio::time::Instant::now() + FEED_PROBE_EVERY,
        FEED_PROBE_EVERY,
    );
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return FeedEnd::Dropped };
                let event = msg.get_payload::<String>().ok().and_then(|p| parse_invalidation(&p));
                if let Some(event) = event {
                    if tx.send(event).await.is_err() {
                        return FeedEnd::ReceiverGone;
                    }
                }
            }
            _ = probe.tick() => {
                if !alive(&mut sink, op_timeout).await {
                    return FeedEnd::Dropped;
                }
            }
            _ = tx.closed() => return FeedEnd::ReceiverGone,
        }
    }
}

async fn alive(sink: &mut PubSubSink, op_timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(op_timeout, sink.ping::<redis::Value>()).await,
        Ok(Ok(_))
    )
}

fn parse_invalidation(payload: &str) -> Option<Invalidation> {
    if let Some(id) = payload.strip_prefix("key:") {
        Some(Invalidation::Key(id.to_owned()))
    } else {
        payload
            .strip_prefix("app:")
            .map(|id| Invalidation::App(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_invalidation_messages() {
        assert_eq!(
            parse_invalidation("key:k1"),
            Some(Invalidation::Key("k1".into()))
        );
        assert_eq!(
            parse_invalidation("app:a:b"),
            Some(Invalidation::App("a:b".into()))
        );
        assert_eq!(parse_invalidation("other"), None);
    }

    #[test]
    fn cluster_nodes_lists_healthy_replicas_first() {
        let text = "\
a1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:30002@40002,host-b master - 0 0 2 connected 5461-10922
c3 127.0.0.1:30003@40003 master,fail - 0 0 3 connected
d4 127.0.0.1:30004@40004 slave a1 0 0 1 connected
e5 ::1:30005@40005 slave b2 0 0 2 connected
f6 :0@0 slave,noaddr c3 0 0 3 disconnected
";
        assert_eq!(
            subscribable(text),
            [
                ("127.0.0.1".to_owned(), 30004),
                ("::1".to_owned(), 30005),
                ("127.0.0.1".to_owned(), 30001),
                ("127.0.0.1".to_owned(), 30002),
            ]
        );
    }
}
