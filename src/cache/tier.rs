//! One kind of cached record (keys, or apps): what the store had, and what it did not have, in
//! two separately bounded moka caches, guarded by [`Generations`].
//!
//! Keeping "no such id" apart means a flood of made-up ids can only evict other made-up ids,
//! never a good key. Every entry carries the generation its fill saw before reading the store;
//! an entry whose generation is no longer current is neither served nor handed to the requests
//! that waited on its fill.

use super::generation::{Generations, Stripe};
use crate::store::StoreError;
use moka::future::Cache;
use moka::Expiry;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long "no such key/app" is remembered: long enough to blunt a flood of random ids,
/// short enough that nothing legitimate waits on it.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Fills of one id that may lose a race with an invalidation before the lookup gives up on the
/// cache and answers from one more, uncached, store read.
const FILL_ATTEMPTS: usize = 3;

/// A record as read from the store, with the generation seen before the read.
struct Filled<T> {
    value: Arc<T>,
    generation: u64,
}

/// Why a fill put nothing in the found cache (shared with every request waiting on it).
#[derive(Debug)]
enum Unfilled {
    /// The store has no such id; the generation seen before the read.
    Absent(u64),
    Store(StoreError),
}

/// Per-entry lifetime: the configured ttl, capped at [`NEGATIVE_TTL`] for absent ids. The ttl is
/// read at insertion, so a reloaded `cache.ttl` applies to entries cached from then on.
struct EntryExpiry {
    ttl_millis: Arc<AtomicU64>,
    negative: bool,
}

impl<V> Expiry<String, V> for EntryExpiry {
    fn expire_after_create(&self, _: &String, _: &V, _: Instant) -> Option<Duration> {
        let ttl = Duration::from_millis(self.ttl_millis.load(Ordering::Relaxed));
        Some(if self.negative {
            ttl.min(NEGATIVE_TTL)
        } else {
            ttl
        })
    }
}

/// How a lookup was answered.
pub(crate) struct Lookup<T> {
    pub(crate) value: Option<Arc<T>>,
    /// Answered from the cache, without a store read.
    pub(crate) hit: bool,
}

pub(crate) struct Tier<T> {
    found: Cache<String, Arc<Filled<T>>>,
    missing: Cache<String, u64>,
    generations: Generations,
}

