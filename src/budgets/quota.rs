//! Per-key quotas (`quota: {per_day, per_month}`, an app may override the config's default):
//! requests per UTC calendar day and month, counted across every instance sharing the store.
//!
//! # How
//! Counts live in the store, one per key per window (Redis, or the embedded file, where they
//! survive a restart). Each instance leases slices of the quota like it does a shared rate
//! budget ([`crate::budgets::slice`]): a lease counts up to [`SLICE`] requests as used at once, the
//! instance admits them with one compare-and-swap each, and leases the next slice in the
//! background when the slice runs low. Near the end of a window a lease grants only an eighth
//! of what is left, and once no more than a slice is left exactly 1
//! ([`crate::store::quota_grant`]): each request is then one atomic store step. Requests of a
//! slice unused for [`SLICE_TTL_MS`] are given back by [`Quotas::upkeep`].
//!
//! # Exact at the boundary
//! Every admitted request was counted in the store before it was admitted, and the store never
//! counts past a limit, so across all instances a window admits at most its limit. A refusal
//! is as exact: the store keeps a record of every instance entry that holds leased, unspent
//! requests (set by the step that leases, dropped by the step that gives back or, once its
//! last request is spent near the end, by a release step), and a step that finds the count at
//! the limit while another holds some answers how long they may be held. The request then
//! waits, asking again every [`POLL_MS`], until they are spent or given back (at most
//! [`HOLD_MS`]: a record runs out so a dead instance is not waited for), and is refused only
//! when nothing is left and nobody holds any.
//!
//! Every store step runs in a task of its own, holding the slice's lock: a request dropped
//! while its lease is out (its client hung up) leaves the reply to be applied all the same, so
//! what the store counted lands in the slice and is spent or given back, never lost.
//!
//! # A store outage
//! Each instance then admits on its own count, up to the limit minus the count in its last
//! answer from the store, so a window may be passed by at most the sum, over instances, of what
//! each last saw left. Those requests are added to the store's count once it answers.
//!
//! # What it never does
//! It never refuses a request without a count to show for it, and a refused request consumes
//! nothing. It never calls the store for a request its slice can serve.

use crate::budgets::slice::{Fallback, Slice, Take};
use crate::model::{now_unix, Quota, QuotaWindows};
use crate::store::{KeyStore, QuotaAsk, QuotaLease, StoreError};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Requests counted per lease at most (fewer near a window's end).
pub const SLICE: u64 = 50;
/// A slice's unused requests go back to the store this long after its lease (milliseconds).
pub const SLICE_TTL_MS: u64 = 2_000;
/// A key found used up asks the store again after this long (milliseconds): others' unused
/// slices come back, and a raised quota takes effect.
const RECHECK_MS: u64 = 1_000;
/// Entries idle this long, with nothing to give back or report, are dropped by upkeep.
const IDLE_MS: u64 = 60_000;
/// How long the store's record of a holder lasts (milliseconds): a slice's life, a round of
/// upkeep that gives it back, and a margin for a slow store. Also the longest a request waits
/// for quota held elsewhere.
pub const HOLD_MS: u64 = SLICE_TTL_MS + 2_000;
/// A request told that quota is held elsewhere asks the store again this often (milliseconds).
pub const POLL_MS: u64 = 25;

/// Which window a refusal is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Day,
    Month,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Day => "day",
            Window::Month => "month",
        }
    }
}

/// A request refused because a window of its key's quota is used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("quota exceeded: {limit} requests per {} used up; retry in {retry_after} s", .window.as_str())]
pub struct QuotaExceeded {
    pub window: Window,
    pub limit: u64,
    /// Whole seconds until the window ends (at least 1).
    pub retry_after: u64,
}

/// The tightest window after an admitted request, for the `X-Quota-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaStatus {
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds until that window ends.
    pub reset: u64,
}

/// Per-key quotas; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Quotas {
    inner: Arc<Inner>,
}

opaque_debug!(Quotas);

