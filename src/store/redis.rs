//! The Redis store: apps and keys shared by many gateway instances, plus the `sg:invalidate`
//! pub/sub feed that tells the other instances what changed.
//!
//! Layout (all under `sg:`): `app:{id}` app JSON, `appname:{lowercase}` name claim -> app id,
//! `key:{id}` key JSON, hash `last_used` key id -> unix seconds; usage counts under `usage:`,
//! laid out in [`usage`]. Listings read sorted sets whose members are
//! `{created_at:011}.{id}` (all scores 0, so they sort by that text): `appidx` of apps, `keyidx`
//! of keys, `appkeyidx:{app}` of one app's keys; a page is one `ZRANGEBYLEX ... LIMIT` plus one
//! `MGET` of at most [`LIST_CHUNK`](super::LIST_CHUNK) records. `deleted_apps` is the set of
//! deleted apps whose keys are still to be removed, [`PURGE_CHUNK`](super::PURGE_CHUNK) keys
//! per script.
//!
//! # Rooms
//! This file holds the connection and the roles built on single commands (usage, budget
//! leases, the feed, ping); [`records`] the apps, keys and audit log ([`super::Records`],
//! [`super::Upkeep`]) with their scripts in [`scripts`]; [`usage`] and [`limits`] the layouts
//! and scripts of usage counts and of shared budgets; [`audit`] the audit stream;
//! [`credentials`] the upstream credentials with their scripts.
//!
//! Conditional multi-key writes run as Lua scripts (sent with `EVAL`), not WATCH/MULTI: the
//! `ConnectionManager` multiplexes every caller over one connection, and WATCH state is per
//! connection, so concurrent callers would clobber each other's WATCHes. A script is atomic and
//! needs no per-connection state. Writes that must invalidate caches PUBLISH from inside the same
//! script, and admin writes XADD their audit event there too, so a change, its event and its
//! announcement cannot be separated by a dropped connection or a caller that went away.
//!
//! Redis Cluster works too (found out when connecting, see [`link`]): every key then carries the
//! deployment's one hash tag ([`names`]), and every script declares each key it touches in KEYS,
//! so each script, `MGET` and pipeline stays within one slot. The invalidation feed is in [`feed`].

use super::{
    Audit, BudgetLeases, ChangeFeed, Invalidation, Ping, QuotaAsk, QuotaLease, RateLease,
    StoreError, TokenBatch, TokenLedger, TokenTotals, UsageSink, AUDIT_MAX_EVENTS,
};
mod audit;
mod credentials;
mod feed;
mod legacy;
mod limits;
mod link;
mod names;
mod records;
mod scripts;
mod tokens;
mod usage;

use self::link::Link;
use self::names::Names;
pub use self::names::DEFAULT_PREFIX;
use self::scripts::{TOUCH_CHUNK, TOUCH_KEYS};

use crate::model::{
    now_unix, KeyRecord, QuotaWindows, RateLimit, UnixSeconds, UsageBatch, UsageSubject,
};
use async_trait::async_trait;
use redis::aio::ConnectionManagerConfig;
use redis::{FromRedisValue, RedisError, RedisResult};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Reconnect schedule of the command connection: a round is a try, then one after 50-100 ms and
/// one after 100-200 ms more (the client's jitter adds up to the delay again). After the retries
/// run out the manager starts a new round on the next command, so while the store is used it
/// tries at least every 200 ms, and a command (bounded by `store.timeout`, 250 ms by default)
/// never waits on a longer sleep than that; a longer schedule let a probe time out just after
/// Redis came back. A link nobody uses is remade by the next command (see [`RedisStore::read`]).
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(200);
const RECONNECT_RETRIES: usize = 2;

/// Compare-and-set attempts for writes that read the current record first.
const CAS_ATTEMPTS: usize = 5;

/// The command connection and the key layout that goes with it.
struct Linked {
    link: Link,
    names: Names,
}

