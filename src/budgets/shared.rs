//! `rate_limit.shared: true`: one GCRA budget per key across every instance on the Redis store,
//! without a store round trip per request.
//!
//! # How
//! Each instance leases small slices of a key's budget from Redis (a script runs GCRA on the
//! server's clock and grants up to [`slice_size`] requests at once, counted as used there) and
//! spends them locally with one compare-and-swap per request (`Slice`). When a slice runs low
//! the next one is leased in the background, so requests rarely wait; a request that finds the
//! slice empty waits for the one lease in flight. Unused requests of a slice expire after
//! [`SLICE_TTL_MS`].
//!
//! # The bound
//! Every admitted request was granted by the script first, and the script grants no more than
//! GCRA allows, so the requests granted over any span `t` stay within `per_second * t + burst`.
//! What is admitted within a span is what was granted in it plus what instances still held in
//! slices when it began (one slice each at most, spent within [`SLICE_TTL_MS`] or void): at
//! most `per_second * t + burst + instances * slice_size`, and exactly the GCRA bound from a
//! key's first request. Slices otherwise only make instances admit less (requests leased and
//! left to expire), never more. The one exception is a Redis outage, when each instance falls
//! back to its own per-instance limiter (`Fallback`; warned once,
//! `scopegate_rate_limit_fallback` = 1).
//!
//! # What it never does
//! It never calls the store for a request that its slice can serve, and never waits on a store
//! it knows is down (one probe per `lease::PROBE_EVERY_MS`).

use super::{Decision, RateLimits};
use crate::budgets::slice::{Fallback, Slice, Take};
use crate::model::RateLimit;
use crate::store::{KeyStore, RateLease};
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Unused requests of a slice stop counting this long after it was leased (milliseconds):
/// a slice holds at most a tenth of a second's rate, so a live instance spends it well within.
pub const SLICE_TTL_MS: u64 = 500;
/// Instances a key's traffic is expected to spread over; a slice is at most a
/// `1 / (2 * EXPECTED_INSTANCES)` share of the burst, so every instance can hold one and half
/// the burst stays unleased.
pub const EXPECTED_INSTANCES: u32 = 4;
/// The largest slice, however generous the limit: one lease per thousand requests is cheap.
const MAX_SLICE: u32 = 1_000;
/// Leases one waiting request makes before it is refused (see `lease_then_take`).
const LEASE_ATTEMPTS: usize = 3;
/// Entries idle this long (and with nothing leased) are dropped by [`SharedRateLimits::prune`].
const IDLE_MS: u64 = 10_000;

/// Requests leased at once for `limit`: a tenth of a second's rate, at most a share of the burst
/// (see [`EXPECTED_INSTANCES`]), at least 1.
pub fn slice_size(limit: RateLimit) -> u32 {
    let by_rate = limit.per_second / 10;
    let by_burst = limit.burst / (2 * EXPECTED_INSTANCES);
    by_rate.min(by_burst).clamp(1, MAX_SLICE)
}

/// Shared rate limits; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct SharedRateLimits {
    inner: Arc<Inner>,
}

opaque_debug!(SharedRateLimits);

struct Inner {
    /// `rate_limit.shared` with a Redis store; off: every check goes to the local limiter.
    enabled: AtomicBool,
    store: Arc<dyn KeyStore>,
    /// Keyed by authenticated key ids only, so a fast (seeded) hash is safe here.
    entries: DashMap<Arc<str>, Arc<Entry>, foldhash::fast::RandomState>,
    fallback: Arc<Fallback>,
    epoch: Instant,
}

/// One key's slice and what the store last said about the shared bucket.
struct Entry {
    limit: RateLimit,
    want: u32,
    slice: Slice,
    /// The shared bucket's remaining requests at the last lease (for `RateLimit-Remaining`).
    store_remaining: AtomicU32,
    /// When the shared bucket is full again, as of the last lease (ms on the clock).
    full_at: AtomicU64,
    last_used: AtomicU64,
}