struct Inner {
    /// The config's `quota:`, for keys whose app sets none.
    default: ArcSwap<Option<Quota>>,
    store: Arc<dyn KeyStore>,
    /// Keyed by authenticated key ids only, so a fast (seeded) hash is safe here.
    entries: DashMap<Arc<str>, Arc<Entry>, foldhash::fast::RandomState>,
    /// Entries replaced (a new window, an edited quota) with counts still to settle: what they
    /// leased and did not spend goes back to their windows' counts (a new day in the same month
    /// still shares the month's count).
    retired: std::sync::Mutex<Vec<(Arc<str>, Arc<Entry>)>>,
    fallback: Arc<Fallback>,
    /// This instance, in holder names (random: instances share the store's records).
    instance: u64,
    /// Entries made so far, in holder names (an edited quota makes a new entry of a key).
    made: AtomicU64,
}

/// One key's slice in the current windows, and the store's counts at the last lease.
struct Entry {
    quota: Quota,
    windows: QuotaWindows,
    slice: Slice,
    /// This entry in the store's records of holders.
    holder: Box<str>,
    /// Whether the store's last step left a record of this entry holding leased requests.
    recorded: AtomicBool,
    /// The last step left no more than a slice: no prefetch (it would strand requests another
    /// instance may be waiting for), and the record is released once the slice is spent.
    near_end: AtomicBool,
    day_used: AtomicU64,
    month_used: AtomicU64,
    /// Totals over the entry's life, sent whole on each step (see [`QuotaAsk`]): admitted while
    /// the store was unreachable, leased and unused (expired slices), granted; and the first
    /// two as the store last confirmed them.
    owed: AtomicU64,
    owed_applied: AtomicU64,
    returned: AtomicU64,
    returned_applied: AtomicU64,
    received: AtomicU64,
    /// A step failed: the store may have counted a grant this entry never learned of.
    in_doubt: AtomicBool,
    last_used: AtomicU64,
}

/// Now, in unix milliseconds (the clock everything here runs on, injected in tests).
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Entry {
    fn new(quota: Quota, now: u64, holder: Box<str>) -> Entry {
        Entry {
            quota,
            windows: QuotaWindows::at(now / 1_000, quota),
            slice: Slice::default(),
            holder,
            recorded: AtomicBool::new(false),
            near_end: AtomicBool::new(false),
            day_used: AtomicU64::new(0),
            month_used: AtomicU64::new(0),
            owed: AtomicU64::new(0),
            owed_applied: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            returned_applied: AtomicU64::new(0),
            received: AtomicU64::new(0),
            in_doubt: AtomicBool::new(false),
            last_used: AtomicU64::new(now),
        }
    }

    /// Requests that have been counted or admitted in each window: (day, month).
    fn counted(&self) -> (u64, u64) {
        let owed = self.owed_pending();
        (
            self.day_used.load(Ordering::Relaxed) + owed,
            self.month_used.load(Ordering::Relaxed) + owed,
        )
    }

    /// The tightest window after admitting with `left` still leased here.
    fn status(&self, left: u64, now: u64) -> QuotaStatus {
        let (day, month) = self.counted();
        let w = &self.windows;
        let windows = [
            w.per_day.map(|l| (l, day, w.day_ends)),
            w.per_month.map(|l| (l, month, w.month_ends)),
        ];
        let tightest = windows
            .into_iter()
            .flatten()
            .map(|(limit, used, ends)| QuotaStatus {
                limit,
                remaining: (limit + left).saturating_sub(used).min(limit),
                reset: ends.saturating_sub(now / 1_000),
            })
            .min_by_key(|s| s.remaining);
        tightest.unwrap_or(QuotaStatus {
            limit: 0,
            remaining: 0,
            reset: 0,
        })
    }

    /// The refusal for a used-up window; the month when both are (it ends later).
    fn exceeded(&self, now: u64) -> QuotaExceeded {
        let (_, month) = self.counted();
        let w = &self.windows;
        let (window, limit, ends) = match (w.per_day, w.per_month) {
            (_, Some(l)) if month >= l => (Window::Month, l, w.month_ends),
            (Some(l), _) => (Window::Day, l, w.day_ends),
            (None, l) => (Window::Month, l.unwrap_or(0), w.month_ends),
        };
        QuotaExceeded {
            window,
            limit,
            retry_after: ends.saturating_sub(now / 1_000).max(1),
        }
    }

    /// Whether the last known counts leave room for one more request.
    fn has_room(&self) -> bool {
        let (day, month) = self.counted();
        self.quota.per_day.is_none_or(|l| day < l) && self.quota.per_month.is_none_or(|l| month < l)
    }

    /// Admitted on this instance's own count and not yet added to the store's.
    fn owed_pending(&self) -> u64 {
        let owed = self.owed.load(Ordering::Relaxed);
        owed.saturating_sub(self.owed_applied.load(Ordering::Relaxed))
    }

    /// Something the store has not confirmed: owed, to give back, or a step's unknown outcome.
    fn is_pending(&self) -> bool {
        self.owed_pending() > 0
            || self.returned.load(Ordering::Relaxed)
                != self.returned_applied.load(Ordering::Relaxed)
            || self.in_doubt.load(Ordering::Relaxed)
    }

    /// Nothing owed to the store, nothing to give back, no record of holding any.
    fn is_settled(&self) -> bool {
        !self.is_pending() && !self.recorded.load(Ordering::Relaxed)
    }

    fn record(&self, lease: QuotaLease) {
        self.day_used.store(lease.day_used, Ordering::Relaxed);
        self.month_used.store(lease.month_used, Ordering::Relaxed);
        let left = [
            self.windows
                .per_day
                .map(|l| l.saturating_sub(lease.day_used)),
            self.windows
                .per_month
                .map(|l| l.saturating_sub(lease.month_used)),
        ]
        .into_iter()
        .flatten()
        .min();
        self.near_end
            .store(left.is_some_and(|l| l < SLICE), Ordering::Relaxed);
    }
}

