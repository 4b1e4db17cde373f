//! The embedded store: apps and keys in one redb file (`scopegate.redb`) for a single gateway
//! process with no server to run.
//!
//! redb is blocking, so every operation runs on tokio's blocking pool, in exactly one
//! transaction. redb allows one write transaction at a time, which is what makes the
//! check-then-write operations (name claims, "app must exist") atomic. An admin write's audit
//! event goes into the same transaction, and each commit is announced to this process's cache
//! from the thread that committed it (see `Feed`), also when its caller is gone.
//!
//! # Rooms
//! This file holds the database, the feed and the role implementations; [`records`] the steps of
//! each app and key read and write, [`order`] the listing and expiry indexes, [`usage`],
//! [`quota`] and [`tokens`] their tables, [`audit`] the audit table, [`credentials`] the upstream credentials.

mod audit;
mod credentials;
mod order;
mod quota;
mod records;
mod tokens;
mod usage;

use self::records::*;

use super::{
    Audit, BudgetLeases, ChangeFeed, Invalidation, Keep, Ping, QuotaAsk, QuotaLease, Records,
    StoreError, TokenBatch, TokenLedger, TokenTotals, Upkeep, UsageSink, PURGE_CHUNK,
};
use crate::model::{
    now_unix, App, AppChange, AuditEvent, KeyChange, KeyRecord, Page, PageRequest, QuotaWindows,
    UnixSeconds, UsageBatch, UsageSubject,
};
use async_trait::async_trait;
use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;

const FILE_NAME: &str = "scopegate.redb";

/// App id -> app JSON.
const APPS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("apps");
/// Lowercased app name -> app id: the unique-name claims.
const APP_NAMES: TableDefinition<'_, &str, &str> = TableDefinition::new("app_names");
/// Key id -> key JSON (without its last-use time).
const KEYS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("keys");
/// Key id -> last use, unix seconds. Apart from the record because it is written in batches.
const LAST_USED: TableDefinition<'_, &str, u64> = TableDefinition::new("last_used");
// Usage counts live in tables of their own, described in [`usage`].

/// Apps and keys in a local redb database.
pub struct EmbeddedStore {
    db: Arc<Database>,
    op_timeout: std::time::Duration,
    feed: Arc<Feed>,
}

opaque_debug!(EmbeddedStore);

/// Announces each committed change to this process's cache, from the thread that committed it.
/// A write that outlives its caller (a hang-up, or `store.timeout`) still commits on the
/// blocking pool; its announcement goes with the commit, not with the caller, so a revoked key
/// never stays cached for the cache's ttl.
#[derive(Default)]
struct Feed {
    sender: std::sync::Mutex<Option<mpsc::Sender<Invalidation>>>,
}

/// Announcements queued for the cache at most; a commit waits for room past it (the listener
/// only drops cache entries, so it never falls far behind).
const FEED_CAPACITY: usize = 1024;

impl Feed {
    /// Sends `changes` to the cache's listener, if one subscribed. Runs on the blocking pool.
    fn announce(&self, changes: impl IntoIterator<Item = Invalidation>) {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(sender) = sender else { return };
        for change in changes {
            if sender.blocking_send(change).is_err() {
                return; // the listener is gone (shutdown)
            }
        }
    }
}

/// Deadline of one operation unless [`EmbeddedStore::with_timeout`] says otherwise (the
/// config's `store.timeout` default).
const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

