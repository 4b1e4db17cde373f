//! The key and app cache in front of the store (moka).
//!
//! A cached key or app is served without touching the store. Concurrent misses for one id cost
//! one store read; unknown ids are remembered briefly so a flood of random keys cannot hammer the
//! store. Invalidations from other instances (via the store's change feed) drop entries at once,
//! and generation counters ([`tier`]) keep a fill that raced one from ever being served. While
//! the change feed is down nothing new is cached.

mod generation;
mod tier;

pub use self::tier::NEGATIVE_TTL;

use self::tier::Tier;
use crate::credentials::CredentialCache;
use crate::metrics::Metrics;
use crate::model::{App, KeyRecord, Quota, RateLimit, TokenQuota, UnixSeconds};
use crate::store::{Invalidation, KeyStore, StoreError};
use crate::usage::UseCell;
use arc_swap::ArcSwapOption;
use http::HeaderValue;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What the request path needs of a key.
#[derive(Debug)]
pub struct CachedKey {
    /// Set once the secret verified against `digest`: a keyed fast hash of it (made by the
    /// authenticator), so the next requests with the same secret skip SHA-256.
    pub verified: OnceLock<[u8; 16]>,
    /// The key's uses not yet written to the store.
    pub uses: Arc<UseCell>,
    /// The key's app as last looked up, so a request needs one cache lookup, not two.
    app: ArcSwapOption<AppHint>,
    pub id: Arc<str>,
    /// `id` as the `X-Scopegate-Key` value, built once per cache fill rather than per request
    /// (`None` if the stored id is not valid header text).
    pub id_header: Option<HeaderValue>,
    pub app_id: Arc<str>,
    /// `None` when the stored digest is corrupt: such a key never verifies.
    pub digest: Option<[u8; 32]>,
    pub expires_at: Option<UnixSeconds>,
    pub revoked: bool,
    pub disabled: bool,
    /// Networks the key may be used from; `None`: anywhere. An entry that does not parse
    /// matches nothing (it never widens the list).
    pub allowed_ips: Option<Arc<[(IpAddr, u8)]>>,
}

/// An app as a key entry remembers it: valid while the app's generation is unchanged (no
/// invalidation of it arrived) and the app was read from the store less than a ttl ago.
#[derive(Debug)]
struct AppHint {
    app: Arc<CachedApp>,
    generation: u64,
}

/// What the request path needs of an app.
#[derive(Debug)]
pub struct CachedApp {
    /// When it was read from the store: it is trusted for one ttl from then.
    fetched: Instant,
    pub id: Arc<str>,
    /// `id` as the `X-Scopegate-App` value (see [`CachedKey::id_header`]).
    pub id_header: Option<HeaderValue>,
    pub scopes: Box<[Arc<str>]>,
    pub rate_limit: Option<RateLimit>,
    pub quota: Option<Quota>,
    pub token_quota: Option<TokenQuota>,
    /// The app's own credentials, (upstream name, credential name); `None` for the usual app
    /// that names none, so its requests pay one check.
    pub credentials: Option<AppCredentials>,
}

/// An app's own credentials: (upstream name, credential name).
pub type AppCredentials = Box<[(Box<str>, Arc<str>)]>;

impl CachedApp {
    /// The credential the app names for `upstream`, if any.
    pub fn credential_for(&self, upstream: &str) -> Option<&Arc<str>> {
        self.credentials
            .as_deref()?
            .iter()
            .find(|(u, _)| **u == *upstream)
            .map(|(_, c)| c)
    }
}

type Entry<T> = Option<Arc<T>>;

/// Keys and apps by id, found and absent.
#[derive(Clone)]
pub struct KeyCache {
    keys: Arc<Tier<CachedKey>>,
    apps: Arc<Tier<CachedApp>>,
    store: Arc<dyn KeyStore>,
    metrics: Arc<Metrics>,
    ttl: Arc<AtomicU64>,
    /// The proxy's opened upstream credentials: dropped by the same invalidations.
    credentials: Option<Arc<CredentialCache>>,
}

opaque_debug!(KeyCache);

impl KeyCache {
    pub fn new(
        store: Arc<dyn KeyStore>,
        ttl: Duration,
        max_entries: u64,
        metrics: Arc<Metrics>,
    ) -> KeyCache {
        let ttl = Arc::new(AtomicU64::new(millis(ttl)));
        KeyCache {
            keys: Arc::new(Tier::new(max_entries, &ttl)),
            apps: Arc::new(Tier::new(max_entries, &ttl)),
            store,
            metrics,
            ttl,
            credentials: None,
        }
    }

