//! The key and app cache in front of the store (moka).
//!
//! A cached key or app is served without touching the store. Concurrent misses for one id cost
//! one store read; unknown ids are remembered briefly so a flood of random keys cannot hammer the
//! store. Invalidations from other instances (via the store's change feed) drop entries at once.

use crate::metrics::Metrics;
use crate::model::{App, KeyRecord, RateLimit, UnixSeconds};
use crate::store::{Invalidation, KeyStore, StoreError};
use http::HeaderValue;
use moka::future::Cache;
use moka::Expiry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long "no such key/app" is remembered: long enough to blunt a flood of random ids,
/// short enough that nothing legitimate waits on it.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// What the request path needs of a key.
#[derive(Debug)]
pub struct CachedKey {
    pub id: Arc<str>,
    /// `id` as the `X-Scopegate-Key` value, built once per cache fill rather than per request
    /// (`None` if the stored id is not valid header text).
    pub id_header: Option<HeaderValue>,
    pub app_id: Arc<str>,
    /// `None` when the stored digest is corrupt: such a key never verifies.
    pub digest: Option<[u8; 32]>,
    pub expires_at: Option<UnixSeconds>,
}

/// What the request path needs of an app.
#[derive(Debug)]
pub struct CachedApp {
    pub id: Arc<str>,
    /// `id` as the `X-Scopegate-App` value (see [`CachedKey::id_header`]).
    pub id_header: Option<HeaderValue>,
    pub scopes: Box<[Arc<str>]>,
    pub rate_limit: Option<RateLimit>,
}

type Entry<T> = Option<Arc<T>>;

/// Keys and apps by id, positive and negative.
#[derive(Clone)]
pub struct KeyCache {
    keys: Cache<String, Entry<CachedKey>>,
    apps: Cache<String, Entry<CachedApp>>,
    store: Arc<dyn KeyStore>,
    metrics: Arc<Metrics>,
    ttl: Arc<AtomicU64>,
}

/// Per-entry lifetime: `ttl` for what the store had, [`NEGATIVE_TTL`] at most for misses.
/// The ttl is read at insertion, so a reloaded `cache.ttl` applies to entries cached from then on.
struct EntryExpiry {
    ttl_millis: Arc<AtomicU64>,
}

impl<T> Expiry<String, Entry<T>> for EntryExpiry {
    fn expire_after_create(&self, _: &String, value: &Entry<T>, _: Instant) -> Option<Duration> {
        let ttl = Duration::from_millis(self.ttl_millis.load(Ordering::Relaxed));
        Some(match value {
            Some(_) => ttl,
            None => ttl.min(NEGATIVE_TTL),
        })
    }
}

impl KeyCache {
    pub fn new(
        store: Arc<dyn KeyStore>,
        ttl: Duration,
        max_entries: u64,
        metrics: Arc<Metrics>,
    ) -> KeyCache {
        let ttl = Arc::new(AtomicU64::new(millis(ttl)));
        let expiry = || EntryExpiry {
            ttl_millis: ttl.clone(),
        };
        KeyCache {
            keys: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(expiry())
                .build(),
            apps: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(expiry())
                .build(),
            store,
            metrics,
            ttl,
        }
    }

    /// Changes how long entries cached from now on are trusted (config reload).
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl.store(millis(ttl), Ordering::Relaxed);
    }

    /// The key with this id, from the cache or (once, however many ask) the store.
    pub async fn key(&self, id: &str) -> Result<Entry<CachedKey>, StoreError> {
        if let Some(hit) = self.keys.get(id).await {
            self.metrics.key_cache(true);
            return Ok(hit);
        }
        self.metrics.key_cache(false);
        let store = &self.store;
        let entry = self
            .keys
            .try_get_with(id.to_owned(), async move {
                Ok::<_, StoreError>(store.get_key(id).await?.map(|k| Arc::new(cached_key(k))))
            })
            .await
            .map_err(unshare)?;
        Ok(entry)
    }

    /// The app with this id, from the cache or the store.
    pub async fn app(&self, id: &str) -> Result<Entry<CachedApp>, StoreError> {
        if let Some(hit) = self.apps.get(id).await {
            return Ok(hit);
        }
        let store = &self.store;
        self.apps
            .try_get_with(id.to_owned(), async move {
                Ok::<_, StoreError>(store.get_app(id).await?.map(|a| Arc::new(cached_app(a))))
            })
            .await
            .map_err(unshare)
    }

    /// Drops what an invalidation names.
    pub async fn invalidate(&self, what: &Invalidation) {
        match what {
            Invalidation::Key(id) => self.keys.invalidate(id.as_str()).await,
            Invalidation::App(id) => self.apps.invalidate(id.as_str()).await,
            Invalidation::All => {
                self.keys.invalidate_all();
                self.apps.invalidate_all();
            }
        }
    }

    /// Applies the store's change feed until it ends. Runs as a background task.
    pub fn spawn_invalidation_listener(&self) -> Option<tokio::task::JoinHandle<()>> {
        let mut feed = self.store.invalidations()?;
        let cache = self.clone();
        Some(tokio::spawn(async move {
            while let Some(event) = feed.recv().await {
                tracing::debug!(?event, "cache invalidation");
                cache.invalidate(&event).await;
            }
        }))
    }

    /// Entries currently held, after pending evictions run (for tests and diagnostics).
    pub async fn entry_count(&self) -> u64 {
        self.keys.run_pending_tasks().await;
        self.apps.run_pending_tasks().await;
        self.keys.entry_count() + self.apps.entry_count()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unshare(e: Arc<StoreError>) -> StoreError {
    match &*e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::Conflict => StoreError::Conflict,
        StoreError::NotFound => StoreError::NotFound,
    }
}

fn cached_key(k: KeyRecord) -> CachedKey {
    CachedKey {
        digest: decode_digest(&k.secret_hash),
        id_header: header_value(&k.id),
        id: Arc::from(k.id),
        app_id: Arc::from(k.app_id),
        expires_at: k.expires_at,
    }
}

fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

fn decode_digest(hex_digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut out).ok()?;
    Some(out)
}

fn cached_app(a: App) -> CachedApp {
    CachedApp {
        id_header: header_value(&a.id),
        id: Arc::from(a.id),
        scopes: a.scopes.into_iter().map(Arc::from).collect(),
        rate_limit: a.rate_limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    #[tokio::test]
    async fn a_flood_of_unknown_keys_is_bounded_and_each_id_read_once() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
        let metrics = Metrics::new();
        let cache = KeyCache::new(store, Duration::from_secs(30), 1_000, metrics.clone());
        for i in 0..20_000 {
            let entry = cache.key(&format!("nosuchkey{i}")).await.expect("lookup");
            assert!(entry.is_none());
        }
        assert!(cache.entry_count().await <= 1_000, "bounded by max_entries");
        // A repeated unknown id is answered from the negative entry, not the store.
        let text = metrics.render();
        assert!(
            text.contains(r#"scopegate_key_cache_total{result="miss"} 20000"#),
            "{text}"
        );
        cache.key("again").await.expect("lookup");
        cache.key("again").await.expect("lookup");
        let text = metrics.render();
        assert!(
            text.contains(r#"scopegate_key_cache_total{result="hit"} 1"#),
            "{text}"
        );
    }
}