impl EmbeddedStore {
    /// Opens (or creates) `dir/scopegate.redb`, creating `dir` if needed.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        let db = Database::create(dir.join(FILE_NAME)).map_err(db_error)?;
        // Create every table up front so read transactions never meet a missing one.
        write(&db, |tx| {
            tx.open_table(APPS).map_err(db_error)?;
            tx.open_table(APP_NAMES).map_err(db_error)?;
            tx.open_table(KEYS).map_err(db_error)?;
            tx.open_table(LAST_USED).map_err(db_error)?;
            // Added after the first release: opening an older file adds them here.
            usage::create_tables(tx)?;
            quota::create_tables(tx)?;
            tokens::create_tables(tx)?;
            tx.open_table(order::APP_ORDER).map_err(db_error)?;
            tx.open_table(order::KEY_ORDER).map_err(db_error)?;
            tx.open_table(order::APP_KEY_ORDER).map_err(db_error)?;
            tx.open_table(order::DELETED_APPS).map_err(db_error)?;
            tx.open_table(order::REVOKED).map_err(db_error)?;
            tx.open_table(audit::AUDIT).map_err(db_error)?;
            tx.open_table(order::EXPIRING).map_err(db_error)?;
            credentials::create_tables(tx)?;
            order::build_if_missing(tx)
        })?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            op_timeout: DEFAULT_TIMEOUT,
            feed: Arc::default(),
        })
    }

    /// Bounds every operation's wait (`store.timeout`): past it the caller gets `Unavailable`
    /// (e.g. while a long write holds the file), as with Redis. An operation already running
    /// on the blocking pool finishes on its own; a write that timed out may still commit.
    pub fn with_timeout(mut self, op_timeout: std::time::Duration) -> EmbeddedStore {
        self.op_timeout = op_timeout;
        self
    }

    /// Runs `op` on the blocking pool.
    async fn blocking<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        self.blocking_with_feed(move |db, _| op(db)).await
    }

    /// Runs `op` on the blocking pool with the feed, to announce what it committed.
    async fn blocking_with_feed<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Feed) -> Result<T, StoreError> + Send + 'static,
    {
        let (db, feed) = (Arc::clone(&self.db), Arc::clone(&self.feed));
        let task = tokio::task::spawn_blocking(move || op(&db, &feed));
        match tokio::time::timeout(self.op_timeout, task).await {
            Ok(done) => {
                done.map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
            }
            Err(_) => Err(StoreError::Unavailable(format!(
                "the embedded store did not answer within {:?}",
                self.op_timeout
            ))),
        }
    }
}

#[async_trait]
impl Records for EmbeddedStore {
    async fn create_app_audited(
        &self,
        app: &App,
        audit: Option<&Audit<App>>,
    ) -> Result<(), StoreError> {
        let (app, audit) = (app.clone(), audit.cloned());
        self.blocking(move |db| {
            write(db, |tx| {
                insert_app(tx, &app)?;
                audited(tx, audit.as_ref(), &app)
            })
        })
        .await
    }

