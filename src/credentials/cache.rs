//! Opened credential values in memory, for the proxy: name -> the value, read from the store
//! and opened with the master key on first use, then served without a store read or a
//! decryption until an invalidation drops it ([`Invalidation::Credential`] for the name,
//! [`Invalidation::All`] for everything; Redis: every instance's writes, embedded: this
//! process's, as each commits).
//!
//! A warm request reads a snapshot map of the values opened so far (one pointer load and one
//! hash of the name, no lock, no cache bookkeeping); the snapshot is rebuilt only when a value
//! is opened, and an entry in it serves only while no invalidation came after its fill.
//!
//! Concurrent misses for one name cost one store read (moka's `try_get_with`). A fill that
//! raced an invalidation is never kept: fills note the generation they started at, and an
//! entry from an older generation is read again. While the change feed is down nothing is
//! kept, so a value replaced meanwhile is never missed.
//!
//! A credential that is missing, or that does not open (no master key, the wrong one) is
//! remembered as such (until an invalidation of it), so the requests that need it fail at once
//! with 502 `credential_unavailable`; the first failure per name is logged with the name and
//! the reason, never a value. Uses are marked on the entry (one relaxed store) and written as
//! `last_used_at` by [`CredentialCache::flush_uses`], a background task's work.
//!
//! Plaintext lives in [`Secret`]s and in the ready header values built from them, whose bytes
//! are zeroized when the last copy (the cache's, or a request's in flight) is dropped.

use super::{open, MasterKey, Secret};
use crate::model::now_unix;
use crate::routing::CredentialFormat;
use crate::store::{Invalidation, KeyStore, StoreError};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// Credentials held at once: far more than any config or tenant list names.
const MAX_ENTRIES: u64 = 10_000;
/// Fills tried when invalidations keep racing them, before the last one is served as is.
const FILL_ATTEMPTS: usize = 3;

/// Why a request's credential cannot be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Unavailable {
    #[error("no credential by this name is stored")]
    Missing,
    #[error("no master key is configured")]
    NoMasterKey,
    #[error("the stored value does not open with this master key")]
    Sealed,
    /// The store did not answer; not remembered (the next request asks again).
    #[error("the store is unavailable")]
    Store,
}

/// What a lookup found: the value, or why there is none.
type Found = Result<Arc<Opened>, Unavailable>;

/// One credential's opened value and the header values made from it.
pub struct Opened {
    secret: Secret,
    /// Ready header values per format in use (usually one).
    ready: ArcSwap<Vec<(Arc<CredentialFormat>, HeaderValue)>>,
    used: AtomicBool,
}

opaque_debug!(Opened);

/// A cached lookup: its answer and the generation its fill started at.
#[derive(Clone)]
struct Entry {
    found: Found,
    generation: u64,
}

/// Opened values by name, each with the generation its fill started at: what a warm request
/// reads. Replaced whole when a value is opened (a handful of names, rarely).
type Hot = std::collections::HashMap<Arc<str>, (u64, Arc<Opened>), foldhash::fast::RandomState>;

/// The opened values, by credential name.
pub struct CredentialCache {
    entries: moka::future::Cache<Arc<str>, Entry>,
    hot: ArcSwap<Hot>,
    store: Arc<dyn KeyStore>,
    master_key: Option<Arc<MasterKey>>,
    /// Bumped by every invalidation: fills that started before it are not kept.
    generation: AtomicU64,
    /// Names whose failure was logged (cleared for a name when it is invalidated).
    logged: Mutex<HashSet<Arc<str>>>,
}

opaque_debug!(CredentialCache);

impl CredentialCache {
    pub fn new(store: Arc<dyn KeyStore>, master_key: Option<Arc<MasterKey>>) -> CredentialCache {
        CredentialCache {
            entries: moka::future::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .build(),
            hot: ArcSwap::from_pointee(Hot::default()),
            store,
            master_key,
            generation: AtomicU64::new(0),
            logged: Mutex::new(HashSet::new()),
        }
    }

    /// The header value for credential `name` in `format`: from memory once warm.
    pub async fn header(
        &self,
        name: &Arc<str>,
        format: &Arc<CredentialFormat>,
    ) -> Result<HeaderValue, Unavailable> {
        if let Some(value) = self.warm(name, format) {
            return Ok(value);
        }
        let (opened, generation) = self
            .opened(name)
            .await
            .inspect_err(|why| self.log(name, why))?;
        self.keep_warm(name, generation, &opened);
        if let Some(value) = ready_value(&opened, format) {
            return Ok(value);
        }
        let value = header_value(&opened.secret, format).ok_or(Unavailable::Sealed)?;
        opened.ready.rcu(|ready| {
            let mut next = (**ready).clone();
            next.push((format.clone(), value.clone()));
            next
        });
        Ok(value)
    }

