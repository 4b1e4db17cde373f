//! The Lua scripts of the Redis store's conditional writes, and the status codes they answer.
//!
//! Conditional multi-key writes run as scripts (sent with `EVAL`), not WATCH/MULTI (see the
//! store's module docs). Every write the admin API makes also adds its audit event to the
//! audit stream and publishes its invalidation from inside the same script, so a change, its
//! event and its announcement cannot be separated by a dropped connection or a caller that
//! went away.

/// Status codes returned by the scripts.
pub(super) const DONE: i64 = 1;
pub(super) const MISSING: i64 = 0;
pub(super) const TAKEN: i64 = -1;
pub(super) const STALE: i64 = -2;

/// Every write the admin API makes adds its audit event (the last two ARGV: the stream's cap
/// and the event, or empty for none) to the audit stream in the same script: a write is never
/// kept without its event, whatever happens to the caller.
///
/// KEYS: app, name claim, app index, audit stream. ARGV: id, json, listing position, audit.
pub(super) const CREATE_APP: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX') then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
if ARGV[5] ~= '' then redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[5]) end
return 1";

/// KEYS: app, old name claim, new name claim, audit stream.
/// ARGV: id, json read by the caller, new json, channel, message, audit.
pub(super) const UPDATE_APP: &str = r"
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
if ARGV[7] ~= '' then redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'e', ARGV[7]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1";

/// The app goes at once (its keys then resolve to no app on every instance); its keys are
/// queued for purging in chunks, so this script is small whatever their number.
/// KEYS: app, name claim, app index, deleted apps set, audit stream, then the app's usage
/// hashes. ARGV: id, json read by the caller, channel, listing position, who deletes it, audit.
pub(super) const DELETE_APP: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if cur ~= ARGV[2] then return -2 end
redis.call('DEL', KEYS[1])
for i = 6, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('ZREM', KEYS[3], ARGV[4])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
if ARGV[7] ~= '' then redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'e', ARGV[7]) end
redis.call('PUBLISH', ARGV[3], 'app:' .. ARGV[1])
return 1";

/// Marks keys of a deleted app revoked (they stay listed until purged like any revoked key) and
/// takes them off the app's index. Edits the stored JSON with Redis's cjson: fields the record
/// leaves out when unset (such as `allowed_ips` when empty) are never encoded as `{}`.
/// KEYS: app's key index, revoked index, expiry index, then one key record per position (every
/// key declared, as Redis Cluster requires). ARGV: when, by whom, then listing positions
/// (`{created_at}.{id}`), in the order of the key records.
pub(super) const REVOKE_APP_KEYS: &str = r"
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
/// KEYS: key, revoked index, expiry index, audit stream. ARGV: json read by the caller, new
/// json, channel, key id, revoked at (or empty), expires at (or empty), audit.
pub(super) const UPDATE_KEY: &str = r"
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
if ARGV[8] ~= '' then redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'e', ARGV[8]) end
redis.call('PUBLISH', ARGV[3], 'key:' .. ARGV[4])
return 1";

/// KEYS: app, key, key index, app's key index, last_used hash, expiry index, audit stream.
/// ARGV: key id, json, last used time or empty, listing position, expires at or empty, audit.
/// Not announced: nothing can be cached about a random id before it exists.
pub(super) const CREATE_KEY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[4])
redis.call('ZADD', KEYS[4], 0, ARGV[4])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[5], ARGV[1], ARGV[3]) end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[6], ARGV[5], ARGV[1]) end
if ARGV[7] ~= '' then redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[6], '*', 'e', ARGV[7]) end
return 1";

/// A roll in one script: the new key is stored and the old one ended together, or neither
/// (the old key changed since read: -2; it or its app is gone: 0; the new id is taken: -1).
/// KEYS: old key, revoked index, expiry index, audit stream, app, new key, key index, app's
/// key index, last_used hash. ARGV: 1-8 as for UPDATE_KEY (of the old key), then the new key's
/// id, json, last used time or empty, listing position, expires at or empty.
pub(super) const ROLL_KEY: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if cur ~= ARGV[1] then return -2 end
if redis.call('EXISTS', KEYS[5]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[6]) == 1 then return -1 end
redis.call('SET', KEYS[6], ARGV[10])
redis.call('ZADD', KEYS[7], 0, ARGV[12])
redis.call('ZADD', KEYS[8], 0, ARGV[12])
if ARGV[11] ~= '' then redis.call('HSET', KEYS[9], ARGV[9], ARGV[11]) end
if ARGV[13] ~= '' then redis.call('ZADD', KEYS[3], ARGV[13], ARGV[9]) end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[4])
elseif ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[4])
end
if ARGV[8] ~= '' then redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'e', ARGV[8]) end
redis.call('PUBLISH', ARGV[3], 'key:' .. ARGV[4])
return 1";

/// KEYS: key, key index, app's key index, last_used hash, revoked index, expiry index, then
/// the key's usage hashes. ARGV: key id, channel, listing position.
pub(super) const DELETE_KEY: &str = r"
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
pub(super) const TOUCH_KEYS: &str = r"
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
pub(super) const TOUCH_CHUNK: usize = 500;