impl Entry {
    fn new(limit: RateLimit, now: u64) -> Entry {
        Entry {
            limit,
            want: slice_size(limit),
            slice: Slice::default(),
            store_remaining: AtomicU32::new(limit.burst),
            full_at: AtomicU64::new(now),
            last_used: AtomicU64::new(now),
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.limit.per_second.max(1)
    }

    fn allowed(&self, left: u64, now: u64) -> Decision {
        let left = u32::try_from(left).unwrap_or(u32::MAX);
        let remaining = left.saturating_add(self.store_remaining.load(Ordering::Relaxed));
        let full_in = self.full_at.load(Ordering::Relaxed).saturating_sub(now);
        Decision::Allowed {
            limit: self.limit.burst,
            remaining: remaining.min(self.limit.burst),
            reset: full_in.div_ceil(1_000).max(1),
        }
    }

    fn limited(&self, until: u64, now: u64) -> Decision {
        let wait = Duration::from_millis(until.saturating_sub(now));
        let retry_after = ceil_secs(wait).max(1);
        let full = wait + self.interval() * self.limit.burst.saturating_sub(1);
        Decision::Limited {
            limit: self.limit.burst,
            retry_after,
            reset: ceil_secs(full).max(retry_after),
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl SharedRateLimits {
    pub fn new(store: Arc<dyn KeyStore>, fallback: Arc<Fallback>, enabled: bool) -> Self {
        SharedRateLimits {
            inner: Arc::new(Inner {
                enabled: AtomicBool::new(enabled),
                store,
                entries: DashMap::default(),
                fallback,
                epoch: Instant::now(),
            }),
        }
    }

    /// Turns sharing on or off (config reload).
    pub fn set_enabled(&self, enabled: bool) {
        self.inner.enabled.store(enabled, Ordering::Release);
    }

    /// Counts one request of `key_id` against `limit`: against the shared budget when sharing
    /// is on and the store answers, against this instance's `local` limiter otherwise.
    pub async fn check(&self, local: &RateLimits, key_id: &Arc<str>, limit: RateLimit) -> Decision {
        if !self.inner.enabled.load(Ordering::Acquire) {
            return local.check(key_id, limit);
        }
        let now = self.inner.now();
        let entry = self.inner.entry(key_id, limit, now);
        entry.last_used.store(now, Ordering::Relaxed);
        match entry.slice.take(now) {
            Take::Got(left) => {
                if left <= u64::from(entry.want / 2) {
                    self.prefetch(key_id, &entry);
                }
                entry.allowed(left, now)
            }
            Take::Blocked(until) => entry.limited(until, now),
            // Boxed: the slow path's state would otherwise size every request's future.
            Take::Empty => Box::pin(self.lease_then_take(local, key_id, &entry)).await,
        }
    }

    /// Leases the next slice in the background unless a lease is already out.
    fn prefetch(&self, key_id: &Arc<str>, entry: &Arc<Entry>) {
        if self.inner.fallback.active() {
            return;
        }
        entry.slice.prefetch(|| {
            let (inner, key_id, entry) = (self.inner.clone(), key_id.clone(), entry.clone());
            async move {
                // A failure is noted by `lease`; the next request that finds the slice empty
                // falls back.
                let _ = inner.lease(&key_id, &entry).await;
            }
        });
    }

    /// The slice was empty: one caller leases, the others wait for it and take from the refill.
    async fn lease_then_take(
        &self,
        local: &RateLimits,
        key_id: &Arc<str>,
        entry: &Arc<Entry>,
    ) -> Decision {
        if !self.inner.fallback.try_store() {
            return local.check(key_id, entry.limit);
        }
        // Requests on the fast path may spend a fresh slice before this one gets to it: lease
        // again a few times rather than refuse while the shared budget has room.
        for _ in 0..LEASE_ATTEMPTS {
            let held = entry.slice.fetch.clone().lock_owned().await;
            let now = self.inner.now();
            match entry.slice.take(now) {
                Take::Got(left) => return entry.allowed(left, now),
                Take::Blocked(until) => return entry.limited(until, now),
                Take::Empty => {}
            }
            // Detached from the request: dropped here (its client hung up), the request leaves
            // the task to fill the slice with what the store granted, for the next requests.
            let lease = tokio::spawn({
                let (inner, key_id, entry) = (self.inner.clone(), key_id.clone(), entry.clone());
                async move {
                    let _held = held;
                    inner.lease(&key_id, &entry).await
                }
            });
            if !matches!(lease.await, Ok(Ok(()))) {
                return local.check(key_id, entry.limit);
            }
            let now = self.inner.now();
            match entry.slice.take(now) {
                Take::Got(left) => return entry.allowed(left, now),
                Take::Blocked(until) => return entry.limited(until, now),
                Take::Empty => {}
            }
        }
        let now = self.inner.now();
        let interval = u64::try_from(entry.interval().as_millis()).unwrap_or(1);
        entry.limited(now + interval.max(1), now)
    }

    /// Drops entries idle for `IDLE_MS` whose slice has expired (nothing leased is lost:
    /// expired requests are void anyway). Background work.
    pub fn prune(&self) {
        let now = self.inner.now();
        self.inner.entries.retain(|_, e| {
            now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < IDLE_MS
                || now < e.slice.expires()
        });
    }
}

impl Inner {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The key's entry for `limit`, replaced when the limit was edited.
    fn entry(&self, key_id: &Arc<str>, limit: RateLimit, now: u64) -> Arc<Entry> {
        if let Some(e) = self.entries.get(&**key_id) {
            if e.limit == limit {
                return e.value().clone();
            }
        }
        let fresh = Arc::new(Entry::new(limit, now));
        let mut held = self.entries.entry(key_id.clone()).or_insert(fresh.clone());
        if held.limit != limit {
            *held = fresh;
        }
        held.value().clone()
    }

    /// One lease from the store into `entry`'s slice. The caller holds the slice's lock.
    async fn lease(&self, key_id: &str, entry: &Entry) -> Result<(), ()> {
        match self.store.lease_rate(key_id, entry.limit, entry.want).await {
            Ok(lease) => {
                self.fallback.recovered();
                self.apply(entry, lease);
                Ok(())
            }
            Err(error) => {
                self.fallback.failed("a shared rate-limit lease", &error);
                Err(())
            }
        }
    }

    fn apply(&self, entry: &Entry, lease: RateLease) {
        let now = self.now();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        entry
            .store_remaining
            .store(lease.remaining, Ordering::Relaxed);
        entry
            .full_at
            .store(now.saturating_add(millis(lease.reset)), Ordering::Relaxed);
        if lease.granted == 0 {
            // Ask again once a whole slice has come back, not one request: under overload an
            // instance then leases a few times a second instead of once per interval, and the
            // requests in between are refused without a round trip. Nothing is lost: GCRA
            // keeps what comes back (up to the burst) for whoever leases next.
            let refill = entry.interval() * entry.want.saturating_sub(1);
            let wait = millis(lease.wait + refill).max(1);
            entry.slice.block(now.saturating_add(wait));
        } else {
            entry
                .slice
                .fill(u64::from(lease.granted), now, SLICE_TTL_MS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_a_tenth_of_a_second_and_a_share_of_the_burst() {
        let limit = |per_second, burst| RateLimit { per_second, burst };
        assert_eq!(slice_size(limit(50, 100)), 5);
        assert_eq!(slice_size(limit(1_000, 40)), 5);
        assert_eq!(slice_size(limit(1, 1)), 1);
        assert_eq!(slice_size(limit(1_000_000, 1_000_000)), MAX_SLICE);
    }
}
