//! The Redis store: apps and keys shared by many gateway instances, plus the `sg:invalidate`
//! pub/sub feed that tells the other instances what changed.
//!
//! Layout (all under `sg:`): `app:{id}` app JSON, `appname:{lowercase}` name claim -> app id,
//! `key:{id}` key JSON, hash `last_used` key id -> unix seconds; usage counts under `usage:`,
//! laid out in [`super::redis_usage`]. Listings read sorted sets whose members are
//! `{created_at:011}.{id}` (all scores 0, so they sort by that text): `appidx` of apps, `keyidx`
//! of keys, `appkeyidx:{app}` of one app's keys; a page is one `ZRANGEBYLEX ... LIMIT` plus one
//! `MGET` of at most [`LIST_CHUNK`](super::LIST_CHUNK) records. `deleted_apps` is the set of
//! deleted apps whose keys are still to be removed, [`PURGE_CHUNK`] keys per script.
//!
//! Conditional multi-key writes run as Lua scripts (sent with `EVAL`), not WATCH/MULTI: the
//! `ConnectionManager` multiplexes every caller over one connection, and WATCH state is per
//! connection, so concurrent callers would clobber each other's WATCHes. A script is atomic and
//! needs no per-connection state. Writes that must invalidate caches PUBLISH from inside the same
//! script, so a change and its announcement cannot be separated by a dropped connection.
//!
//! Redis Cluster works too (found out when connecting, see [`link`]): every key then carries the
//! deployment's one hash tag ([`names`]), and every script declares each key it touches in KEYS,
//! so each script, `MGET` and pipeline stays within one slot. The invalidation feed is in [`feed`].

use super::redis_limits;
use super::redis_usage;
use super::{
    Indexed, Invalidation, Keep, KeyStore, QuotaLease, RateLease, StoreError, PURGE_CHUNK,
};
mod audit;
mod feed;
mod legacy;
mod link;
mod names;

use self::link::Link;
use self::names::Names;
pub use self::names::DEFAULT_PREFIX;

use crate::model::{
    listing_position, now_unix, App, AppChange, AuditEvent, KeyChange, KeyRecord, Page,
    PageRequest, QuotaWindows, RateLimit, UnixSeconds, UsageBatch, UsageSubject,
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

/// Compare-and-set attempts for writes that read the current app first.
const CAS_ATTEMPTS: usize = 5;

/// Status codes returned by the scripts.
const DONE: i64 = 1;
const MISSING: i64 = 0;
const TAKEN: i64 = -1;
const STALE: i64 = -2;

/// KEYS: app, name claim, app index. ARGV: id, json, listing position.
const CREATE_APP: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX') then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
return 1";

/// KEYS: app, old name claim, new name claim.
/// ARGV: id, json read by the caller, new json, channel, message.
const UPDATE_APP: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if cur ~= ARGV[2] then return -2 end
if KEYS[2] ~= KEYS[3] then
  local owner = redis.call('GET', KEYS[3])
  if owner and owner ~= ARGV[1] then return -1 end
  redis.call('SET', KEYS[3], ARGV[1])
  if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1";

/// The app goes at once (its keys then resolve to no app on every instance); its keys are
/// queued for purging in chunks, so this script is small whatever their number.
/// KEYS: app, name claim, app index, deleted apps set, then the app's usage hashes.
/// ARGV: id, json read by the caller, channel, listing position, who deletes it.
const DELETE_APP: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if cur ~= ARGV[2] then return -2 end
redis.call('DEL', KEYS[1])
for i = 5, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('ZREM', KEYS[3], ARGV[4])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
redis.call('PUBLISH', ARGV[3], 'app:' .. ARGV[1])
return 1";

/// Marks keys of a deleted app revoked (they stay listed until purged like any revoked key) and
/// takes them off the app's index. Edits the stored JSON with Redis's cjson: fields the record
/// leaves out when unset (such as `allowed_ips` when empty) are never encoded as `{}`.
/// KEYS: app's key index, revoked index, expiry index, then one key record per position (every
/// key declared, as Redis Cluster requires). ARGV: when, by whom, then listing positions
/// (`{created_at}.{id}`), in the order of the key records.
const REVOKE_APP_KEYS: &str = r"
for i = 3, #ARGV do
  local id = string.match(ARGV[i], '%.(.*)$')
  local record = KEYS[i + 1]
  local json = redis.call('GET', record)
  if json then
    local key = cjson.decode(json)
    if key['revoked_at'] == nil then
      key['revoked_at'] = tonumber(ARGV[1])
      key['revoked_by'] = ARGV[2]
      redis.call('SET', record, cjson.encode(key))
      redis.call('ZADD', KEYS[2], ARGV[1], id)
    end
    redis.call('ZREM', KEYS[3], id)
  end
  redis.call('ZREM', KEYS[1], ARGV[i])
end
return #ARGV - 2";

/// A compare-and-set of one key record, keeping the revoked and expiry indexes in step.
/// KEYS: key, revoked index, expiry index. ARGV: json read by the caller, new json, channel,
/// key id, revoked at (or empty), expires at (or empty).
const UPDATE_KEY: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if cur ~= ARGV[1] then return -2 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[4])
elseif ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[4])
end
redis.call('PUBLISH', ARGV[3], 'key:' .. ARGV[4])
return 1";

