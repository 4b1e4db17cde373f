//! The command connection to Redis, standalone or Cluster, chosen when it is first made: the
//! server named by `store.redis` is asked `INFO cluster`, and `cluster_enabled:1` means a
//! Cluster (that server is then only the seed from which the client learns the others). The
//! contract has no setting for this, and none is needed: the server knows what it is.
//!
//! Both kinds answer the same commands through [`Link`]; the key layout differs (see
//! [`super::names`]), so the mode is decided once, before any key name is built.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::time::Duration;

/// Retries of one command inside the cluster client (after a MOVED, or a node that went away
/// while the cluster fails over), each bounded by the caller's `store.timeout` anyway.
///
/// A retry after a dropped link may repeat a write the server already ran (the standalone
/// client would report the failure instead). The scripts take that in their stride: a usage
/// chunk's marker skips the repeat, a touch keeps the later time, a compare-and-set finds the
/// record changed and the caller re-reads it, a delete finds nothing left. A create answers
/// "taken": the admin API then says 409 for a record that this very call made, which an
/// operator sees on the next listing. Rare (a node dying between running a script and
/// answering) and no worse than the standalone "did it apply?" 503.
const CLUSTER_RETRIES: u32 = 3;
/// Wait before a cluster retry, in milliseconds: long enough for a slot refresh to land,
/// short enough to fit several into one `store.timeout`.
const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 20;
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 200;

/// What the server named by `store.redis` turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Standalone,
    Cluster,
}

/// A command connection of either kind. Both multiplex every caller over shared connections
/// and reconnect by themselves; cloning is cheap.
#[derive(Clone)]
pub(super) enum Link {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Link {
    pub(super) fn mode(&self) -> Mode {
        match self {
            Link::Standalone(_) => Mode::Standalone,
            Link::Cluster(_) => Mode::Cluster,
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Standalone(conn) => conn.req_packed_command(cmd),
            Link::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Standalone(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Standalone(conn) => conn.get_db(),
            Link::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Asks the server which kind it is, then makes the matching connection. The caller bounds
/// the whole by `store.timeout`.
pub(super) async fn connect(
    client: &redis::Client,
    standalone: ConnectionManagerConfig,
    op_timeout: Duration,
) -> RedisResult<Link> {
    match detect(client, op_timeout).await? {
        Mode::Standalone => Ok(Link::Standalone(
            ConnectionManager::new_with_config(client.clone(), standalone).await?,
        )),
        Mode::Cluster => {
            let cluster = ClusterClient::builder([client.get_connection_info().clone()])
                .connection_timeout(op_timeout)
                .response_timeout(op_timeout)
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
                .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
                .build()?;
            Ok(Link::Cluster(cluster.get_async_connection().await?))
        }
    }
}

/// `INFO cluster` on a short-lived connection of its own.
async fn detect(client: &redis::Client, op_timeout: Duration) -> RedisResult<Mode> {
    let mut conn = short_lived(client, op_timeout).await?;
    mode_on(&mut conn).await
}

/// A connection for a few commands, each (and the connect) bounded by `op_timeout`.
pub(super) async fn short_lived(
    client: &redis::Client,
    op_timeout: Duration,
) -> RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(op_timeout))
        .set_response_timeout(Some(op_timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// What the server on `conn` is, by `INFO cluster`.
pub(super) async fn mode_on(conn: &mut redis::aio::MultiplexedConnection) -> RedisResult<Mode> {
    let info: String = redis::cmd("INFO").arg("cluster").query_async(conn).await?;
    Ok(mode_of(&info))
}

/// The mode an `INFO cluster` answer describes. A server too old to have the section, or one
/// that leaves the field out, is standalone.
pub(super) fn mode_of(info: &str) -> Mode {
    let enabled = info
        .lines()
        .filter_map(|line| line.trim().strip_prefix("cluster_enabled:"))
        .any(|value| value == "1");
    if enabled {
        Mode::Cluster
    } else {
        Mode::Standalone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_cluster_tells_the_mode() {
        assert_eq!(mode_of("# Cluster\r\ncluster_enabled:1\r\n"), Mode::Cluster);
        assert_eq!(
            mode_of("# Cluster\r\ncluster_enabled:0\r\n"),
            Mode::Standalone
        );
        assert_eq!(mode_of(""), Mode::Standalone);
    }
}