    async fn get_app(&self, id: &str) -> Result<Option<App>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| read(db, |tx| read_app(tx, &id)))
            .await
    }

    async fn list_apps(
        &self,
        page: PageRequest<'_>,
        keep: Keep<'_, App>,
    ) -> Result<Page<App>, StoreError> {
        super::scan_index(page, keep, |after, n| {
            self.blocking(move |db| read(db, |tx| order::apps_after(tx, after.as_deref(), n)))
        })
        .await
    }

    async fn update_app_audited(
        &self,
        id: &str,
        change: &AppChange,
        expected_version: Option<u64>,
        audit: Option<&Audit<(App, App)>>,
    ) -> Result<(App, App), StoreError> {
        let (id, change, audit) = (id.to_owned(), change.clone(), audit.cloned());
        self.blocking_with_feed(move |db, feed| {
            let both = write(db, |tx| {
                let both = change_app(tx, &id, &change, expected_version)?;
                audited(tx, audit.as_ref(), &both)?;
                Ok(both)
            })?;
            feed.announce([Invalidation::App(id)]);
            Ok(both)
        })
        .await
    }

    async fn delete_app_audited(
        &self,
        id: &str,
        by: &str,
        expected_version: Option<u64>,
        audit: Option<&Audit<App>>,
    ) -> Result<Option<App>, StoreError> {
        let (id, by, audit) = (id.to_owned(), by.to_owned(), audit.cloned());
        self.blocking_with_feed(move |db, feed| {
            let deleted = write(db, |tx| {
                let old = remove_app(tx, &id, &by, expected_version)?;
                if let Some(old) = &old {
                    audited(tx, audit.as_ref(), old)?;
                }
                Ok(old)
            })?;
            if deleted.is_some() {
                feed.announce([Invalidation::App(id)]);
            }
            Ok(deleted)
        })
        .await
    }

    async fn update_key_audited(
        &self,
        id: &str,
        change: &KeyChange,
        audit: Option<&Audit<KeyRecord>>,
    ) -> Result<KeyRecord, StoreError> {
        let (id, change, audit) = (id.to_owned(), change.clone(), audit.cloned());
        self.blocking_with_feed(move |db, feed| {
            let key = write(db, |tx| {
                let key = change_key(tx, &id, &change)?;
                audited(tx, audit.as_ref(), &key)?;
                Ok(key)
            })?;
            feed.announce([Invalidation::Key(id)]);
            Ok(key)
        })
        .await
    }

    async fn roll_key(
        &self,
        old_id: &str,
        new: &KeyRecord,
        end: &KeyChange,
        audit: Option<&Audit<KeyRecord>>,
    ) -> Result<KeyRecord, StoreError> {
        let (old_id, new, end) = (old_id.to_owned(), new.clone(), end.clone());
        let audit = audit.cloned();
        self.blocking_with_feed(move |db, feed| {
            let old = write(db, |tx| {
                let old = change_key(tx, &old_id, &end)?;
                insert_key(tx, &new)?;
                audited(tx, audit.as_ref(), &old)?;
                Ok(old)
            })?;
            feed.announce([Invalidation::Key(old_id)]);
            Ok(old)
        })
        .await
    }

    async fn create_key_audited(
        &self,
        key: &KeyRecord,
        audit: Option<&Audit<KeyRecord>>,
    ) -> Result<(), StoreError> {
        let (key, audit) = (key.clone(), audit.cloned());
        // Not announced: nothing can be cached about a random id before it exists.
        self.blocking(move |db| {
            write(db, |tx| {
                insert_key(tx, &key)?;
                audited(tx, audit.as_ref(), &key)
            })
        })
        .await
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| read(db, |tx| read_key(tx, &id)))
            .await
    }

    async fn list_keys(
        &self,
        app_id: Option<&str>,
        page: PageRequest<'_>,
        keep: Keep<'_, KeyRecord>,
    ) -> Result<Page<KeyRecord>, StoreError> {
        let app_id = app_id.map(str::to_owned);
        super::scan_index(page, keep, |after, n| {
            let app_id = app_id.clone();
            self.blocking(move |db| {
                read(db, |tx| {
                    order::keys_after(tx, app_id.as_deref(), after.as_deref(), n)
                })
            })
        })
        .await
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let event = event.clone();
        self.blocking(move |db| write(db, |tx| audit::append(tx, &event)))
            .await
    }

    async fn list_audit(
        &self,
        page: PageRequest<'_>,
        keep: Keep<'_, AuditEvent>,
    ) -> Result<Page<AuditEvent>, StoreError> {
        super::scan_index(page, keep, |before, n| {
            self.blocking(move |db| read(db, |tx| audit::before(tx, before.as_deref(), n)))
        })
        .await
    }
}

#[async_trait]
impl Upkeep for EmbeddedStore {
    async fn revoke_keys_of_deleted_apps(&self, at: UnixSeconds) -> Result<usize, StoreError> {
        self.blocking(move |db| write(db, |tx| revoke_chunk(tx, at)))
            .await
    }

    async fn revoked_before(&self, before: UnixSeconds) -> Result<Vec<String>, StoreError> {
        self.blocking(move |db| read(db, |tx| order::revoked_before(tx, before, PURGE_CHUNK)))
            .await
    }

    async fn count_expiring(&self, from: UnixSeconds, to: UnixSeconds) -> Result<u64, StoreError> {
        self.blocking(move |db| read(db, |tx| order::count_expiring(tx, from, to)))
            .await
    }

    async fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.blocking_with_feed(move |db, feed| {
            let removed = write(db, |tx| remove_key(tx, &id))?;
            feed.announce([Invalidation::Key(id)]);
            Ok(removed)
        })
        .await
    }
}

#[async_trait]
impl UsageSink for EmbeddedStore {
    async fn touch_keys(&self, uses: &[(String, UnixSeconds)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let uses = uses.to_vec();
        self.blocking(move |db| write(db, |tx| record_uses(tx, &uses)))
            .await
    }

    async fn add_usage(&self, batches: &[UsageBatch]) -> Result<(), StoreError> {
        let now = now_unix();
        let Some(rows) = usage::row_batches(batches, now)? else {
            return Ok(());
        };
        self.blocking(move |db| write(db, |tx| usage::add_batches(tx, &rows, now)))
            .await
    }

    async fn usage(
        &self,
        subject: UsageSubject<'_>,
        dates: &[String],
    ) -> Result<Vec<u64>, StoreError> {
        if dates.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<String> = dates
            .iter()
            .map(|date| usage::usage_row(subject, date))
            .collect();
        self.blocking(move |db| read(db, |tx| usage::read_counts(tx, &rows)))
            .await
    }
}

#[async_trait]
impl BudgetLeases for EmbeddedStore {
    /// One write transaction per slice (not per request): the counts survive a restart. One
    /// process owns the file, so nobody else holds leased requests: no holder records.
    async fn lease_quota(
        &self,
        key_id: &str,
        windows: &QuotaWindows,
        ask: QuotaAsk<'_>,
    ) -> Result<QuotaLease, StoreError> {
        let (id, windows) = (key_id.to_owned(), windows.clone());
        let tally = quota::Tally::of(&ask);
        self.blocking(move |db| write(db, |tx| quota::lease(tx, &id, &windows, &tally)))
            .await
    }