/// Apps and keys in a Redis server (standalone or Cluster) shared by all gateway instances.
pub struct RedisStore {
    client: redis::Client,
    /// Made on first use, not at start-up, so a gateway starts (not ready) while Redis is down;
    /// a failed attempt leaves it empty and the next command tries again.
    /// Holds the key layout too, since that depends on what the server turned out to be.
    conn: tokio::sync::OnceCell<Linked>,
    conn_config: ConnectionManagerConfig,
    op_timeout: Duration,
    /// True while the invalidation feed is subscribed (see [`KeyStore::invalidations`]).
    feed_live: Arc<AtomicBool>,
    /// `store.prefix`.
    prefix: String,
    /// The standalone layout, used for names only until the link is made (see [`Self::names`]).
    untagged: Names,
    /// The runtime `connect` ran on, so `invalidations` (not async) can spawn the feed task.
    runtime: tokio::runtime::Handle,
}

opaque_debug!(RedisStore);

impl RedisStore {
    /// Connects to `url`; fails with `Unavailable` if Redis cannot be reached within `op_timeout`.
    /// Every later operation is bounded by `op_timeout` too, and the connection heals by itself.
    /// The error never carries `url`'s credentials.
    pub async fn connect(url: &str, op_timeout: Duration) -> Result<RedisStore, StoreError> {
        Self::connect_unredacted(url, op_timeout)
            .await
            .map_err(|e| match e {
                // Printed at start-up; what the client library says is out of our hands.
                StoreError::Unavailable(text) => {
                    StoreError::Unavailable(crate::redact::scrub(&text, url))
                }
                other => other,
            })
    }

    async fn connect_unredacted(url: &str, op_timeout: Duration) -> Result<RedisStore, StoreError> {
        let store = Self::open(url, op_timeout)?;
        store.conn(tokio::time::Instant::now() + op_timeout).await?;
        Ok(store)
    }