    /// The header value from the warm snapshot, if it holds the name from a fill no
    /// invalidation came after (and the feed that would announce one is up).
    fn warm(&self, name: &Arc<str>, format: &Arc<CredentialFormat>) -> Option<HeaderValue> {
        let hot = self.hot.load();
        let (generation, opened) = hot.get(name)?;
        let current = *generation == self.generation.load(Ordering::SeqCst);
        if !(current && self.store.feed_live()) {
            return None;
        }
        ready_value(opened, format)
    }

    /// Puts an opened value in the warm snapshot under the generation its fill started at.
    fn keep_warm(&self, name: &Arc<str>, generation: u64, opened: &Arc<Opened>) {
        if !self.store.feed_live() || generation != self.generation.load(Ordering::SeqCst) {
            return;
        }
        let held = self.hot.load();
        if held
            .get(name)
            .is_some_and(|(g, o)| *g == generation && Arc::ptr_eq(o, opened))
        {
            return;
        }
        self.hot.rcu(|hot| {
            let mut next = (**hot).clone();
            next.insert(name.clone(), (generation, opened.clone()));
            next
        });
    }

    /// The opened value, from memory or (once, however many ask) the store, with the
    /// generation its fill started at (`u64::MAX`: kept nowhere).
    async fn opened(&self, name: &Arc<str>) -> Result<(Arc<Opened>, u64), Unavailable> {
        for _ in 0..FILL_ATTEMPTS {
            let started = self.generation.load(Ordering::SeqCst);
            if !self.store.feed_live() {
                // Changes by other instances may not reach us: read, keep nothing.
                return self.fill(name).await.map(|o| (o, u64::MAX));
            }
            let entry = match self.entries.get(&**name).await {
                Some(entry) => entry,
                None => {
                    let fill = async {
                        match self.fill(name).await {
                            // Not remembered: the next request asks the store again.
                            Err(Unavailable::Store) => Err(Unavailable::Store),
                            found => Ok(Entry {
                                found,
                                generation: started,
                            }),
                        }
                    };
                    self.entries
                        .try_get_with(name.clone(), fill)
                        .await
                        .map_err(|e| (*e).clone())?
                }
            };
            if entry.generation == self.generation.load(Ordering::SeqCst) {
                return entry.found.map(|o| (o, entry.generation));
            }
            // Filled before an invalidation that arrived since: read it again.
            self.entries.invalidate(&**name).await;
        }
        self.fill(name).await.map(|o| (o, u64::MAX))
    }

    /// One store read and decryption.
    async fn fill(&self, name: &str) -> Found {
        let Some(key) = &self.master_key else {
            return Err(Unavailable::NoMasterKey);
        };
        let record = match self.store.get_credential(name).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(Unavailable::Missing),
            Err(e) => {
                tracing::warn!(credential = name, error = %e, "cannot read an upstream credential");
                return Err(Unavailable::Store);
            }
        };
        let secret = open(key, name, &record.sealed).map_err(|_| Unavailable::Sealed)?;
        Ok(Arc::new(Opened {
            secret,
            ready: ArcSwap::from_pointee(Vec::new()),
            used: AtomicBool::new(false),
        }))
    }

    /// Drops what an invalidation names (and any fill of it in flight, by its generation).
    pub async fn invalidate(&self, what: &Invalidation) {
        match what {
            Invalidation::Credential(name) => {
                self.generation.fetch_add(1, Ordering::SeqCst);
                // Stale already (older generation); dropped so the snapshot stays small.
                self.hot.store(Arc::new(Hot::default()));
                self.entries.invalidate(name.as_str()).await;
                self.forget_logged(Some(name));
            }
            Invalidation::All => {
                self.generation.fetch_add(1, Ordering::SeqCst);
                self.hot.store(Arc::new(Hot::default()));
                self.entries.invalidate_all();
                self.forget_logged(None);
            }
            Invalidation::Key(_) | Invalidation::App(_) => {}
        }
    }

    fn forget_logged(&self, name: Option<&str>) {
        let Ok(mut logged) = self.logged.lock() else {
            return;
        };
        match name {
            Some(name) => {
                logged.remove(name);
            }
            None => logged.clear(),
        }
    }

    /// Logs a failure once per name (until the name is invalidated); never a value.
    fn log(&self, name: &Arc<str>, why: &Unavailable) {
        if *why == Unavailable::Store {
            return;
        }
        let first = self
            .logged
            .lock()
            .map(|mut logged| logged.insert(name.clone()))
            .unwrap_or(false);
        if first {
            tracing::error!(
                credential = %name,
                reason = %why,
                "upstream credential unavailable: requests that need it fail with 502 credential_unavailable"
            );
        }
    }

    /// Writes `last_used_at` for the credentials used since the last call (one store call).
    pub async fn flush_uses(&self) -> Result<(), StoreError> {
        let now = now_unix();
        let used: Vec<(String, u64)> = self
            .entries
            .iter()
            .filter_map(|(name, entry)| {
                let opened = entry.found.as_ref().ok()?;
                opened
                    .used
                    .swap(false, Ordering::Relaxed)
                    .then(|| (name.to_string(), now))
            })
            .collect();
        if used.is_empty() {
            return Ok(());
        }
        let written = self.store.touch_credentials(&used).await;
        if written.is_err() {
            // Marked again, so the next flush retries.
            for (name, _) in &used {
                if let Some(Entry {
                    found: Ok(opened), ..
                }) = self.entries.get(name.as_str()).await
                {
                    opened.used.store(true, Ordering::Relaxed);
                }
            }
        }
        written
    }
}

