//! The invalidation feed: one task that keeps a pub/sub subscription to `{prefix}invalidate`
//! and forwards what other instances announce to the cache. It owns the `live` flag the cache
//! reads before caching anything; it never sends a command other than SUBSCRIBE, PING and,
//! before subscribing, `CLUSTER NODES` and `CLUSTER KEYSLOT`.
//!
//! On a standalone Redis it subscribes on the configured server. On a Cluster, classic
//! PUBLISH is broadcast to every node, so one subscription on any node hears every write; the
//! task reads the node list from `CLUSTER NODES` before each subscription and tries replicas
//! first, keeping off the master that holds the gateway's slot (see [`subscribable`]), then
//! the configured seed. Whenever the subscription is lost it subscribes again on
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
    /// One of the gateway's keys in the Cluster layout (`None` for a prefix a Cluster cannot
    /// use), to find the master holding the data.
    pub(super) slot_key: Option<String>,
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
/// `known` lists (see [`subscribable`]), then the seed; on a standalone server, the seed alone.
/// When no node answers, `known` as it was, to try again later.
async fn nodes(known: &[ConnectionInfo], feed: &Feed) -> Vec<ConnectionInfo> {
    for node in known {
        match cluster_view(node, feed).await {
            Ok(Some(view)) => {
                let mut found: Vec<ConnectionInfo> = subscribable(&view.nodes, view.slot)
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

/// What one node of a Cluster says: every node, and the slot holding the gateway's keys.
struct ClusterView {
    /// `CLUSTER NODES`.
    nodes: String,
    /// `CLUSTER KEYSLOT` of one of the gateway's keys (all share it).
    slot: Option<u16>,
}

/// The view of `node`; `None` from a server that is not part of a cluster.
async fn cluster_view(
    node: &ConnectionInfo,
    feed: &Feed,
) -> Result<Option<ClusterView>, RedisError> {
    let op_timeout = feed.op_timeout;
    let attempt = async {
        let client = redis::Client::open(node.clone())?;
        let mut conn = link::short_lived(&client, op_timeout).await?;
        if link::mode_on(&mut conn).await? == Mode::Standalone {
            return Ok(None);
        }
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await?;
        let slot = match &feed.slot_key {
            Some(key) => Some(
                redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(key)
                    .query_async::<u16>(&mut conn)
                    .await?,
            ),
            None => None,
        };
        Ok(Some(ClusterView { nodes, slot }))
    };
    // Three round trips after the connect, each allowed `op_timeout` by the connection itself.
    match tokio::time::timeout(op_timeout * 3, attempt).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        ))),
    }
}

/// One line of `CLUSTER NODES`: `id host:port@bus[,hostname] flags master-id ping pong epoch
/// link-state slot...`.
struct NodeLine<'a> {
    id: &'a str,
    address: (String, u16),
    replica_of: Option<&'a str>,
    slots: Vec<&'a str>,
}

impl<'a> NodeLine<'a> {
    /// `None` for a node flagged failing, without an address, or still in handshake.
    fn parse(line: &'a str) -> Option<NodeLine<'a>> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (id, address, flags, master) = (
            fields.first()?,
            fields.get(1)?,
            fields.get(2)?,
            fields.get(3)?,
        );
        let unusable = flags
            .split(',')
            .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"));
        if unusable {
            return None;
        }
        let replica = flags.split(',').any(|f| f == "slave");
        Some(NodeLine {
            id,
            address: host_port(address)?,
            replica_of: replica.then_some(*master),
            slots: fields.iter().skip(8).copied().collect(),
        })
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
        })
    }
}

/// The healthy nodes of a `CLUSTER NODES` answer, in the order to try them: replicas of other
/// masters than the one serving the gateway's `slot`, then that master's replicas, other
/// masters, and that master last. The feed then rarely sits on the node most likely to be
/// lost with the data (its master), whose death would otherwise cost every instance its cache
/// (a resubscription drops it) while the data is unreachable too.
fn subscribable(text: &str, slot: Option<u16>) -> Vec<(String, u16)> {
    let nodes: Vec<NodeLine<'_>> = text.lines().filter_map(NodeLine::parse).collect();
    let owner = slot.and_then(|slot| {
        nodes
            .iter()
            .find(|n| n.replica_of.is_none() && n.serves(slot))
    });
    let owner_id = owner.map(|n| n.id);
    let rank = |n: &NodeLine<'_>| match n.replica_of {
        Some(master) if Some(master) != owner_id => 0,
        Some(_) => 1,
        None if Some(n.id) != owner_id => 2,
        None => 3,
    };
    let mut ranked: Vec<(u8, (String, u16))> =
        nodes.into_iter().map(|n| (rank(&n), n.address)).collect();
    ranked.sort_by_key(|(rank, _)| *rank);
    ranked.into_iter().map(|(_, address)| address).collect()
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
    } else if let Some(name) = payload.strip_prefix("cred:") {
        Some(Invalidation::Credential(name.to_owned()))
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
        assert_eq!(
            parse_invalidation("cred:MY_API"),
            Some(Invalidation::Credential("MY_API".into()))
        );
        assert_eq!(parse_invalidation("other"), None);
    }

    #[test]
    fn the_feed_prefers_replicas_and_keeps_off_the_master_holding_the_data() {
        let text = "\
a1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:30002@40002,host-b master - 0 0 2 connected 5461-10922
c3 127.0.0.1:30003@40003 master,fail - 0 0 3 connected
d4 127.0.0.1:30004@40004 slave a1 0 0 1 connected
e5 ::1:30005@40005 slave b2 0 0 2 connected
f6 :0@0 slave,noaddr c3 0 0 3 disconnected
";
        let port = |list: Vec<(String, u16)>| list.into_iter().map(|(_, p)| p).collect::<Vec<_>>();
        // Slot 100 is a1's: b2's replica, then a1's, then b2, then a1.
        assert_eq!(
            port(subscribable(text, Some(100))),
            [30005, 30004, 30002, 30001]
        );
        assert_eq!(
            subscribable(text, Some(6000))[0],
            ("127.0.0.1".to_owned(), 30004)
        );
        assert_eq!(port(subscribable(text, None)), [30004, 30005, 30001, 30002]);
    }
}