impl Quotas {
    pub fn new(store: Arc<dyn KeyStore>, fallback: Arc<Fallback>, default: Option<Quota>) -> Self {
        Quotas {
            inner: Arc::new(Inner {
                default: ArcSwap::from_pointee(default),
                store,
                entries: DashMap::default(),
                retired: std::sync::Mutex::default(),
                fallback,
                instance: rand::random(),
                made: AtomicU64::new(0),
            }),
        }
    }

    /// The config's default (reload).
    pub fn set_default(&self, default: Option<Quota>) {
        self.inner.default.store(Arc::new(default));
    }

    /// What applies to a key of an app with `app_quota`.
    pub fn effective(&self, app_quota: Option<Quota>) -> Option<Quota> {
        app_quota
            .or(**self.inner.default.load())
            .filter(Quota::is_limited)
    }

    /// Counts one request of `key_id` against its quota, if it has one.
    pub async fn check(
        &self,
        key_id: &Arc<str>,
        app_quota: Option<Quota>,
    ) -> Result<Option<QuotaStatus>, QuotaExceeded> {
        match self.effective(app_quota) {
            None => Ok(None),
            Some(quota) => self.check_at(key_id, quota, now_millis()).await.map(Some),
        }
    }

    /// [`check`](Self::check) at `now` (unix milliseconds).
    pub async fn check_at(
        &self,
        key_id: &Arc<str>,
        quota: Quota,
        now: u64,
    ) -> Result<QuotaStatus, QuotaExceeded> {
        let entry = self.inner.entry(key_id, quota, now);
        entry.last_used.store(now, Ordering::Relaxed);
        match entry.slice.take(now) {
            Take::Got(left) => Ok(self.took(key_id, &entry, left, now)),
            Take::Blocked(_) => Err(entry.exceeded(now)),
            // Boxed: the slow path's state would otherwise size every request's future.
            Take::Empty => Box::pin(self.lease_then_take(key_id, &entry, now)).await,
        }
    }