    async fn quota_used(
        &self,
        key_id: &str,
        windows: &QuotaWindows,
    ) -> Result<(u64, u64), StoreError> {
        let (id, windows) = (key_id.to_owned(), windows.clone());
        self.blocking(move |db| read(db, |tx| quota::used(tx, &id, &windows)))
            .await
    }
}

#[async_trait]
impl TokenLedger for EmbeddedStore {
    /// One write transaction: the totals survive a restart.
    async fn add_tokens(
        &self,
        batch: &TokenBatch,
        read: &[Arc<str>],
    ) -> Result<Vec<TokenTotals>, StoreError> {
        let (batch, read) = (batch.clone(), read.to_vec());
        let now = now_unix();
        self.blocking(move |db| write(db, |tx| tokens::add(tx, &batch, &read, now)))
            .await
    }
}

impl ChangeFeed for EmbeddedStore {
    /// One process owns the file, so the feed carries only this process's own writes: each
    /// announced as it commits, also when its caller is gone (see [`Feed`]). A second call
    /// replaces the first subscriber.
    fn invalidations(&self) -> Option<mpsc::Receiver<Invalidation>> {
        let (sender, receiver) = mpsc::channel(FEED_CAPACITY);
        *self.feed.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        Some(receiver)
    }
}

#[async_trait]
impl Ping for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|db| read(db, |_| Ok(()))).await
    }
}

/// Adds the event `audit` makes of `done` to the audit log, in the write's own transaction.
fn audited<T>(tx: &WriteTransaction, audit: Option<&Audit<T>>, done: &T) -> Result<(), StoreError> {
    match audit {
        Some(event_of) => audit::append(tx, &event_of(done)),
        None => Ok(()),
    }
}

/// Runs `op` in one write transaction, committed only if `op` succeeds (dropping it aborts).
fn write<T>(
    db: &Database,
    op: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = db.begin_write().map_err(db_error)?;
    let value = op(&tx)?;
    tx.commit().map_err(db_error)?;
    Ok(value)
}

fn read<T>(
    db: &Database,
    op: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = db.begin_read().map_err(db_error)?;
    op(&tx)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(json: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The record without its last-use time, which lives in the `last_used` table.
fn encode_key(key: &KeyRecord) -> Result<Vec<u8>, StoreError> {
    encode(&KeyRecord {
        last_used_at: None,
        ..key.clone()
    })
}

/// A damaged file is `Corrupt`; everything else (I/O, locks, a poisoned transaction) means the
/// store cannot serve right now.
pub(super) fn db_error(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(msg) => StoreError::Corrupt(msg),
        other => StoreError::Unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::UnauditedWrites;
    use std::time::{Duration, Instant};

    fn app(id: &str) -> App {
        App {
            id: id.to_owned(),
            name: id.to_owned(),
            scopes: Vec::new(),
            rate_limit: None,
            quota: None,
            token_quota: None,
            created_at: 1,
            created_by: "test".to_owned(),
            version: 0,
            credentials: Default::default(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_timeout_bounds_a_write_stuck_behind_another() {
        let dir = tempfile::tempdir().expect("dir");
        let store = EmbeddedStore::open(dir.path())
            .expect("open")
            .with_timeout(Duration::from_millis(100));
        // Another writer holds the file's one write transaction.
        let held = store.db.begin_write().expect("write transaction");
        let started = Instant::now();
        let result = store.create_app(&app("a1")).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drop(held);
        // The timed-out write still runs once the file is free; nothing is corrupted.
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.get_app("a1").await.expect("read").is_none() {
            assert!(Instant::now() < deadline, "the write never landed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