    /// Like [`connect`](Self::connect), without waiting for Redis: the first command connects.
    /// Fails only on a URL the client cannot use.
    pub fn open(url: &str, op_timeout: Duration) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| {
            StoreError::Unavailable(crate::redact::scrub(&format!("bad redis url: {e}"), url))
        })?;
        let conn_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY)
            .set_number_of_retries(RECONNECT_RETRIES);
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| StoreError::Unavailable(format!("no tokio runtime: {e}")))?;
        Ok(RedisStore {
            client,
            conn: tokio::sync::OnceCell::new(),
            conn_config,
            op_timeout,
            feed_live: Arc::new(AtomicBool::new(false)),
            prefix: DEFAULT_PREFIX.to_owned(),
            untagged: Names::new(DEFAULT_PREFIX),
            runtime,
        })
    }

    /// Puts every key and channel under `prefix` (`store.prefix`) instead of `sg:`.
    pub fn with_prefix(mut self, prefix: &str) -> RedisStore {
        self.prefix = prefix.to_owned();
        self.untagged = Names::new(prefix);
        self
    }

    /// The key layout of the server connected to. Standalone and Cluster name keys
    /// differently, and which one it is is known once the link is made, so every
    /// [`KeyStore`] method that builds names calls [`linked`](Self::linked) first; before
    /// that these are the standalone names.
    fn names(&self) -> &Names {
        // Catches, in tests, a new store method that forgot `linked()`: its first call after
        // start-up would name untagged keys on a Cluster.
        debug_assert!(self.conn.initialized(), "names() before linked()");
        self.conn
            .get()
            .map_or(&self.untagged, |linked| &linked.names)
    }

    /// Makes the link (and so fixes the layout) if it is not made yet.
    async fn linked(&self) -> Result<(), StoreError> {
        self.conn(tokio::time::Instant::now() + self.op_timeout)
            .await
            .map(drop)
    }

    /// The day and month count names of a key's quota windows.
    fn quota_names(&self, key_id: &str, windows: &QuotaWindows) -> (String, String) {
        (
            self.names().quota_day(key_id, &windows.day),
            self.names().quota_month(key_id, &windows.month),
        )
    }

    /// The command connection, made now if it is not yet (callers waiting on one attempt).
    async fn conn(&self, deadline: tokio::time::Instant) -> Result<Link, StoreError> {
        let make = || async {
            let link = bounded_until(
                deadline,
                self.op_timeout,
                link::connect(&self.client, self.conn_config.clone(), self.op_timeout),
            )
            .await?;
            let names = Names::for_mode(&self.prefix, link.mode())?;
            // Marks the node holding the data (see `holds_data`); an existing mark is kept.
            let mut mark = redis::cmd("SET");
            mark.arg(names.marker()).arg(now_unix()).arg("NX");
            let mut conn = link.clone();
            bounded_until(
                deadline,
                self.op_timeout,
                mark.query_async::<Option<String>>(&mut conn),
            )
            .await?;
            Ok::<_, StoreError>(Linked { link, names })
        };
        let linked = self.conn.get_or_try_init(make).await?;
        Ok(linked.link.clone())
    }

    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let deadline = tokio::time::Instant::now() + self.op_timeout;
        let mut conn = self.conn(deadline).await?;
        bounded_until(deadline, self.op_timeout, cmd.query_async(&mut conn)).await
    }

    async fn query_pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let deadline = tokio::time::Instant::now() + self.op_timeout;
        let mut conn = self.conn(deadline).await?;
        bounded_until(deadline, self.op_timeout, pipe.query_async(&mut conn)).await
    }

    /// A read, retried once on a broken link: after an outage the manager only starts
    /// reconnecting when a command fails, and a read is safe to send twice.
    async fn read<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let deadline = tokio::time::Instant::now() + self.op_timeout;
        let base = self.conn(deadline).await?;
        let mut conn = base.clone();
        match tokio::time::timeout_at(deadline, cmd.query_async(&mut conn)).await {
            Ok(Err(e)) if is_link_error(&e) => {
                let mut conn = base.clone();
                bounded_until(deadline, self.op_timeout, cmd.query_async(&mut conn)).await
            }
            Ok(result) => result.map_err(map_redis_error),
            Err(_) => Err(timed_out(self.op_timeout)),
        }
    }

    /// Like [`read`](Self::read), for a pipeline of reads.
    async fn read_pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let deadline = tokio::time::Instant::now() + self.op_timeout;
        let base = self.conn(deadline).await?;
        let mut conn = base.clone();
        match tokio::time::timeout_at(deadline, pipe.query_async(&mut conn)).await {
            Ok(Err(e)) if is_link_error(&e) => {
                let mut conn = base.clone();
                bounded_until(deadline, self.op_timeout, pipe.query_async(&mut conn)).await
            }
            Ok(result) => result.map_err(map_redis_error),
            Err(_) => Err(timed_out(self.op_timeout)),
        }
    }
}