/// KEYS: app, key, key index, app's key index, last_used hash, expiry index.
/// ARGV: key id, json, last used time or empty, listing position, expires at or empty.
const CREATE_KEY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[4])
redis.call('ZADD', KEYS[4], 0, ARGV[4])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[5], ARGV[1], ARGV[3]) end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[6], ARGV[5], ARGV[1]) end
return 1";

/// KEYS: key, key index, app's key index, last_used hash, revoked index, expiry index, then
/// the key's usage hashes. ARGV: key id, channel, listing position.
const DELETE_KEY: &str = r"
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[1])
for i = 7, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('PUBLISH', ARGV[2], 'key:' .. ARGV[1])
return 1";

/// KEYS: last_used hash, then one `sg:key:{id}` per use. ARGV: id, time, id, time, ...
/// Ids whose record is gone are skipped, so no orphan last_used fields appear.
const TOUCH_KEYS: &str = r"
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local id = ARGV[2 * i - 3]
    local at = tonumber(ARGV[2 * i - 2])
    local cur = tonumber(redis.call('HGET', KEYS[1], id))
    if not cur or cur < at then redis.call('HSET', KEYS[1], id, ARGV[2 * i - 2]) end
  end
end
return 1";

/// Uses per script call in `touch_keys`: keeps each script short so Redis is not blocked long;
/// all chunks still go out in one pipeline.
const TOUCH_CHUNK: usize = 500;

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

    /// Adds `EXISTS` of the deployment's marker (see [`Names::marker`]) to a lookup's
    /// pipeline: 0 means the answering node does not hold the deployment's data.
    fn holds_data(&self, pipe: &mut redis::Pipeline) {
        pipe.cmd("EXISTS").arg(self.names().marker());
    }

    async fn get_json(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(redis::cmd("GET").arg(key)).await
    }

    /// The app as stored now: its raw JSON (for compare-and-set) and decoded form.
    async fn current_app(&self, id: &str) -> Result<Option<(String, App)>, StoreError> {
        match self.get_json(&self.names().app(id)).await? {
            Some(json) => decode::<App>(&json).map(|app| Some((json, app))),
            None => Ok(None),
        }
    }

    /// One compare-and-set attempt of `update_app`: the change applied to the app as read.
    async fn try_update_app(
        &self,
        id: &str,
        change: &AppChange,
        expected_version: Option<u64>,
    ) -> Result<(i64, Option<(App, App)>), StoreError> {
        let Some((old_json, old)) = self.current_app(id).await? else {
            return Ok((MISSING, None));
        };
        if expected_version.is_some_and(|v| v != old.version) {
            return Err(StoreError::VersionMismatch);
        }
        let app = change.applied_to(&old);
        let mut cmd = eval(
            UPDATE_APP,
            &[
                &self.names().app(id),
                &self.names().app_name(&old.name),
                &self.names().app_name(&app.name),
            ],
        );
        cmd.arg(id)
            .arg(old_json)
            .arg(encode(&app)?)
            .arg(self.names().channel())
            .arg(format!("app:{id}"));
        Ok((self.query(&cmd).await?, Some((old, app))))
    }

    /// One compare-and-set attempt of `delete_app`.
    async fn try_delete_app(
        &self,
        id: &str,
        by: &str,
        expected_version: Option<u64>,
    ) -> Result<i64, StoreError> {
        let Some((old_json, old)) = self.current_app(id).await? else {
            return Ok(MISSING);
        };
        if expected_version.is_some_and(|v| v != old.version) {
            return Err(StoreError::VersionMismatch);
        }
        let keys = [
            self.names().app(id),
            self.names().app_name(&old.name),
            self.names().app_index(),
            self.names().deleted_apps(),
        ];
        let now = now_unix();
        let usage = redis_usage::usage_hashes(self.names().base(), UsageSubject::App(id), now);
        let mut cmd = eval(DELETE_APP, &keys_then(&keys, &usage));
        cmd.arg(id)
            .arg(old_json)
            .arg(self.names().channel())
            .arg(listing_position(old.created_at, id))
            .arg(by);
        self.query(&cmd).await
    }

    /// One compare-and-set attempt of `update_key`.
    async fn try_update_key(
        &self,
        id: &str,
        change: &KeyChange,
    ) -> Result<(i64, Option<KeyRecord>), StoreError> {
        let Some(old_json) = self.get_json(&self.names().key(id)).await? else {
            return Ok((MISSING, None));
        };
        let old = decode_key(&old_json, None)?;
        let key = change.applied_to(&old).ok_or(StoreError::Revoked)?;
        let mut cmd = eval(
            UPDATE_KEY,
            &[
                &self.names().key(id),
                &self.names().revoked(),
                &self.names().expiring(),
            ],
        );
        let text = |at: Option<UnixSeconds>| at.map(|t| t.to_string()).unwrap_or_default();
        cmd.arg(old_json)
            .arg(encode_key(&key)?)
            .arg(self.names().channel())
            .arg(id)
            .arg(text(key.revoked_at))
            .arg(text(key.expires_at));
        Ok((self.query(&cmd).await?, Some(key)))
    }

    /// Up to `n` members of a listing index after `after`: one bounded `ZRANGEBYLEX`.
    async fn positions_after(
        &self,
        index: &str,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<String>, StoreError> {
        let min = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let mut cmd = redis::cmd("ZRANGEBYLEX");
        cmd.arg(index).arg(min).arg("+").arg("LIMIT").arg(0).arg(n);
        self.read(&cmd).await
    }

    async fn apps_after(
        &self,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<Indexed<App>>, StoreError> {
        let positions = self
            .positions_after(&self.names().app_index(), after, n)
            .await?;
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = positions
            .iter()
            .map(|p| self.names().app(id_of(p)))
            .collect();
        let jsons: Vec<Option<String>> = self.read(redis::cmd("MGET").arg(&keys)).await?;
        positions
            .into_iter()
            .zip(jsons)
            .map(|(position, json)| Ok((position, json.map(|j| decode(&j)).transpose()?)))
            .collect()
    }

    /// Up to `n` keys of an index after `after`, with their last-use times: one pipelined
    /// round trip of two bounded reads (not a transaction: a key removed in between is
    /// simply missing from the page).
    async fn keys_after(
        &self,
        index: &str,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<Indexed<KeyRecord>>, StoreError> {
        let positions = self.positions_after(index, after, n).await?;
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = positions.iter().map(|p| id_of(p)).collect();
        let record_keys: Vec<String> = ids.iter().map(|id| self.names().key(id)).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("MGET")
            .arg(&record_keys)
            .cmd("HMGET")
            .arg(self.names().last_used())
            .arg(&ids);
        let (jsons, times): (Vec<Option<String>>, Vec<Option<u64>>) = self.read_pipe(&pipe).await?;
        positions
            .into_iter()
            .zip(jsons.into_iter().zip(times))
            .map(|(position, (json, at))| {
                Ok((position, json.map(|j| decode_key(&j, at)).transpose()?))
            })
            .collect()
    }
}

#[async_trait]
impl KeyStore for RedisStore {
    async fn create_app(&self, app: &App) -> Result<(), StoreError> {
        self.linked().await?;
        let json = encode(app)?;
        let mut cmd = eval(
            CREATE_APP,
            &[
                &self.names().app(&app.id),
                &self.names().app_name(&app.name),
                &self.names().app_index(),
            ],
        );
        cmd.arg(&app.id)
            .arg(json)
            .arg(listing_position(app.created_at, &app.id));
        match self.query::<i64>(&cmd).await? {
            DONE => Ok(()),
            TAKEN => Err(StoreError::Conflict),
            other => Err(unexpected_status(other)),
        }
    }

    /// With [`RedisStore::holds_data`] in the same round trip: see [`KeyStore::get_key`].
    async fn get_app(&self, id: &str) -> Result<Option<App>, StoreError> {
        self.linked().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.names().app(id));
        self.holds_data(&mut pipe);
        let (json, marked): (Option<String>, u64) = self.read_pipe(&pipe).await?;
        match json {
            Some(json) => decode(&json).map(Some),
            None => absent(marked),
        }
    }

    async fn list_apps(
        &self,
        page: PageRequest<'_>,
        keep: Keep<'_, App>,
    ) -> Result<Page<App>, StoreError> {
        self.linked().await?;
        super::scan_index(page, keep, |after, n| async move {
            self.apps_after(after.as_deref(), n).await
        })
        .await
    }

    async fn update_app(
        &self,
        id: &str,
        change: &AppChange,
        expected_version: Option<u64>,
    ) -> Result<(App, App), StoreError> {
        self.linked().await?;
        for _ in 0..CAS_ATTEMPTS {
            match self.try_update_app(id, change, expected_version).await? {
                (DONE, Some(both)) => return Ok(both),
                (MISSING, _) => return Err(StoreError::NotFound),
                (TAKEN, _) => return Err(StoreError::Conflict),
                (STALE, _) => continue,
                (other, _) => return Err(unexpected_status(other)),
            }
        }
        Err(contended())
    }

    async fn delete_app(
        &self,
        id: &str,
        by: &str,
        expected_version: Option<u64>,
    ) -> Result<bool, StoreError> {
        self.linked().await?;
        for _ in 0..CAS_ATTEMPTS {
            match self.try_delete_app(id, by, expected_version).await? {
                DONE => return Ok(true),
                MISSING => return Ok(false),
                STALE => continue,
                other => return Err(unexpected_status(other)),
            }
        }
        Err(contended())
    }

    async fn revoke_keys_of_deleted_apps(&self, at: UnixSeconds) -> Result<usize, StoreError> {
        self.linked().await?;
        let picked: Vec<String> = self
            .read(
                redis::cmd("HRANDFIELD")
                    .arg(self.names().deleted_apps())
                    .arg(1)
                    .arg("WITHVALUES"),
            )
            .await?;
        let [app, by] = picked.as_slice() else {
            return Ok(0);
        };
        let index = self.names().app_keys(app);
        let positions = self.positions_after(&index, None, PURGE_CHUNK).await?;
        if positions.is_empty() {
            // No key can be added to a deleted app, so an empty index stays empty.
            self.query::<i64>(redis::cmd("HDEL").arg(self.names().deleted_apps()).arg(app))
                .await?;
            return Ok(1);
        }
        let fixed = [index, self.names().revoked(), self.names().expiring()];
        let records: Vec<String> = positions
            .iter()
            .map(|p| self.names().key(id_of(p)))
            .collect();
        let mut cmd = eval(REVOKE_APP_KEYS, &keys_then(&fixed, &records));
        cmd.arg(at).arg(by).arg(&positions);
        self.query::<i64>(&cmd).await?;
        Ok(positions.len())
    }

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.linked().await?;
        let keys = [
            self.names().app(&key.app_id),
            self.names().key(&key.id),
            self.names().key_index(),
            self.names().app_keys(&key.app_id),
            self.names().last_used(),
            self.names().expiring(),
        ];
        let mut cmd = eval(CREATE_KEY, &keys.each_ref().map(String::as_str));
        let last_used = key.last_used_at.map(|t| t.to_string()).unwrap_or_default();
        cmd.arg(&key.id)
            .arg(encode_key(key)?)
            .arg(last_used)
            .arg(listing_position(key.created_at, &key.id))
            .arg(key.expires_at.map(|t| t.to_string()).unwrap_or_default());
        match self.query::<i64>(&cmd).await? {
            DONE => Ok(()),
            MISSING => Err(StoreError::NotFound),
            TAKEN => Err(StoreError::Conflict),
            other => Err(unexpected_status(other)),
        }
    }

    /// "No such key" is believed only from a node that holds the deployment's data: the same
    /// round trip asks whether the deployment's marker exists there. A server that answers for
    /// the slot without the data (seen in a failover test: another `redis-server` had started
    /// on the dead master's freed port) would make a valid key 401 and an unknown id.
    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.linked().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(self.names().key(id))
            .cmd("HGET")
            .arg(self.names().last_used())
            .arg(id);
        self.holds_data(&mut pipe);
        let (json, at, marked): (Option<String>, Option<u64>, u64) = self.read_pipe(&pipe).await?;
        match json {
            Some(json) => decode_key(&json, at).map(Some),
            None => absent(marked),
        }
    }

    async fn list_keys(
        &self,
        app_id: Option<&str>,
        page: PageRequest<'_>,
        keep: Keep<'_, KeyRecord>,
    ) -> Result<Page<KeyRecord>, StoreError> {
        self.linked().await?;
        let index = app_id.map_or_else(|| self.names().key_index(), |a| self.names().app_keys(a));
        let index = index.as_str();
        super::scan_index(page, keep, |after, n| async move {
            self.keys_after(index, after.as_deref(), n).await
        })
        .await
    }

    async fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        self.linked().await?;
        // Key records never change app or creation time, so reading them first is race-free;
        // the script's DEL decides which of two concurrent deletes wins.
        let Some(json) = self.get_json(&self.names().key(id)).await? else {
            return Ok(false);
        };
        let record: KeyRecord = decode(&json)?;
        let keys = [
            self.names().key(id),
            self.names().key_index(),
            self.names().app_keys(&record.app_id),
            self.names().last_used(),
            self.names().revoked(),
            self.names().expiring(),
        ];
        let usage =
            redis_usage::usage_hashes(self.names().base(), UsageSubject::Key(id), now_unix());
        let mut cmd = eval(DELETE_KEY, &keys_then(&keys, &usage));
        cmd.arg(id)
            .arg(self.names().channel())
            .arg(listing_position(record.created_at, id));
        Ok(self.query::<i64>(&cmd).await? == DONE)
    }

    async fn update_key(&self, id: &str, change: &KeyChange) -> Result<KeyRecord, StoreError> {
        self.linked().await?;
        for _ in 0..CAS_ATTEMPTS {
            match self.try_update_key(id, change).await? {
                (DONE, Some(key)) => return Ok(key),
                (MISSING, _) => return Err(StoreError::NotFound),
                (STALE, _) => continue,
                (other, _) => return Err(unexpected_status(other)),
            }
        }
        Err(contended())
    }

    async fn revoked_before(&self, before: UnixSeconds) -> Result<Vec<String>, StoreError> {
        self.linked().await?;
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(self.names().revoked())
            .arg("-inf")
            .arg(format!("({before}"))
            .arg("LIMIT")
            .arg(0)
            .arg(PURGE_CHUNK);
        self.read(&cmd).await
    }

    async fn count_expiring(&self, from: UnixSeconds, to: UnixSeconds) -> Result<u64, StoreError> {
        self.linked().await?;
        self.read(
            redis::cmd("ZCOUNT")
                .arg(self.names().expiring())
                .arg(format!("({from}"))
                .arg(to),
        )
        .await
    }

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

    /// One pipeline of idempotent scripts (see [`redis_usage`]): one round trip. A write that
    /// times out may still have been applied; the caller sends the same batches again and the
    /// chunks already applied are skipped.
    async fn add_usage(&self, batches: &[UsageBatch]) -> Result<(), StoreError> {
        self.linked().await?;
        match redis_usage::add_pipeline(self.names().base(), batches, now_unix())? {
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
        let read = redis_usage::UsageRead::new(self.names().base(), subject, dates);
        match read.pipeline(dates) {
            Some(pipe) => read.counts(self.read_pipe(&pipe).await?),
            None => Ok(vec![0; dates.len()]),
        }
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.linked().await?;
        self.append_audit_event(event).await
    }

    async fn upgrade(&self) -> Result<usize, StoreError> {
        self.linked().await?;
        self.upgrade_legacy_indexes().await
    }

    async fn list_audit(
        &self,
        page: PageRequest<'_>,
        keep: Keep<'_, AuditEvent>,
    ) -> Result<Page<AuditEvent>, StoreError> {
        self.linked().await?;
        super::scan_index(page, keep, |before, n| async move {
            self.audit_before(before.as_deref(), n).await
        })
        .await
    }

    /// One script call (see `redis_limits.rs`): the request path's only store round trip with
    /// `rate_limit.shared`, made once per slice, not per request.
    async fn lease_rate(
        &self,
        key_id: &str,
        limit: RateLimit,
        want: u32,
    ) -> Result<RateLease, StoreError> {
        self.linked().await?;
        let cmd = redis_limits::lease_rate_command(&self.names().rate(key_id), limit, want);
        let lease = redis_limits::rate_lease(self.query(&cmd).await?);
        redis_limits::check_rate(lease, want)
    }

    async fn lease_quota(
        &self,
        key_id: &str,
        windows: &QuotaWindows,
        want: u64,
    ) -> Result<QuotaLease, StoreError> {
        self.linked().await?;
        let (day, month) = self.quota_names(key_id, windows);
        let cmd = redis_limits::lease_quota_command((&day, &month), windows, want);
        Ok(redis_limits::quota_lease(self.query(&cmd).await?))
    }

    async fn adjust_quota(
        &self,
        key_id: &str,
        windows: &QuotaWindows,
        delta: i64,
    ) -> Result<(), StoreError> {
        self.linked().await?;
        let (day, month) = self.quota_names(key_id, windows);
        let cmd = redis_limits::adjust_quota_command((&day, &month), windows, delta);
        self.query::<i64>(&cmd).await.map(drop)
    }

    async fn quota_used(
        &self,
        key_id: &str,
        windows: &QuotaWindows,
    ) -> Result<(u64, u64), StoreError> {
        self.linked().await?;
        let (day, month) = self.quota_names(key_id, windows);
        let cmd = redis_limits::quota_used_command((&day, &month));
        Ok(redis_limits::quota_used(self.read(&cmd).await?))
    }

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

/// The id at the end of a listing position (`{created_at}.{id}`).
fn id_of(position: &str) -> &str {
    position.rsplit('.').next().unwrap_or(position)
}

/// A script's KEYS: the fixed ones, then a variable list (usage hashes).
fn keys_then<'a>(fixed: &'a [String], more: &'a [String]) -> Vec<&'a str> {
    fixed.iter().chain(more).map(String::as_str).collect()
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
