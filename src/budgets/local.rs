//! Per-key rate limits: one GCRA limiter (from `governor`) per API key.
//!
//! # What this module owns
//! The limiter state of every key that made a request recently, in a sharded concurrent map.
//! [`RateLimits::prune`] (run every second by a background task) drops an entry once its key
//! has been idle for as long as an empty bucket takes to refill completely, so dropping it
//! loses nothing: a fresh limiter starts with the same full bucket the old one would have
//! had. Prune also bounds the map by a key count, so memory stays flat however many keys
//! there are; if more keys are active at once than that bound, the least recently used ones
//! lose their state early and start over with a full bucket. Only authenticated keys get
//! state, so a flood of made-up keys adds nothing here.
//!
//! # What it never does
//! It never blocks or sleeps: a request over its budget gets [`Decision::Limited`] with the
//! time to wait, and the caller answers 429. And it never takes a lock that all requests
//! contend on: a lookup read-locks one shard of the map, and each limiter is a single atomic
//! compare-and-swap on its own state. The request path only reads, stamps and (for a key's
//! first request) inserts; eviction runs in the background.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::model::RateLimit;

/// A direct (single-bucket) limiter that reports its state on every decision.
///
/// `MonotonicClock` (std `Instant`) is zero-sized, so each key's limiter carries no
/// clock handle of its own and needs no extra timing crate.
type Limiter = RateLimiter<NotKeyed, InMemoryState, MonotonicClock, StateInformationMiddleware>;

/// Per-key rate-limit state, shared by all connections (wrap it in an `Arc`).
pub struct RateLimits {
    /// Keyed by authenticated key ids only, so a fast (seeded) hash is safe here.
    entries: DashMap<Arc<str>, Arc<Entry>, foldhash::fast::RandomState>,
    max_keys: usize,
    /// Origin of the entries' `last_used` stamps.
    epoch: Instant,
}

opaque_debug!(RateLimits);

/// A key's rate-limit state after a request it allowed, as the `RateLimit-*` headers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u32,
    pub remaining: u32,
    /// Whole seconds until the full burst is available again.
    pub reset: u64,
}

/// The outcome of counting one request against a key's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The request may proceed.
    ///
    /// `limit` is the burst size; `remaining` is how many more requests could be made
    /// right now; `reset` is the whole seconds (rounded up) until the full burst is
    /// available again. Since this request itself used the bucket, `reset` is at
    /// least 1 and grows with usage: it is `ceil((limit - remaining) / per_second)`,
    /// which may overstate the true time by less than one request's interval.
    Allowed {
        limit: u32,
        remaining: u32,
        reset: u64,
    },
    /// The request is over budget and must be refused.
    ///
    /// `retry_after` is the whole seconds (rounded up, at least 1) until one more
    /// request would be allowed; `reset` is the whole seconds (rounded up) until the
    /// full burst is available again, never less than `retry_after`.
    Limited {
        limit: u32,
        retry_after: u64,
        reset: u64,
    },
}

/// One key's limiter, with the limit it was built for so an edited limit is noticed.
struct Entry {
    limit: RateLimit,
    /// The burst as the limiter uses it (clamped to >= 1); reported as `limit`.
    burst: u32,
    /// Time for one used request to come back.
    interval: Duration,
    /// How long the key may stay idle before its state is worthless (bucket full).
    idle: Duration,
    /// When the key was last checked, in milliseconds after [`RateLimits::epoch`].
    last_used: AtomicU64,
    limiter: Limiter,
}

impl Entry {
    fn new(limit: RateLimit, now: u64) -> Entry {
        // The config validates both as >= 1; clamping here keeps a bad value from
        // ever panicking on the request path.
        let per_second = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        // An empty bucket refills completely in burst / per_second seconds; after that
        // long idle, a fresh limiter is indistinguishable from this one.
        let refill_secs = u64::from(burst.get()).div_ceil(u64::from(per_second.get()));
        Entry {
            limit,
            burst: burst.get(),
            interval: quota.replenish_interval(),
            idle: Duration::from_secs(refill_secs.max(1)),
            last_used: AtomicU64::new(now),
            limiter: RateLimiter::direct_with_clock(quota, MonotonicClock)
                .with_middleware::<StateInformationMiddleware>(),
        }
    }

    fn is_idle(&self, now: u64) -> bool {
        let idle = u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(self.last_used.load(Ordering::Relaxed)) >= idle
    }
}