impl<T: Send + Sync + 'static> Tier<T> {
    pub(crate) fn new(max_entries: u64, ttl_millis: &Arc<AtomicU64>) -> Tier<T> {
        let expiry = |negative| EntryExpiry {
            ttl_millis: ttl_millis.clone(),
            negative,
        };
        Tier {
            found: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(expiry(false))
                .build(),
            missing: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(expiry(true))
                .build(),
            generations: Generations::new(),
        }
    }

    /// The record with this id: from the cache when current, else from `load` (one call however
    /// many ask at once). While `live` says invalidations may be missed, a read is answered
    /// but not cached: nothing would drop it if it changed. `live` is asked on misses only, so
    /// a hit costs nothing more.
    pub(crate) async fn get<F, Fut>(
        &self,
        id: &str,
        live: impl Fn() -> bool,
        load: F,
    ) -> Result<Lookup<T>, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<T>, StoreError>>,
    {
        let stripe = Generations::stripe(id);
        if let Some(hit) = self.cached(id, stripe).await {
            return Ok(Lookup {
                value: hit,
                hit: true,
            });
        }
        for _ in 0..FILL_ATTEMPTS {
            if !live() {
                break;
            }
            // Boxed: a miss is rare, and moka's fill state would size every lookup's future.
            if let Some(value) = Box::pin(self.fill(id, stripe, &load)).await? {
                return Ok(Lookup { value, hit: false });
            }
        }
        // Not live, or invalidations keep arriving for this stripe: a read made now is at least
        // as new as every invalidation seen, but another may follow unseen, so it is not cached.
        let value = Box::pin(load()).await?.map(Arc::new);
        Ok(Lookup { value, hit: false })
    }

    /// A current entry (`Some(None)`: known absent), or `None` when the store must be asked.
    async fn cached(&self, id: &str, stripe: Stripe) -> Option<Option<Arc<T>>> {
        let current = self.generations.current(stripe);
        if let Some(entry) = self.found.get(id).await {
            if entry.generation == current {
                return Some(Some(entry.value.clone()));
            }
            self.found.invalidate(id).await;
        }
        match self.missing.get(id).await {
            Some(generation) if generation == current => Some(None),
            _ => None,
        }
    }

    /// One coalesced store read. `Ok(None)`: the read raced an invalidation; try again.
    async fn fill<F, Fut>(
        &self,
        id: &str,
        stripe: Stripe,
        load: &F,
    ) -> Result<Option<Option<Arc<T>>>, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<T>, StoreError>>,
    {
        let generations = &self.generations;
        let filled = self
            .found
            .try_get_with(id.to_owned(), async move {
                let generation = generations.current(stripe);
                match load().await {
                    Ok(Some(value)) => Ok(Arc::new(Filled {
                        value: Arc::new(value),
                        generation,
                    })),
                    Ok(None) => Err(Unfilled::Absent(generation)),
                    Err(e) => Err(Unfilled::Store(e)),
                }
            })
            .await;
        let current = self.generations.current(stripe);
        match filled {
            Ok(entry) if entry.generation == current => Ok(Some(Some(entry.value.clone()))),
            Ok(_) => {
                self.found.invalidate(id).await;
                Ok(None)
            }
            Err(e) => match &*e {
                Unfilled::Absent(generation) if *generation == current => {
                    self.missing.insert(id.to_owned(), *generation).await;
                    Ok(Some(None))
                }
                Unfilled::Absent(_) => Ok(None),
                Unfilled::Store(e) => Err(unshare(e)),
            },
        }
    }

    /// The id's current generation: it changes whenever an invalidation of the id (or of
    /// everything) arrives.
    pub(crate) fn generation(&self, id: &str) -> u64 {
        self.generations.current(Generations::stripe(id))
    }

    /// Drops the id's entries, and any fill of it in flight, from now on.
    pub(crate) async fn invalidate(&self, id: &str) {
        self.generations.bump(id);
        self.found.invalidate(id).await;
        self.missing.invalidate(id).await;
    }

    /// Drops every entry, and every fill in flight, from now on.
    pub(crate) fn invalidate_all(&self) {
        self.generations.bump_all();
        self.found.invalidate_all();
        self.missing.invalidate_all();
    }

    /// (found, missing) entries held, after pending evictions run.
    pub(crate) async fn entry_counts(&self) -> (u64, u64) {
        self.found.run_pending_tasks().await;
        self.missing.run_pending_tasks().await;
        (self.found.entry_count(), self.missing.entry_count())
    }
}