#[async_trait]
impl UsageSink for RedisStore {
    async fn touch_keys(&self, uses: &[(String, UnixSeconds)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        self.linked().await?;
        let mut pipe = redis::pipe();
        for chunk in uses.chunks(TOUCH_CHUNK) {
            pipe.add_command(touch_command(self.names(), chunk))
                .ignore();
        }
        self.query_pipe::<()>(&pipe).await
    }

    /// One pipeline of idempotent scripts (see [`usage`]): one round trip. A write that
    /// times out may still have been applied; the caller sends the same batches again and the
    /// chunks already applied are skipped.
    async fn add_usage(&self, batches: &[UsageBatch]) -> Result<(), StoreError> {
        self.linked().await?;
        match usage::add_pipeline(self.names().base(), batches, now_unix())? {
            Some(pipe) => self.query_pipe::<()>(&pipe).await,
            None => Ok(()),
        }
    }

    /// One pipelined round trip: an `HMGET` per month hash the dates fall in.
    async fn usage(
        &self,
        subject: UsageSubject<'_>,
        dates: &[String],
    ) -> Result<Vec<u64>, StoreError> {
        self.linked().await?;
        let read = usage::UsageRead::new(self.names().base(), subject, dates);
        match read.pipeline(dates) {
            Some(pipe) => read.counts(self.read_pipe(&pipe).await?),
            None => Ok(vec![0; dates.len()]),
        }
    }
}

#[async_trait]
impl TokenLedger for RedisStore {
    /// One pipelined round trip of scripts, each over at most [`crate::store::TOKEN_CHUNK`] keys.
    async fn add_tokens(
        &self,
        batch: &TokenBatch,
        read: &[Arc<str>],
    ) -> Result<Vec<TokenTotals>, StoreError> {
        let keys = batch.spent.len() + read.len();
        if keys == 0 {
            return Ok(Vec::new());
        }
        self.linked().await?;
        let pipe = tokens::add_pipeline(self.names(), batch, read);
        tokens::totals(self.query_pipe(&pipe).await?, keys)
    }
}

#[async_trait]
impl BudgetLeases for RedisStore {
    /// One script call (see [`limits`]): the request path's only store round trip with
    /// `rate_limit.shared`, made once per slice, not per request.
    async fn lease_rate(
        &self,
        key_id: &str,
        limit: RateLimit,
        want: u32,
    ) -> Result<RateLease, StoreError> {
        self.linked().await?;
        let cmd = limits::lease_rate_command(&self.names().rate(key_id), limit, want);
        let lease = limits::rate_lease(self.query(&cmd).await?);
        limits::check_rate(lease, want)
    }

    async fn lease_quota(
        &self,
        key_id: &str,
        windows: &QuotaWindows,
        ask: QuotaAsk<'_>,
    ) -> Result<QuotaLease, StoreError> {
        self.linked().await?;
        let (day, month) = self.quota_names(key_id, windows);
        let holders = self.names().quota_holders(key_id, &windows.day);
        let tallies = self.names().quota_tallies(key_id, &windows.day);
        let names = (&*day, &*month, &*holders, &*tallies);
        let cmd = limits::lease_quota_command(names, windows, ask);
        limits::quota_lease(self.query(&cmd).await?, ask.want)
    }

    async fn quota_used(
        &self,
        key_id: &str,
        windows: &QuotaWindows,
    ) -> Result<(u64, u64), StoreError> {
        self.linked().await?;
        let (day, month) = self.quota_names(key_id, windows);
        let cmd = limits::quota_used_command((&day, &month));
        Ok(limits::quota_used(self.read(&cmd).await?))
    }
}

impl ChangeFeed for RedisStore {
    /// Spawns the feed task and returns at once; the task subscribes within moments (one
    /// connect + SUBSCRIBE). Events published before that first subscription are not delivered,
    /// which is harmless at start-up since nothing is cached yet.
    fn invalidations(&self) -> Option<mpsc::Receiver<Invalidation>> {
        let (tx, rx) = mpsc::channel(feed::FEED_CAPACITY);
        let feed = feed::Feed {
            seed: self.client.get_connection_info().clone(),
            channel: self.untagged.channel(),
            slot_key: Names::for_mode(&self.prefix, link::Mode::Cluster)
                .ok()
                .map(|names| names.app_index()),
            op_timeout: self.op_timeout,
            live: self.feed_live.clone(),
        };
        self.runtime.spawn(feed::run(feed, tx));
        Some(rx)
    }