impl RateLimits {
    /// Creates an empty set of limiters.
    ///
    /// `max_keys`: bound on keys whose state is held at once (between prunes, new keys may
    /// briefly exceed it). Set it above the number of keys expected to be active within one
    /// refill window, or busy keys may lose their state early (and so get a fresh burst).
    pub fn new(max_keys: u64) -> RateLimits {
        RateLimits {
            entries: DashMap::default(),
            max_keys: usize::try_from(max_keys).unwrap_or(usize::MAX),
            epoch: Instant::now(),
        }
    }

    /// Counts one request of `key_id` against `limit` and says whether it may proceed.
    ///
    /// Never blocks. If the key's limiter was built for a different limit (its app's
    /// limit was edited), it is replaced by a fresh one for `limit`.
    pub fn check(&self, key_id: &Arc<str>, limit: RateLimit) -> Decision {
        let now = self.now_millis();
        let entry = self.entry(key_id, limit, now);
        entry.last_used.store(now, Ordering::Relaxed);
        let (burst, interval) = (entry.burst, entry.interval);
        match entry.limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                // The snapshot hides the exact theoretical arrival time, but each used
                // cell takes one interval to come back, so this bounds it from above.
                let used = burst.saturating_sub(remaining);
                Decision::Allowed {
                    limit: burst,
                    remaining,
                    reset: ceil_secs(interval.saturating_mul(used)),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(entry.limiter.clock().now());
                let retry_after = ceil_secs(wait).max(1);
                // GCRA: the bucket is full (burst - 1) intervals after the moment the
                // next single request becomes conforming.
                let full = wait.saturating_add(interval.saturating_mul(burst.saturating_sub(1)));
                Decision::Limited {
                    limit: burst,
                    retry_after,
                    reset: ceil_secs(full).max(retry_after),
                }
            }
        }
    }

    /// Drops the state of keys idle long enough for their bucket to be full again, then, if
    /// more than `max_keys` remain, that of the least recently used. Background work: it
    /// visits every entry.
    pub fn prune(&self) {
        let now = self.now_millis();
        self.entries.retain(|_, entry| !entry.is_idle(now));
        let excess = self.entries.len().saturating_sub(self.max_keys);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<(u64, Arc<str>)> = self
            .entries
            .iter()
            .map(|e| (e.value().last_used.load(Ordering::Relaxed), e.key().clone()))
            .collect();
        by_age.select_nth_unstable_by_key(excess - 1, |(used, _)| *used);
        for (_, key) in &by_age[..excess] {
            self.entries.remove(key);
        }
    }

    /// Keys whose state is held after a prune (tests, diagnostics).
    pub fn held_keys(&self) -> u64 {
        self.prune();
        self.entries.len() as u64
    }

    /// Finds the key's limiter for `limit`, creating or replacing it when needed.
    fn entry(&self, key_id: &Arc<str>, limit: RateLimit, now: u64) -> Arc<Entry> {
        // Hot path: a borrowed lookup under one shard's read lock, no allocation.
        if let Some(entry) = self.entries.get(&**key_id) {
            if entry.limit == limit {
                return entry.value().clone();
            }
        }
        // Miss or edited limit: decided under the shard's write lock, so two first
        // requests of one key never end up with different limiters.
        match self.entries.entry(key_id.clone()) {
            MapEntry::Occupied(mut held) => {
                if held.get().limit != limit {
                    held.insert(Arc::new(Entry::new(limit, now)));
                }
                held.get().clone()
            }
            MapEntry::Vacant(free) => free.insert(Arc::new(Entry::new(limit, now))).clone(),
        }
    }

    fn now_millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Whole seconds in `d`, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn limit(per_second: u32, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    fn key(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn burst_counts_down_then_limits_then_refills() {
        let limits = RateLimits::new(100);
        let k = key("k1");
        let l = limit(20, 3);
        for expected in [2, 1, 0] {
            match limits.check(&k, l) {
                Decision::Allowed {
                    limit, remaining, ..
                } => {
                    assert_eq!(limit, 3);
                    assert_eq!(remaining, expected);
                }
                other => panic!("expected Allowed, got {other:?}"),
            }
        }
        match limits.check(&k, l) {
            Decision::Limited {
                limit, retry_after, ..
            } => {
                assert_eq!(limit, 3);
                assert!(retry_after >= 1);
            }
            other => panic!("expected Limited, got {other:?}"),
        }
        // One request comes back every 50ms at 20/s.
        thread::sleep(Duration::from_millis(80));
        assert!(matches!(
            limits.check(&k, l),
            Decision::Allowed { remaining: 0, .. }
        ));
    }

    #[test]
    fn keys_are_limited_independently() {
        let limits = RateLimits::new(100);
        let (a, b) = (key("a"), key("b"));
        let l = limit(1, 2);
        assert!(matches!(limits.check(&a, l), Decision::Allowed { .. }));
        assert!(matches!(limits.check(&a, l), Decision::Allowed { .. }));
        assert!(matches!(limits.check(&a, l), Decision::Limited { .. }));
        assert!(matches!(
            limits.check(&b, l),
            Decision::Allowed { remaining: 1, .. }
        ));
        assert!(matches!(limits.check(&a, l), Decision::Limited { .. }));
    }

    #[test]
    fn changed_limit_takes_effect_on_next_check() {
        let limits = RateLimits::new(100);
        let k = key("k");
        assert!(matches!(
            limits.check(&k, limit(1, 1)),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            limits.check(&k, limit(1, 1)),
            Decision::Limited { limit: 1, .. }
        ));
        // Raised limit: a fresh bucket of the new size.
        assert_eq!(
            limits.check(&k, limit(1, 5)),
            Decision::Allowed {
                limit: 5,
                remaining: 4,
                reset: 1
            }
        );
        assert!(matches!(
            limits.check(&k, limit(1, 5)),
            Decision::Allowed { remaining: 3, .. }
        ));
        // Lowered limit also replaces it.
        assert!(matches!(
            limits.check(&k, limit(1, 2)),
            Decision::Allowed {
                limit: 2,
                remaining: 1,
                ..
            }
        ));
        assert_eq!(limits.held_keys(), 1);
    }

    #[test]
    fn reset_grows_with_usage_and_covers_retry_after() {
        let limits = RateLimits::new(100);
        let k = key("k");
        let l = limit(1, 4);
        let mut resets = Vec::new();
        for _ in 0..4 {
            match limits.check(&k, l) {
                Decision::Allowed { reset, .. } => resets.push(reset),
                other => panic!("expected Allowed, got {other:?}"),
            }
        }
        // Full bucket before the first request: one used request takes 1s to return.
        assert_eq!(resets, vec![1, 2, 3, 4]);
        match limits.check(&k, l) {
            Decision::Limited {
                retry_after, reset, ..
            } => {
                assert_eq!(retry_after, 1);
                assert!(reset >= retry_after);
                assert_eq!(reset, 4);
            }
            other => panic!("expected Limited, got {other:?}"),
        }
    }

    #[test]
    fn held_keys_are_bounded_by_max_keys_keeping_the_recently_used() {
        let limits = RateLimits::new(10_000);
        // One request comes back per second: nothing refills while the test runs.
        let l = limit(1, 10);
        for i in 0..100_000 {
            let k: Arc<str> = Arc::from(format!("key-{i}"));
            limits.check(&k, l);
        }
        thread::sleep(Duration::from_millis(5));
        let recent = key("recent");
        limits.check(&recent, l);
        limits.check(&recent, l);
        assert_eq!(limits.held_keys(), 10_000);
        // Used last, so it kept its state: this is its third request.
        match limits.check(&recent, l) {
            Decision::Allowed { remaining, .. } => assert_eq!(remaining, 7),
            other => panic!("expected Allowed, got {other:?}"),
        }
    }

    #[test]
    fn idle_keys_expire_once_their_bucket_would_be_full() {
        let limits = RateLimits::new(1_000);
        let l = limit(1000, 1); // refills in 1ms, rounded up to the 1s minimum
        for i in 0..50 {
            limits.check(&key(&format!("k{i}")), l);
        }
        assert_eq!(limits.held_keys(), 50);
        thread::sleep(Duration::from_millis(1_050));
        assert_eq!(limits.held_keys(), 0);
    }

    #[test]
    fn concurrent_checks_on_one_key_allow_exactly_the_burst() {
        let limits = Arc::new(RateLimits::new(100));
        let k = key("shared");
        let l = limit(1, 100);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let limits = Arc::clone(&limits);
                let k = Arc::clone(&k);
                thread::spawn(move || {
                    (0..1000)
                        .filter(|_| matches!(limits.check(&k, l), Decision::Allowed { .. }))
                        .count()
                })
            })
            .collect();
        let allowed: usize = handles
            .into_iter()
            .map(|h| h.join().expect("thread panicked"))
            .sum();
        // 4000 checks run well within the 1s it takes one request to come back.
        assert_eq!(allowed, 100);
    }
}
