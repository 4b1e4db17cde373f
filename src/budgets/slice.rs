//! Slices of a shared budget, leased from the store and spent locally: the machinery under
//! the shared rate limits and the quotas beside it.
//!
//! # What this module owns
//! `Slice`: one key's leased requests on this instance (an atomic count), when they stop
//! counting, until when the store said nothing is left, and the lock that keeps to one lease
//! request per key at a time. [`Fallback`]: whether the store is unreachable, so shared limits
//! are enforced per instance; its gauge, and the one warning per outage.
//!
//! # What it never does
//! It never calls the store itself and never blocks: taking a request from a slice is one
//! compare-and-swap. Callers lease (once per slice, not per request) and decide what an empty
//! slice means.

use crate::metrics::Metrics;
use crate::store::StoreError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// While the store is unreachable, one lease is tried per this long (milliseconds); every other
/// request goes straight to the per-instance fallback instead of waiting on a dead store.
pub(crate) const PROBE_EVERY_MS: u64 = 500;

/// What taking one request from a slice found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// Taken; this many are left in the slice.
    Got(u64),
    /// The slice is empty or expired: lease more.
    Empty,
    /// The store said nothing is left until `until` (milliseconds on the caller's clock).
    Blocked(u64),
}

/// One key's slice of a shared budget on this instance. Times are milliseconds on whatever
/// clock the owner passes in (so tests can inject one).
#[derive(Debug, Default)]
pub(crate) struct Slice {
    tokens: AtomicU64,
    /// After this the tokens left no longer count (unused leases expire quickly, so a busy
    /// instance cannot sit on budget another instance needs).
    expires: AtomicU64,
    blocked_until: AtomicU64,
    /// Held while a lease request is out; requests that find the slice empty queue on it and
    /// usually find it refilled.
    pub(crate) fetch: Arc<tokio::sync::Mutex<()>>,
}

impl Slice {
    /// Runs `lease` in a task of its own, unless a lease is already out; the slice's fetch
    /// lock is held until it ends, so requests that find the slice empty wait for its refill.
    pub(crate) fn prefetch<F, Fut>(&self, lease: F)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Ok(guard) = self.fetch.clone().try_lock_owned() else {
            return;
        };
        let lease = lease();
        tokio::spawn(async move {
            let _held = guard;
            lease.await;
        });
    }

    /// Takes one request if the slice holds one. What the slice still holds is spent before a
    /// block is looked at: a prefetch may learn that the budget is spent while requests of the
    /// slice are left, and those were granted.
    pub(crate) fn take(&self, now: u64) -> Take {
        if now < self.expires.load(Ordering::Acquire) {
            let mut held = self.tokens.load(Ordering::Acquire);
            while held > 0 {
                match self.tokens.compare_exchange_weak(
                    held,
                    held - 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Take::Got(held - 1),
                    Err(now_held) => held = now_held,
                }
            }
        }
        let blocked = self.blocked_until.load(Ordering::Acquire);
        if now < blocked {
            Take::Blocked(blocked)
        } else {
            Take::Empty
        }
    }

    /// Adds a lease of `granted` requests, valid for `ttl` from `now`; what an expired slice
    /// still held is void (it was counted in the store when leased, so dropping it only ever
    /// under-admits). Returns the void amount, for owners that give it back.
    pub(crate) fn fill(&self, granted: u64, now: u64, ttl: u64) -> u64 {
        let expired = now >= self.expires.load(Ordering::Acquire);
        let void = if expired {
            self.tokens.swap(granted, Ordering::AcqRel)
        } else {
            self.tokens.fetch_add(granted, Ordering::AcqRel);
            0
        };
        self.expires
            .store(now.saturating_add(ttl), Ordering::Release);
        self.blocked_until.store(0, Ordering::Release);
        void
    }

    /// Nothing is left before `until`: no lease is asked for until then.
    pub(crate) fn block(&self, until: u64) {
        self.blocked_until.store(until, Ordering::Release);
    }

    /// Empties an expired slice; what it held (to give back). 0 while the slice is live.
    pub(crate) fn drain_expired(&self, now: u64) -> u64 {
        if now < self.expires.load(Ordering::Acquire) {
            return 0;
        }
        self.tokens.swap(0, Ordering::AcqRel)
    }

    /// Requests the slice holds that still count at `now`.
    pub(crate) fn held(&self, now: u64) -> u64 {
        if now < self.expires.load(Ordering::Acquire) {
            self.tokens.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// Requests the slice holds, counting or not (expired ones are to be given back).
    pub(crate) fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Acquire)
    }

    /// When the slice stops counting.
    pub(crate) fn expires(&self) -> u64 {
        self.expires.load(Ordering::Acquire)
    }
}

/// Whether shared limits are enforced per instance because the store is unreachable.
pub struct Fallback {
    active: AtomicBool,
    /// While active: no lease is tried before this (milliseconds, monotonic).
    next_probe: AtomicU64,
    metrics: Arc<Metrics>,
    epoch: std::time::Instant,
}

opaque_debug!(Fallback);

impl Fallback {
    pub fn new(metrics: Arc<Metrics>) -> Fallback {
        Fallback {
            active: AtomicBool::new(false),
            next_probe: AtomicU64::new(0),
            metrics,
            epoch: std::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether to ask the store now: always while it answers; during an outage, for one
    /// caller per [`PROBE_EVERY_MS`].
    pub(crate) fn try_store(&self) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return true;
        }
        let now = self.now();
        let due = self.next_probe.load(Ordering::Acquire);
        now >= due
            && self
                .next_probe
                .compare_exchange(
                    due,
                    now + PROBE_EVERY_MS,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// A lease failed: from now on limits are per instance. Warns once per outage.
    pub(crate) fn failed(&self, what: &'static str, error: &StoreError) {
        self.next_probe
            .store(self.now() + PROBE_EVERY_MS, Ordering::Release);
        if !self.active.swap(true, Ordering::AcqRel) {
            self.metrics.shared_limits_fallback(true);
            tracing::warn!(%error, during = what,
                "the store is unreachable: shared rate limits and quotas are enforced per instance until it answers");
        }
    }

    /// A lease succeeded: shared limits apply again.
    pub(crate) fn recovered(&self) {
        if self.active.swap(false, Ordering::AcqRel) {
            self.metrics.shared_limits_fallback(false);
            tracing::info!("the store answers again: shared rate limits and quotas apply");
        }
    }

    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_gives_what_it_was_leased_until_it_expires() {
        let slice = Slice::default();
        assert_eq!(slice.take(0), Take::Empty);
        assert_eq!(slice.fill(2, 0, 100), 0);
        assert_eq!(slice.take(10), Take::Got(1));
        assert_eq!(slice.take(10), Take::Got(0));
        assert_eq!(slice.take(10), Take::Empty);
        slice.fill(3, 20, 100);
        assert_eq!(slice.take(119), Take::Got(2));
        // Expired: the two left are void, and given back once.
        assert_eq!(slice.take(120), Take::Empty);
        assert_eq!(slice.drain_expired(120), 2);
        assert_eq!(slice.drain_expired(120), 0);
        slice.block(500);
        assert_eq!(slice.take(499), Take::Blocked(500));
        assert_eq!(slice.take(500), Take::Empty);
        // Requests still held are spent before a block counts.
        slice.fill(1, 300, 1_000);
        slice.block(900);
        assert_eq!(slice.take(301), Take::Got(0));
        assert_eq!(slice.take(301), Take::Blocked(900));
        assert_eq!(slice.fill(1, 200, 1_000), 0);
        assert_eq!(slice.take(201), Take::Got(0));
    }
}