    fn feed_live(&self) -> bool {
        self.feed_live.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Ping for RedisStore {
    /// `EXISTS` of the app index rather than `PING`: on a Cluster a PING may reach any node,
    /// while this asks the node serving the gateway's slot, the one every call needs.
    /// A read, so retried once on a broken link: after an outage with no traffic the link
    /// still holds the connection Redis dropped, and the first probe would report that stale
    /// failure (a whole probe period of "not ready") instead of remaking the link.
    async fn ping(&self) -> Result<(), StoreError> {
        self.linked().await?;
        self.read::<i64>(redis::cmd("EXISTS").arg(self.names().app_index()))
            .await
            .map(drop)
    }
}

/// The id at the end of a listing position (`{created_at}.{id}`).
fn id_of(position: &str) -> &str {
    position.rsplit('.').next().unwrap_or(position)
}

/// A script's KEYS: the fixed ones, then a variable list (usage hashes).
fn keys_then<'a>(fixed: &'a [String], more: &'a [String]) -> Vec<&'a str> {
    fixed.iter().chain(more).map(String::as_str).collect()
}

/// Appends the last two ARGV of an audited script: the stream's cap and the event `audit`
/// makes of `done` (empty: no event).
fn audit_args<T>(
    cmd: &mut redis::Cmd,
    audit: Option<&Audit<T>>,
    done: &T,
) -> Result<(), StoreError> {
    let event = audit.map(|event_of| encode(&event_of(done))).transpose()?;
    cmd.arg(AUDIT_MAX_EVENTS).arg(event.unwrap_or_default());
    Ok(())
}

/// A time as a script argument: empty for none.
fn optional_time(at: Option<UnixSeconds>) -> String {
    at.map(|t| t.to_string()).unwrap_or_default()
}

/// `EVAL script numkeys keys...`; the caller appends ARGV. The full script is sent every time
/// (a few hundred bytes) so there is no NOSCRIPT round trip after a Redis restart.
fn eval(script: &str, keys: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    cmd
}

fn touch_command(names: &Names, uses: &[(String, UnixSeconds)]) -> redis::Cmd {
    let mut keys = vec![names.last_used()];
    keys.extend(uses.iter().map(|(id, _)| names.key(id)));
    let mut cmd = eval(
        TOUCH_KEYS,
        &keys.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for (id, at) in uses {
        cmd.arg(id).arg(at);
    }
    cmd
}

/// Runs one Redis call until `deadline`. A write that times out may still have been applied by
/// the server; callers only learn that the store did not confirm it.
async fn bounded_until<T>(
    deadline: tokio::time::Instant,
    limit: Duration,
    call: impl Future<Output = RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(result) => result.map_err(map_redis_error),
        Err(_) => Err(timed_out(limit)),
    }
}

fn timed_out(limit: Duration) -> StoreError {
    StoreError::Unavailable(format!("redis did not answer within {limit:?}"))
}

/// The connection (not the command) failed: worth one more try on a fresh connection.
fn is_link_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

fn map_redis_error(e: RedisError) -> StoreError {
    match e.kind() {
        // A stored value of the wrong shape; anything else is the server or the link failing.
        redis::ErrorKind::UnexpectedReturnType => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// A lookup's "not found", given whether the answering node has the deployment's marker (see
/// [`RedisStore::holds_data`]): believed only from a node with the deployment's data.
fn absent<T>(marked: u64) -> Result<Option<T>, StoreError> {
    if marked == 0 {
        return Err(StoreError::Unavailable(
            "the node serving the store holds none of its data (a failover in progress?)"
                .to_owned(),
        ));
    }
    Ok(None)
}

fn unexpected_status(status: i64) -> StoreError {
    StoreError::Unavailable(format!("unexpected script status {status}"))
}

fn contended() -> StoreError {
    StoreError::Unavailable("app kept changing concurrently; gave up".to_owned())
}

fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The record without its last-use time, which lives in `sg:last_used`.
fn encode_key(key: &KeyRecord) -> Result<String, StoreError> {
    encode(&KeyRecord {
        last_used_at: None,
        ..key.clone()
    })
}

fn decode_key(json: &str, last_used_at: Option<UnixSeconds>) -> Result<KeyRecord, StoreError> {
    let mut key: KeyRecord = decode(json)?;
    key.last_used_at = last_used_at;
    Ok(key)
}
