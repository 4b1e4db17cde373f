//! Shared rate budgets and quota counts in Redis: the scripts that lease slices of them and the
//! commands that read and adjust them. Used by [`super`] (the Redis store); kept apart because none of it
//! touches app or key records.
//!
//! Layout (names from `names.rs`; every script here touches one key's names, which share a
//! slot: the key id's tag on a standalone Redis, the deployment's tag on a Cluster):
//! - `rate:{id}`: the key's GCRA theoretical arrival time, microseconds on the Redis clock;
//!   expires once the bucket would be full again (an absent name is a full bucket).
//! - `quota:{id}:d:{YYYY-MM-DD}` and `quota:{id}:m:{YYYY-MM}`: requests counted in that UTC
//!   window; each expires a day after its window ends (a day of margin for clock skew between
//!   instances), so nothing grows for ever.
//! - `quota:{id}:h:{YYYY-MM-DD}`: who holds leased, not yet spent requests of the key (member:
//!   an instance's entry; score: until when, ms on the Redis clock), so an instance told that
//!   nothing is left knows whether some is only held elsewhere; expires with its last record.
//! - `quota:{id}:t:{YYYY-MM-DD}`: per holder, what the store has granted it, taken back from it
//!   and added for it (fields `{holder}:g`, `:r`, `:o`), so a repeated step applies nothing
//!   twice (see [`QuotaAsk`]); expires with the day count.

use crate::model::{QuotaWindows, RateLimit, UnixSeconds};
use crate::store::{QuotaAsk, QuotaLease, RateLease, StoreError, QUOTA_SPREAD};
use std::time::Duration;

/// Kept after a window ends, for instances whose clock lags and the usage endpoint's last read.
const WINDOW_MARGIN_SECS: UnixSeconds = 86_400;

/// GCRA on the server's clock (`TIME`), so instances' clocks never matter. Grants up to `want`
/// requests at once: the arrival time moves `n` intervals ahead, never more than `burst`
/// intervals past now.
/// KEYS: the rate name. ARGV: interval (microseconds, may be fractional), burst, want.
/// Returns {granted, remaining, wait µs (when none granted), reset µs}.
const LEASE_RATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2]) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local free = math.floor((now + capacity - tat) / interval)
local n = math.min(tonumber(ARGV[3]), free)
if n <= 0 then
  return {0, 0, math.ceil(tat + interval - capacity - now), math.ceil(tat - now)}
end
tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {n, free - n, 0, math.ceil(tat - now)}";

/// One holder's step (see [`QuotaAsk`]), mirroring [`crate::store::quota_grant`]: gives back what went
/// unused, counts up to `want` requests in both windows unless that would pass a limit (near
/// the end a share of what is left, then 1), and records or drops the holder. Records past
/// their time are dropped first: an instance that died holding requests is not waited for.
/// KEYS: day count, month count, holders, tallies. ARGV: day limit (-1: none), month limit
/// (-1: none), want, spread, day expiry, month expiry (unix seconds), returned, holder, holds
/// (1/0), hold ms, received, owed (the totals of [`QuotaAsk`]). Returns {granted, day used,
/// month used, ms until the last other record ends}.
const LEASE_QUOTA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local tally = redis.call('HMGET', KEYS[4], ARGV[8] .. ':g', ARGV[8] .. ':r', ARGV[8] .. ':o')
local g = tonumber(tally[1] or '0')
local r = tonumber(tally[2] or '0')
local o = tonumber(tally[3] or '0')
local received = tonumber(ARGV[11])
local returned = tonumber(ARGV[7])
local owed = tonumber(ARGV[12])
local back = 0
if g > received then back = back + g - received end
if returned > r then back = back + returned - r end
local add = 0
if owed > o then add = owed - o end
local day = math.max(0, tonumber(redis.call('GET', KEYS[1]) or '0') + add - back)
local month = math.max(0, tonumber(redis.call('GET', KEYS[2]) or '0') + add - back)
back = back - add
local free = nil
if tonumber(ARGV[1]) >= 0 then free = tonumber(ARGV[1]) - day end
if tonumber(ARGV[2]) >= 0 then
  local f = tonumber(ARGV[2]) - month
  if free == nil or f < free then free = f end
end
local want = tonumber(ARGV[3])
local n = want
if want <= 0 then
  n = 0
elseif free ~= nil then
  if free <= 0 then
    n = 0
  elseif free <= want then
    n = 1
  else
    n = math.min(want, math.max(1, math.floor(free / tonumber(ARGV[4]))))
  end