    /// A request was taken from the slice, `left` remain: lease ahead far from the end; near it,
    /// tell the store once the slice is spent, so nobody waits for requests this entry no
    /// longer holds.
    fn took(&self, key_id: &Arc<str>, entry: &Arc<Entry>, left: u64, now: u64) -> QuotaStatus {
        if entry.near_end.load(Ordering::Relaxed) {
            if left == 0 {
                self.release(key_id, entry, now);
            }
        } else if left <= SLICE / 2 {
            self.prefetch(key_id, entry, now);
        }
        entry.status(left, now)
    }

    fn prefetch(&self, key_id: &Arc<str>, entry: &Arc<Entry>, now: u64) {
        if self.inner.fallback.active() {
            return;
        }
        entry.slice.prefetch(|| {
            let (inner, key_id, entry) = (self.inner.clone(), key_id.clone(), entry.clone());
            async move {
                let _ = inner.step(&key_id, &entry, now, SLICE).await;
            }
        });
    }

    /// Drops the store's record of `entry` once its slice is spent (after any step in flight,
    /// which may have refilled it).
    fn release(&self, key_id: &Arc<str>, entry: &Arc<Entry>, now: u64) {
        if self.inner.fallback.active() || !entry.recorded.load(Ordering::Relaxed) {
            return;
        }
        let (inner, key_id, entry) = (self.inner.clone(), key_id.clone(), entry.clone());
        tokio::spawn(async move {
            let _held = entry.slice.fetch.clone().lock_owned().await;
            if entry.recorded.load(Ordering::Relaxed) && entry.slice.held(now) == 0 {
                let _ = inner.step(&key_id, &entry, now, 0).await;
            }
        });
    }

