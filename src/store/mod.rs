//! Where apps and keys live: the [`KeyStore`] trait and its two implementations,
//! Redis (shared by many gateway instances) and an embedded file store (one process, no server).
//!
//! The store knows nothing of caching or HTTP. It reports changes made by other instances as
//! [`Invalidation`] events; the cache decides what to do with them.

mod embedded;
mod redis;

pub use self::embedded::EmbeddedStore;
pub use self::redis::RedisStore;

use crate::model::{App, KeyRecord, UnixSeconds};
use async_trait::async_trait;
use tokio::sync::mpsc;

/// A failure of the store itself (as opposed to "not found", which is `Ok(None)` / `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A record could not be decoded or encoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A unique name is already taken (app names, case-insensitively).
    #[error("name already in use")]
    Conflict,
    /// The record an operation refers to does not exist (e.g. a key for a missing app).
    #[error("not found")]
    NotFound,
}

/// A change made through some gateway instance that cached copies must drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    Key(String),
    App(String),
    /// The change feed was interrupted: events may have been missed, so drop everything.
    All,
}

/// Persistent storage of apps and keys.
///
/// Writes that change what a key may do (`update_app`, `delete_app`, `delete_key`) announce an
/// [`Invalidation`] to other instances sharing the store.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new app. `Conflict` when another app has the same name (case-insensitive).
    async fn create_app(&self, app: &App) -> Result<(), StoreError>;
    async fn get_app(&self, id: &str) -> Result<Option<App>, StoreError>;
    /// All apps, oldest first (ties by id).
    async fn list_apps(&self) -> Result<Vec<App>, StoreError>;
    /// Replaces an existing app. `NotFound` if it does not exist, `Conflict` on a taken name.
    async fn update_app(&self, app: &App) -> Result<(), StoreError>;
    /// Deletes an app and all its keys. `Ok(false)` if it did not exist.
    async fn delete_app(&self, id: &str) -> Result<bool, StoreError>;

    /// Stores a new key. `NotFound` if its app does not exist.
    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// One key, with `last_used_at` filled in.
    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Keys of one app, or all keys; oldest first (ties by id); with `last_used_at`.
    async fn list_keys(&self, app_id: Option<&str>) -> Result<Vec<KeyRecord>, StoreError>;
    /// Deletes a key. `Ok(false)` if it did not exist.
    async fn delete_key(&self, id: &str) -> Result<bool, StoreError>;

    /// Records last use times in one batch. Unknown ids are ignored; a time never moves backwards.
    async fn touch_keys(&self, uses: &[(String, UnixSeconds)]) -> Result<(), StoreError>;

    /// Cheap liveness check (readiness probes).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Changes made by other instances, if the store is shared. Called once, at start-up.
    /// The store keeps the feed alive itself and sends [`Invalidation::All`] after any gap.
    fn invalidations(&self) -> Option<mpsc::Receiver<Invalidation>>;
}