    /// Passes credential invalidations (and "drop everything") on to `credentials`.
    pub fn with_credentials(mut self, credentials: Arc<CredentialCache>) -> KeyCache {
        self.credentials = Some(credentials);
        self
    }

    /// Changes how long entries cached from now on are trusted (config reload).
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl.store(millis(ttl), Ordering::Relaxed);
    }

    /// The key with this id, from the cache or (once, however many ask) the store.
    pub async fn key(&self, id: &str) -> Result<Entry<CachedKey>, StoreError> {
        let store = &self.store;
        let found = self
            .keys
            .get(
                id,
                || store.feed_live(),
                || async move { Ok(store.get_key(id).await?.map(cached_key)) },
            )
            .await?;
        self.metrics.key_cache(found.hit);
        Ok(found.value)
    }

    /// The app with this id, from the cache or the store.
    pub async fn app(&self, id: &str) -> Result<Entry<CachedApp>, StoreError> {
        let store = &self.store;
        let found = self
            .apps
            .get(
                id,
                || store.feed_live(),
                || async move { Ok(store.get_app(id).await?.map(cached_app)) },
            )
            .await?;
        Ok(found.value)
    }

    /// The app of a key found in the cache: remembered on the key entry, so a hit costs no
    /// second cache lookup. Invalidating the app (or everything) makes the key look it up
    /// again, as does the app's ttl running out.
    pub async fn app_of(&self, key: &CachedKey) -> Result<Entry<CachedApp>, StoreError> {
        // Read before the lookup: an invalidation arriving during it voids what is remembered.
        let generation = self.apps.generation(&key.app_id);
        if let Some(hint) = &*key.app.load() {
            let ttl = Duration::from_millis(self.ttl.load(Ordering::Relaxed));
            if hint.generation == generation && hint.app.fetched.elapsed() < ttl {
                return Ok(Some(hint.app.clone()));
            }
        }
        let app = self.app(&key.app_id).await?;
        let hint = app.clone().map(|app| Arc::new(AppHint { app, generation }));
        key.app.store(hint);
        Ok(app)
    }

    /// Drops what an invalidation names, including any fill of it already in flight.
    pub async fn invalidate(&self, what: &Invalidation) {
        match what {
            Invalidation::Key(id) => self.keys.invalidate(id).await,
            Invalidation::App(id) => self.apps.invalidate(id).await,
            Invalidation::Credential(_) => {}
            Invalidation::All => {
                self.keys.invalidate_all();
                self.apps.invalidate_all();
            }
        }
        if let Some(credentials) = &self.credentials {
            credentials.invalidate(what).await;
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

    /// Entries currently held (found and absent), after pending evictions run.
    pub async fn entry_count(&self) -> u64 {
        let (keys_found, keys_missing) = self.keys.entry_counts().await;
        let (apps_found, apps_missing) = self.apps.entry_counts().await;
        keys_found + keys_missing + apps_found + apps_missing
    }

    /// Keys held as found (not counting remembered unknown ids).
    pub async fn found_key_count(&self) -> u64 {
        self.keys.entry_counts().await.0
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn cached_key(k: KeyRecord) -> CachedKey {
    let id: Arc<str> = Arc::from(k.id);
    let app_id: Arc<str> = Arc::from(k.app_id);
    CachedKey {
        verified: OnceLock::new(),
        uses: UseCell::new(id.clone(), app_id.clone()),
        app: ArcSwapOption::empty(),
        digest: decode_digest(&k.secret_hash),
        id_header: header_value(&id),
        id,
        app_id,
        expires_at: k.expires_at,
        revoked: k.revoked_at.is_some(),
        disabled: k.disabled,
        allowed_ips: allowlist(&k.allowed_ips),
    }
}

fn allowlist(entries: &[String]) -> Option<Arc<[(IpAddr, u8)]>> {
    if entries.is_empty() {
        return None;
    }
    Some(
        entries
            .iter()
            .filter_map(|e| crate::config::values::cidr(e).ok())
            .collect(),
    )
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
        fetched: Instant::now(),
        id_header: header_value(&a.id),
        id: Arc::from(a.id),
        scopes: a.scopes.into_iter().map(Arc::from).collect(),
        rate_limit: a.rate_limit,
        quota: a.quota,
        token_quota: a.token_quota,
        credentials: (!a.credentials.is_empty()).then(|| {
            a.credentials
                .into_iter()
                .map(|(upstream, credential)| (upstream.into(), Arc::from(credential)))
                .collect()
        }),
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