    /// The slice was empty: lease (one request at a time per entry; the others wait on the
    /// slice's lock and usually find it refilled). Quota held by other instances is waited for,
    /// not refused.
    async fn lease_then_take(
        &self,
        key_id: &Arc<str>,
        entry: &Arc<Entry>,
        start: u64,
    ) -> Result<QuotaStatus, QuotaExceeded> {
        let waiting = tokio::time::Instant::now();
        loop {
            let waited = u64::try_from(waiting.elapsed().as_millis()).unwrap_or(u64::MAX);
            let now = start.saturating_add(waited);
            if !self.inner.fallback.try_store() {
                return admit_locally(entry, now);
            }
            let held = entry.slice.fetch.clone().lock_owned().await;
            match entry.slice.take(now) {
                Take::Got(left) => return Ok(self.took(key_id, entry, left, now)),
                Take::Blocked(_) => return Err(entry.exceeded(now)),
                Take::Empty => {}
            }
            // Detached from the request: dropped here (its client hung up), the request leaves
            // the task to apply the reply, so what the store counted is spent or given back.
            let step = tokio::spawn({
                let (inner, key_id, entry) = (self.inner.clone(), key_id.clone(), entry.clone());
                async move {
                    let _held = held;
                    inner.step(&key_id, &entry, now, SLICE).await
                }
            });
            let Ok(Ok(lease)) = step.await else {
                // The store failed (noted by `step`): admit on this instance's own count.
                return admit_locally(entry, now);
            };
            match entry.slice.take(now) {
                Take::Got(left) => return Ok(self.took(key_id, entry, left, now)),
                Take::Blocked(_) => return Err(entry.exceeded(now)),
                Take::Empty => {}
            }
            // Quota is left: held elsewhere (ask again shortly), or granted and spent by
            // requests on the fast path first (ask again now). A wait is bounded like a record.
            if waited >= HOLD_MS {
                return Err(entry.exceeded(now));
            }
            if lease.granted == 0 {
                let pause = lease.held_elsewhere_ms.clamp(1, POLL_MS);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }

    /// Gives back expired slices, adds what was admitted during an outage, drops idle
    /// entries. Background work (every second); `now` in unix milliseconds.
    pub async fn upkeep_at(&self, now: u64) {
        let entries: Vec<(Arc<str>, Arc<Entry>)> = self
            .inner
            .entries
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (key_id, entry) in entries {
            self.inner.settle(&key_id, &entry, now).await;
        }
        let retired = std::mem::take(&mut *self.inner.retired());
        for (key_id, entry) in retired {
            self.inner.settle(&key_id, &entry, u64::MAX).await;
            if !entry.is_settled() {
                self.inner.retired().push((key_id, entry));
            }
        }
        self.inner.entries.retain(|_, e| {
            let idle = now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= IDLE_MS;
            !(idle && e.is_settled() && now >= e.slice.expires())
        });
    }

    pub async fn upkeep(&self) {
        self.upkeep_at(now_millis()).await;
    }

    /// Gives every slice back (shutdown): counts then say what was admitted.
    pub async fn give_back_all(&self) {
        self.upkeep_at(u64::MAX).await;
    }

    /// The store's counts of `key_id` in `windows` (day, month), for the admin API.
    pub async fn used(
        &self,
        key_id: &str,
        windows: &QuotaWindows,
    ) -> Result<(u64, u64), StoreError> {
        self.inner.store.quota_used(key_id, windows).await
    }
}

/// The store is unreachable: admit on this instance's own count.
fn admit_locally(entry: &Entry, now: u64) -> Result<QuotaStatus, QuotaExceeded> {
    if !entry.has_room() {
        return Err(entry.exceeded(now));
    }
    entry.owed.fetch_add(1, Ordering::Relaxed);
    Ok(entry.status(0, now))
}

impl Inner {
    /// The key's entry for `quota` in the windows of `now`; replaced when the quota was edited
    /// or a window ended (counts are per window, so a new day starts from the store's 0).
    fn entry(&self, key_id: &Arc<str>, quota: Quota, now: u64) -> Arc<Entry> {
        let current = |e: &Entry| e.quota == quota && e.windows.current_at(now / 1_000);
        if let Some(e) = self.entries.get(&**key_id) {
            if current(e.value()) {
                return e.value().clone();
            }
        }
        let mut held = self
            .entries
            .entry(key_id.clone())
            .or_insert_with(|| Arc::new(Entry::new(quota, now, self.holder())));
        if !current(held.value()) {
            let fresh = Arc::new(Entry::new(quota, now, self.holder()));
            let old = std::mem::replace(&mut *held, fresh);
            self.retired().push((key_id.clone(), old));
        }
        held.value().clone()
    }

    /// A name for a new entry in the store's records of holders.
    fn holder(&self) -> Box<str> {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}:{n}", self.instance).into_boxed_str()
    }

    /// The retired entries (a poisoned lock only means a panic elsewhere mid-push: the list
    /// is still a list).
    fn retired(&self) -> std::sync::MutexGuard<'_, Vec<(Arc<str>, Arc<Entry>)>> {
        self.retired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One store step for `entry` (the caller holds the slice's lock): gives back what expired
    /// unused, leases up to `want` into the slice, and records whether the entry still holds
    /// leased requests. Refusals are blocked for a while only when nobody else holds any.
    async fn step(
        &self,
        key_id: &str,
        entry: &Entry,
        now: u64,
        want: u64,
    ) -> Result<QuotaLease, StoreError> {
        let drained = entry.slice.drain_expired(now);
        let returned = entry.returned.fetch_add(drained, Ordering::Relaxed) + drained;
        let owed = entry.owed.load(Ordering::Relaxed);
        let holds = entry.slice.held(now) > 0;
        let ask = QuotaAsk {
            want,
            returned,
            received: entry.received.load(Ordering::Relaxed),
            owed,
            holder: &entry.holder,
            holds,
            hold_ms: HOLD_MS,
        };
        match self.store.lease_quota(key_id, &entry.windows, ask).await {
            Ok(lease) => {
                self.fallback.recovered();
                entry.returned_applied.store(returned, Ordering::Relaxed);
                entry.owed_applied.store(owed, Ordering::Relaxed);
                entry.in_doubt.store(false, Ordering::Relaxed);
                entry.received.fetch_add(lease.granted, Ordering::Relaxed);
                entry.record(lease);
                let holding = lease.granted > 0 || holds;
                entry
                    .recorded
                    .store(holding && lease.records_holders, Ordering::Relaxed);
                if lease.granted > 0 {
                    let void = entry.slice.fill(lease.granted, now, SLICE_TTL_MS);
                    entry.returned.fetch_add(void, Ordering::Relaxed);
                } else if want > 0 && lease.held_elsewhere_ms == 0 {
                    let ends = entry.exceeded(now).retry_after.saturating_mul(1_000);
                    entry.slice.block(now.saturating_add(ends.min(RECHECK_MS)));
                }
                Ok(lease)
            }
            Err(error) => {
                // Applied or not, the next step settles it: it sends the same totals.
                entry.in_doubt.store(true, Ordering::Relaxed);
                self.fallback.failed("a quota lease", &error);
                Err(error)
            }
        }
    }

    /// One step without a lease when the store is owed something, has something to take back,
    /// or records the entry as holding what it no longer holds. During an outage each call is
    /// one of the probes (at most one per `lease::PROBE_EVERY_MS`), so counts settle and the
    /// fallback ends even when no request comes to lease. A step in flight settles for itself.
    async fn settle(&self, key_id: &str, entry: &Entry, now: u64) {
        let Ok(_held) = entry.slice.fetch.clone().try_lock_owned() else {
            return;
        };
        let expired = now >= entry.slice.expires() && entry.slice.tokens() > 0;
        let stale_record = entry.recorded.load(Ordering::Relaxed) && entry.slice.held(now) == 0;
        if (expired || entry.is_pending() || stale_record) && self.fallback.try_store() {
            let _ = self.step(key_id, entry, now, 0).await;
        }
    }
}

/// The windows of `quota` now, for callers that show them (admin API).
pub fn windows_now(quota: Quota) -> QuotaWindows {
    QuotaWindows::at(now_unix(), quota)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::model::utc_day_number;
    use crate::store::EmbeddedStore;

    fn quotas(dir: &std::path::Path) -> (Quotas, Arc<dyn KeyStore>) {
        let store: Arc<dyn KeyStore> = Arc::new(EmbeddedStore::open(dir).expect("store"));
        let fallback = Arc::new(Fallback::new(Metrics::new()));
        (Quotas::new(store.clone(), fallback, None), store)
    }

    /// Unix milliseconds at `date` (`YYYY-MM-DD`) plus `secs` seconds.
    fn at(date: &str, secs: u64) -> u64 {
        (utc_day_number(date).expect("date") * 86_400 + secs) * 1_000
    }

    #[tokio::test]
    async fn a_used_up_day_comes_back_at_utc_midnight() {
        let dir = tempfile::tempdir().expect("dir");
        let (quotas, store) = quotas(dir.path());
        let key: Arc<str> = Arc::from("k1");
        let quota = Quota {
            per_day: Some(2),
            per_month: Some(3),
        };
        let late = at("2026-11-30", 86_398);
        let first = quotas.check_at(&key, quota, late).await.expect("first");
        assert_eq!((first.limit, first.remaining, first.reset), (2, 1, 2));
        quotas.check_at(&key, quota, late).await.expect("second");
        let refused = quotas.check_at(&key, quota, late + 1_000).await;
        assert_eq!(
            refused,
            Err(QuotaExceeded {
                window: Window::Day,
                limit: 2,
                retry_after: 1
            })
        );
        // A refusal consumed nothing.
        let windows = QuotaWindows::at(late / 1_000, quota);
        assert_eq!(
            store.quota_used("k1", &windows).await.expect("used"),
            (2, 2)
        );
        // Midnight, and a new month: both windows start over.
        let next = at("2026-12-01", 0);
        let status = quotas.check_at(&key, quota, next).await.expect("new day");
        assert_eq!((status.limit, status.remaining), (2, 1));
        quotas.check_at(&key, quota, next).await.expect("new day");
        assert!(quotas.check_at(&key, quota, next).await.is_err());
    }

    #[tokio::test]
    async fn a_used_up_month_is_retried_at_the_month_end_not_the_day_end() {
        let dir = tempfile::tempdir().expect("dir");
        let (quotas, _) = quotas(dir.path());
        let key: Arc<str> = Arc::from("k2");
        let quota = Quota {
            per_day: Some(10),
            per_month: Some(2),
        };
        let day1 = at("2026-12-30", 0);
        quotas.check_at(&key, quota, day1).await.expect("one");
        // Another day, the same month: the month's count carries over.
        let day2 = at("2026-12-31", 43_200);
        quotas.check_at(&key, quota, day2).await.expect("two");
        let refused = quotas
            .check_at(&key, quota, day2)
            .await
            .expect_err("month used up");
        assert_eq!(refused.window, Window::Month);
        assert_eq!(refused.retry_after, 43_200);
        assert!(quotas
            .check_at(&key, quota, at("2027-01-01", 0))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn an_edited_quota_gives_the_old_slice_back() {
        let dir = tempfile::tempdir().expect("dir");
        let (quotas, store) = quotas(dir.path());
        let key: Arc<str> = Arc::from("k4");
        let before = Quota {
            per_day: Some(1_000),
            per_month: None,
        };
        let now = at("2026-12-01", 100);
        quotas.check_at(&key, before, now).await.expect("one");
        let raised = Quota {
            per_day: Some(2_000),
            per_month: None,
        };
        quotas.check_at(&key, raised, now + 1).await.expect("two");
        // Both entries' slices expire; the retired one goes back whole, the live one too.
        quotas.upkeep_at(now + 1 + SLICE_TTL_MS).await;
        let windows = QuotaWindows::at(now / 1_000, raised);
        assert_eq!(
            store.quota_used("k4", &windows).await.expect("used"),
            (2, 2)
        );
    }

    #[tokio::test]
    async fn a_repeated_step_applies_nothing_twice_and_a_lost_grant_goes_back() {
        let dir = tempfile::tempdir().expect("dir");
        let (_, store) = quotas(dir.path());
        let quota = Quota {
            per_day: Some(1_000),
            per_month: None,
        };
        let windows = QuotaWindows::at(at("2026-12-01", 100) / 1_000, quota);
        let ask = |want, received, returned| QuotaAsk {
            want,
            returned,
            received,
            owed: 0,
            holder: "h",
            holds: false,
            hold_ms: 1,
        };
        let step = |ask| {
            let (store, windows) = (store.clone(), windows.clone());
            async move {
                let lease = store.lease_quota("k5", &windows, ask).await.expect("step");
                (lease.granted, lease.day_used)
            }
        };
        assert_eq!(step(ask(SLICE, 0, 0)).await, (SLICE, SLICE));
        // Its answer never arrived: the next step says nothing was received, and it goes back.
        assert_eq!(step(ask(SLICE, 0, 0)).await, (SLICE, SLICE));
        // Ten given back, sent twice (the first answer lost): counted once.
        for _ in 0..2 {
            assert_eq!(step(ask(0, SLICE, 10)).await, (0, SLICE - 10));
        }
    }

    #[tokio::test]
    async fn unused_slices_go_back_to_the_store() {
        let dir = tempfile::tempdir().expect("dir");
        let (quotas, store) = quotas(dir.path());
        let key: Arc<str> = Arc::from("k3");
        let quota = Quota {
            per_day: Some(1_000),
            per_month: None,
        };
        let now = at("2026-12-01", 100);
        quotas.check_at(&key, quota, now).await.expect("one");
        let windows = QuotaWindows::at(now / 1_000, quota);
        let (leased, _) = store.quota_used("k3", &windows).await.expect("used");
        assert!(leased > 1, "a slice was leased: {leased}");
        quotas.upkeep_at(now + SLICE_TTL_MS).await;
        assert_eq!(
            store.quota_used("k3", &windows).await.expect("used"),
            (1, 1)
        );
    }
}