/// `format` filled with the value, marked sensitive, its bytes zeroized when the last copy
/// goes. `None` if the result is not header text (the value passed the control-character
/// check when it was stored, so only a damaged record gets here).
fn header_value(secret: &Secret, format: &CredentialFormat) -> Option<HeaderValue> {
    let value = secret.expose();
    let mut text = Zeroizing::new(Vec::with_capacity(
        format.prefix.len() + value.len() + format.suffix.len(),
    ));
    text.extend_from_slice(format.prefix.as_bytes());
    text.extend_from_slice(value.as_bytes());
    text.extend_from_slice(format.suffix.as_bytes());
    let mut header = HeaderValue::from_maybe_shared(Bytes::from_owner(ZeroizedBytes(text))).ok()?;
    header.set_sensitive(true);
    Some(header)
}

/// Bytes that are wiped when dropped (the owner behind a header value's shared bytes).
struct ZeroizedBytes(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Marks the value used and gives its header value in `format`, if one was made already.
fn ready_value(opened: &Opened, format: &Arc<CredentialFormat>) -> Option<HeaderValue> {
    if !opened.used.load(Ordering::Relaxed) {
        opened.used.store(true, Ordering::Relaxed);
    }
    opened
        .ready
        .load()
        .iter()
        .find(|(f, _)| Arc::ptr_eq(f, format) || f == format)
        .map(|(_, value)| value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::seal;
    use crate::model::CredentialRecord;
    use crate::store::{CredentialRecords, EmbeddedStore};

    fn record(key: &MasterKey, name: &str, value: &str) -> CredentialRecord {
        let secret = Secret::new(value.to_owned());
        CredentialRecord {
            name: name.to_owned(),
            description: String::new(),
            sealed: seal(key, name, &secret).expect("sealed"),
            masked: crate::credentials::masked(&secret),
            created_at: 1,
            created_by: "t".into(),
            updated_at: 1,
            updated_by: "t".into(),
            last_used_at: None,
        }
    }

    #[tokio::test]
    async fn a_value_is_opened_once_and_dropped_on_invalidation() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
        let key = Arc::new(MasterKey::generate());
        store
            .create_credential_audited(&record(&key, "A", "sk-one"), None)
            .await
            .expect("create");
        let cache = CredentialCache::new(store.clone(), Some(key.clone()));
        let name: Arc<str> = Arc::from("A");
        let bearer = Arc::new(CredentialFormat::bearer());
        let value = cache.header(&name, &bearer).await.expect("value");
        assert_eq!(value, "Bearer sk-one");
        assert!(value.is_sensitive());
        let raw = Arc::new(CredentialFormat::parse("{value}").expect("format"));
        assert_eq!(cache.header(&name, &raw).await.expect("raw"), "sk-one");
        assert_eq!(cache.header(&name, &bearer).await.expect("again"), value);

        let missing: Arc<str> = Arc::from("NOPE");
        assert_eq!(
            cache.header(&missing, &bearer).await,
            Err(Unavailable::Missing)
        );
        let other = CredentialCache::new(store.clone(), Some(Arc::new(MasterKey::generate())));
        assert_eq!(other.header(&name, &bearer).await, Err(Unavailable::Sealed));
        let none = CredentialCache::new(store.clone(), None);
        assert_eq!(
            none.header(&name, &bearer).await,
            Err(Unavailable::NoMasterKey)
        );

        cache.flush_uses().await.expect("flush");
        let used = store.get_credential("A").await.expect("read").expect("A");
        assert!(used.last_used_at.is_some());
        cache
            .invalidate(&Invalidation::Credential("A".into()))
            .await;
        let mut change = crate::model::CredentialChange {
            value: None,
            description: None,
            at: 2,
            by: "t".into(),
            expected_sealed: None,
            announce: true,
        };
        let next = record(&key, "A", "sk-two");
        change.value = Some((next.sealed, next.masked));
        store
            .update_credential_audited("A", &change, None)
            .await
            .expect("update");
        cache
            .invalidate(&Invalidation::Credential("A".into()))
            .await;
        assert_eq!(
            cache.header(&name, &bearer).await.expect("new"),
            "Bearer sk-two"
        );
    }
}