fn unshare(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::Conflict => StoreError::Conflict,
        StoreError::NotFound => StoreError::NotFound,
        StoreError::VersionMismatch => StoreError::VersionMismatch,
        StoreError::Revoked => StoreError::Revoked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Semaphore;

    fn tier(max: u64) -> Arc<Tier<String>> {
        Arc::new(Tier::new(max, &Arc::new(AtomicU64::new(30_000))))
    }

    /// A store whose replies can be held back: each read takes the value current when the read
    /// starts, then waits for a permit before answering (a reply delayed on the wire).
    struct SlowStore {
        value: std::sync::Mutex<Option<String>>,
        permits: Semaphore,
        reads: AtomicUsize,
    }

    impl SlowStore {
        fn new(value: Option<&str>, permits: usize) -> Arc<SlowStore> {
            Arc::new(SlowStore {
                value: std::sync::Mutex::new(value.map(str::to_owned)),
                permits: Semaphore::new(permits),
                reads: AtomicUsize::new(0),
            })
        }

        fn set(&self, value: Option<&str>) {
            *self.value.lock().expect("lock") = value.map(str::to_owned);
        }

        async fn read(&self) -> Result<Option<String>, StoreError> {
            let seen = self.value.lock().expect("lock").clone();
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.permits.acquire().await.expect("open").forget();
            Ok(seen)
        }
    }

    async fn lookup(tier: &Tier<String>, store: &Arc<SlowStore>, id: &str) -> Option<String> {
        let store = store.clone();
        let found = tier
            .get(
                id,
                || true,
                move || {
                    let store = store.clone();
                    async move { store.read().await }
                },
            )
            .await
            .expect("lookup");
        found.value.map(|v| (*v).clone())
    }

    /// Starts a lookup whose store read has begun (its reply held back), plus one waiting on it.
    async fn lookups_in_flight(
        tier: &Arc<Tier<String>>,
        store: &Arc<SlowStore>,
    ) -> [tokio::task::JoinHandle<Option<String>>; 2] {
        let spawn = || {
            let (tier, store) = (tier.clone(), store.clone());
            tokio::spawn(async move { lookup(&tier, &store, "k1").await })
        };
        let first = spawn();
        while store.reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let waiter = spawn();
        tokio::task::yield_now().await;
        [first, waiter]
    }

    #[tokio::test]
    async fn a_fill_that_raced_an_invalidation_is_not_served_nor_handed_to_waiters() {
        let tier = tier(100);
        let store = SlowStore::new(Some("granted"), 0);
        let [first, waiter] = lookups_in_flight(&tier, &store).await;
        // The write lands and its invalidation arrives while the read's reply is on the wire.
        store.set(None);
        tier.invalidate("k1").await;
        store.permits.add_permits(10);
        assert_eq!(first.await.expect("task"), None, "stale fill served");
        assert_eq!(
            waiter.await.expect("task"),
            None,
            "stale fill handed to a waiter"
        );
        assert_eq!(lookup(&tier, &store, "k1").await, None, "stale fill cached");
    }

    #[tokio::test]
    async fn a_fill_that_raced_a_drop_everything_is_not_served() {
        let tier = tier(100);
        let store = SlowStore::new(Some("old scopes"), 0);
        let [first, waiter] = lookups_in_flight(&tier, &store).await;
        store.set(Some("new scopes"));
        tier.invalidate_all();
        store.permits.add_permits(10);
        assert_eq!(first.await.expect("task").as_deref(), Some("new scopes"));
        assert_eq!(waiter.await.expect("task").as_deref(), Some("new scopes"));
    }

    #[tokio::test]
    async fn an_absent_fill_that_raced_a_create_is_not_remembered() {
        let tier = tier(100);
        let store = SlowStore::new(None, 0);
        let [first, _] = lookups_in_flight(&tier, &store).await;
        store.set(Some("created"));
        tier.invalidate("k1").await;
        store.permits.add_permits(10);
        assert_eq!(first.await.expect("task").as_deref(), Some("created"));
    }

    #[tokio::test]
    async fn a_current_entry_is_served_without_a_store_read() {
        let tier = tier(100);
        let store = SlowStore::new(Some("v"), 100);
        assert_eq!(lookup(&tier, &store, "k1").await.as_deref(), Some("v"));
        assert_eq!(lookup(&tier, &store, "k1").await.as_deref(), Some("v"));
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn reads_while_not_live_are_answered_but_not_cached() {
        let tier = tier(100);
        let store = SlowStore::new(Some("v"), 100);
        let read = |live| {
            let store = store.clone();
            let tier = tier.clone();
            async move {
                let found = tier
                    .get(
                        "k1",
                        || live,
                        move || {
                            let store = store.clone();
                            async move { store.read().await }
                        },
                    )
                    .await
                    .expect("lookup");
                found.value.map(|v| (*v).clone())
            }
        };
        assert_eq!(read(false).await.as_deref(), Some("v"));
        assert_eq!(read(false).await.as_deref(), Some("v"));
        assert_eq!(
            store.reads.load(Ordering::SeqCst),
            2,
            "cached while not live"
        );
        assert_eq!(read(true).await.as_deref(), Some("v"));
        assert_eq!(
            read(false).await.as_deref(),
            Some("v"),
            "a cached entry still serves"
        );
        assert_eq!(store.reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn unknown_ids_never_evict_found_entries() {
        let tier = tier(50);
        let good = SlowStore::new(Some("good"), 1_000_000);
        let none = SlowStore::new(None, 1_000_000);
        assert_eq!(lookup(&tier, &good, "good").await.as_deref(), Some("good"));
        for i in 0..5_000 {
            assert_eq!(lookup(&tier, &none, &format!("made-up-{i}")).await, None);
        }
        let (found, missing) = tier.entry_counts().await;
        assert!(missing <= 50, "absent ids bounded: {missing}");
        assert_eq!(found, 1);
        assert_eq!(lookup(&tier, &good, "good").await.as_deref(), Some("good"));
        assert_eq!(
            good.reads.load(Ordering::SeqCst),
            1,
            "the good key was evicted"
        );
    }
}