end
if n > 0 or back ~= 0 then
  day = day + n
  month = month + n
  redis.call('SET', KEYS[1], day)
  redis.call('EXPIREAT', KEYS[1], ARGV[5])
  redis.call('SET', KEYS[2], month)
  redis.call('EXPIREAT', KEYS[2], ARGV[6])
end
redis.call('HSET', KEYS[4], ARGV[8] .. ':g', received + n, ARGV[8] .. ':r', math.max(r, returned),
  ARGV[8] .. ':o', math.max(o, owed))
redis.call('EXPIREAT', KEYS[4], ARGV[5])
local hold = tonumber(ARGV[10])
if n > 0 or ARGV[9] == '1' then
  redis.call('ZADD', KEYS[3], now + hold, ARGV[8])
  redis.call('PEXPIRE', KEYS[3], hold)
else
  redis.call('ZREM', KEYS[3], ARGV[8])
end
local wait = 0
if n == 0 then
  local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
  if last[2] then wait = math.max(1, tonumber(last[2]) - now) end
end
return {n, day, month, wait}";

/// The script call that leases from `rate_name`.
pub(super) fn lease_rate_command(rate_name: &str, limit: RateLimit, want: u32) -> redis::Cmd {
    let per_second = f64::from(limit.per_second.max(1));
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(LEASE_RATE)
        .arg(1)
        .arg(rate_name)
        .arg(format!("{:.3}", 1_000_000.0 / per_second))
        .arg(limit.burst.max(1))
        .arg(want.max(1));
    cmd
}

/// The script's reply as a lease.
pub(super) fn rate_lease(reply: (i64, i64, i64, i64)) -> RateLease {
    let (granted, remaining, wait, reset) = reply;
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    RateLease {
        granted: u32::try_from(granted).unwrap_or(0),
        remaining: u32::try_from(remaining).unwrap_or(0),
        wait: micros(wait),
        reset: micros(reset),
    }
}

/// The script call of one holder's step; `names` are the day and month counts, the holders
/// and the tallies.
pub(super) fn lease_quota_command(
    names: (&str, &str, &str, &str),
    windows: &QuotaWindows,
    ask: QuotaAsk<'_>,
) -> redis::Cmd {
    let limit = |l: Option<u64>| l.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(LEASE_QUOTA)
        .arg(4)
        .arg(names.0)
        .arg(names.1)
        .arg(names.2)
        .arg(names.3)
        .arg(limit(windows.per_day))
        .arg(limit(windows.per_month))
        .arg(ask.want)
        .arg(QUOTA_SPREAD)
        .arg(windows.day_ends + WINDOW_MARGIN_SECS)
        .arg(windows.month_ends + WINDOW_MARGIN_SECS)
        .arg(ask.returned)
        .arg(ask.holder)
        .arg(u8::from(ask.holds))
        .arg(ask.hold_ms.max(1))
        .arg(ask.received)
        .arg(ask.owed);
    cmd
}

/// The script's reply as a lease; granting more than was asked would be a script bug: refused
/// rather than admitted on.
pub(super) fn quota_lease(
    reply: (i64, i64, i64, i64),
    want: u64,
) -> Result<QuotaLease, StoreError> {
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    let lease = QuotaLease {
        granted: count(reply.0),
        day_used: count(reply.1),
        month_used: count(reply.2),
        held_elsewhere_ms: count(reply.3),
        records_holders: true,
    };
    if lease.granted > want {
        return Err(StoreError::Corrupt(format!(
            "quota lease granted {} of {want}",
            lease.granted
        )));
    }
    Ok(lease)
}

/// One `MGET` of both counts; a multi-key read of one slot (both names share the tag).
pub(super) fn quota_used_command(names: (&str, &str)) -> redis::Cmd {
    let mut cmd = redis::cmd("MGET");
    cmd.arg(names.0).arg(names.1);
    cmd
}

pub(super) fn quota_used(reply: (Option<u64>, Option<u64>)) -> (u64, u64) {
    (reply.0.unwrap_or(0), reply.1.unwrap_or(0))
}

/// A lease granting more than was asked or counting back in time would be a script bug; refuse
/// it rather than admit on it.
pub(super) fn check_rate(lease: RateLease, want: u32) -> Result<RateLease, StoreError> {
    if lease.granted > want.max(1) {
        return Err(StoreError::Corrupt(format!(
            "rate lease granted {} of {want}",
            lease.granted
        )));
    }
    Ok(lease)
}
