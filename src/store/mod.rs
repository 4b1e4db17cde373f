//! Where apps and keys live: the [`KeyStore`] trait and its two implementations,
//! Redis (shared by many gateway instances) and an embedded file store (one process, no server).
//!
//! The store knows nothing of caching or HTTP. It reports committed changes as [`Invalidation`]
//! events (Redis: every instance's, through pub/sub; embedded: this process's own, as each
//! commits, so a write that outlives its caller still reaches the cache); the cache decides
//! what to do with them. Admin writes carry their [`Audit`] event into the same store step.

mod embedded;
mod redis;

pub use self::embedded::EmbeddedStore;
pub use self::redis::{RedisStore, DEFAULT_PREFIX};

/// Every role trait, for code that drives a whole store (tests, benches, the demo's seeding):
/// `use scopegate::store::prelude::*`.
pub mod prelude {
    pub use super::{
        BudgetLeases, ChangeFeed, CredentialRecords, KeyStore, Ping, Records, TokenLedger,
        UnauditedWrites, Upkeep, UsageSink,
    };
}

use crate::model::{
    usage_field, usage_field_date, utc_date, utc_day_number, App, AppChange, AuditEvent,
    CredentialChange, CredentialRecord, DayUsage, KeyChange, KeyRecord, Measure, Page, PageRequest,
    QuotaWindows, RateLimit, TokenWindows, UnixSeconds, UsageBatch, UsageCounts, UsageSubject,
};
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Days a day's usage count is kept at least: more than the admin API's longest read (366
/// days), so a full-year read always finds its counts. Redis keeps a month's counts until this
/// long after the month ends, the embedded store prunes rows older than this.
pub const USAGE_RETENTION_DAYS: u64 = 400;
/// How long a store remembers the id of a usage batch it applied, so a retry of it is
/// recognised. The usage task retries a batch every flush until it is confirmed; this covers
/// retries across a store outage of up to a day. (Redis: one small key per batch chunk.)
pub const USAGE_BATCH_MEMORY_SECS: u64 = 86_400;
/// Increments per idempotent unit (Redis: per script call), so no single command or script
/// holds the store for long whatever the batch size.
pub const USAGE_CHUNK: usize = 500;
const DAY: UnixSeconds = 86_400;

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
    /// The key is revoked: nothing changes it any more.
    #[error("the key is revoked")]
    Revoked,
    /// The record changed since the version the caller read (a stale `If-Match`).
    #[error("the record changed since it was read")]
    VersionMismatch,
}

/// Which records a listing keeps. Applied by the store as it scans, so a page holds only
/// matching records however few there are.
pub type Keep<'a, T> = &'a (dyn Fn(&T) -> bool + Sync);

/// Records examined per store command while listing: small enough that no command holds
/// Redis busy for long.
pub const LIST_CHUNK: usize = 500;
/// Records examined per listing call at most: a filter that matches little returns a short
/// (or empty) page with a cursor instead of scanning everything in one call.
pub const LIST_SCAN_BUDGET: usize = 20_000;
/// Audit events Redis keeps (a capped stream; trimmed approximately, so a few more).
pub const AUDIT_MAX_EVENTS: usize = 100_000;
/// How long the embedded store keeps audit events.
pub const AUDIT_RETENTION: std::time::Duration = std::time::Duration::from_secs(400 * 86_400);

/// Keys of deleted apps removed per store command.
pub const PURGE_CHUNK: usize = 500;

/// Makes the audit event of an admin write from what the write did (the app before and after,
/// the key as changed). The store keeps the event in the same step as the write, so a write is
/// never kept without its event, nor an event without its write, whatever happens to the
/// caller.
pub type Audit<T> = std::sync::Arc<dyn Fn(&T) -> AuditEvent + Send + Sync>;

/// A change made through some gateway instance that cached copies must drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    Key(String),
    App(String),
    /// An upstream credential (by name) was created, replaced or deleted.
    Credential(String),
    /// The change feed was interrupted: events may have been missed, so drop everything.
    All,
}

/// A slice of a key's shared rate budget, taken from the store in one round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLease {
    /// Requests granted (0: the budget is spent for now).
    pub granted: u32,
    /// Requests the shared bucket still holds after this grant.
    pub remaining: u32,
    /// When nothing was granted: until one more request would be.
    pub wait: std::time::Duration,
    /// Until the shared bucket is full again.
    pub reset: std::time::Duration,
}

/// A slice of a key's quota, counted as used in the store when it is granted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaLease {
    /// Requests granted (0: a window is used up, or nothing was asked).
    pub granted: u64,
    /// The windows' counts after this grant (every instance's grants).
    pub day_used: u64,
    pub month_used: u64,
    /// When nothing was granted: milliseconds until the last record of another holder of
    /// leased requests runs out (0: nobody else holds any). Leased and unused requests are
    /// quota left, so a caller waits for them to come back rather than refuse.
    pub held_elsewhere_ms: u64,
    /// Whether the store records holders (a shared store); without records there is nothing
    /// to release.
    pub records_holders: bool,
}

/// One atomic step of one holder (an instance's entry for a key) on a key's quota counts:
/// settle what it gave back, received and admitted on its own, lease up to `want`, and record
/// whether it still holds leased requests.
///
/// The three tallies are totals over the holder's life, never deltas: the store keeps what it
/// has applied of each and applies only the difference, so a step whose outcome the holder
/// never learned (a timeout while the script still ran) is settled by the next one, never
/// twice, and a grant whose reply was lost goes back.
#[derive(Clone, Copy, Debug)]
pub struct QuotaAsk<'a> {
    /// Requests wanted (0: only settle and update the record).
    pub want: u64,
    /// Leased requests that went unused, in all: what the store has not applied yet is
    /// subtracted from both counts first.
    pub returned: u64,
    /// Requests granted to the holder that it learned of, in all: the store's grants beyond it
    /// were lost with their replies and are subtracted too.
    pub received: u64,
    /// Requests the holder admitted while the store was unreachable, in all: what the store has
    /// not added yet is added.
    pub owed: u64,
    /// Who asks: unique per instance and entry.
    pub holder: &'a str,
    /// Whether the holder still holds leased requests besides what this step grants.
    pub holds: bool,
    /// How long the holder's record lasts unless renewed (milliseconds): past it, whatever the
    /// holder still has unused is not waited for.
    pub hold_ms: u64,
}

/// How many requests to grant out of `want` given the windows' counts: never past a limit, and,
/// as the smaller window's remainder shrinks, only a `1/QUOTA_SPREAD` share of it at a time, so
/// slices stranded on idle instances stay small near the end; once no more than `want` is
/// left, exactly 1 (each request its own atomic step). Both stores (and the Redis script,
/// which mirrors it) grant by this rule.
pub fn quota_grant(windows: &QuotaWindows, day_used: u64, month_used: u64, want: u64) -> u64 {
    let free = [
        windows.per_day.map(|l| l.saturating_sub(day_used)),
        windows.per_month.map(|l| l.saturating_sub(month_used)),
    ]
    .into_iter()
    .flatten()
    .min();
    match free {
        _ if want == 0 => 0,
        None => want,
        Some(0) => 0,
        Some(free) if free <= want => 1,
        Some(free) => want.min((free / QUOTA_SPREAD).max(1)),
    }
}

/// Divides what is left of a quota before a slice of it is granted: twice an expected four
/// instances, so each can hold a slice and half of what is left stays unleased.
pub const QUOTA_SPREAD: u64 = 8;

/// A whole store, as the gateway wires it: every role below. Each consumer names only the
/// role it uses (the cache [`Records`] and [`ChangeFeed`], the usage task [`UsageSink`], limits
/// [`BudgetLeases`], background upkeep [`Upkeep`]), so a test double implements one small
/// trait, not all of them.
pub trait KeyStore:
    Records
    + CredentialRecords
    + Upkeep
    + UsageSink
    + BudgetLeases
    + TokenLedger
    + ChangeFeed
    + Ping
    + 'static
{
}

impl<T> KeyStore for T where
    T: Records
        + CredentialRecords
        + Upkeep
        + UsageSink
        + BudgetLeases
        + TokenLedger
        + ChangeFeed
        + Ping
        + 'static
{
}

/// Apps, keys and the audit log: what the admin API writes and the cache reads.
///
/// Admin writes take the [`Audit`] event the store keeps in the same step; writes that change
/// what a key may do announce an [`Invalidation`] (see [`ChangeFeed`]).
#[async_trait]
pub trait Records: Send + Sync {
    /// Stores a new app, and `audit`'s event in the same step. `Conflict` when another app has
    /// the same name (case-insensitive).
    async fn create_app_audited(
        &self,
        app: &App,
        audit: Option<&Audit<App>>,
    ) -> Result<(), StoreError>;
    async fn get_app(&self, id: &str) -> Result<Option<App>, StoreError>;
    /// A page of apps, oldest first (ties by id), that `keep` accepts.
    async fn list_apps(
        &self,
        page: PageRequest<'_>,
        keep: Keep<'_, App>,
    ) -> Result<Page<App>, StoreError>;
    /// Applies `change` to the app as stored now, atomically, with `audit`'s event (made from
    /// the app before and after); returns it before and after. `NotFound` if it does not exist,
    /// `Conflict` on a taken name, `VersionMismatch` if `expected_version` is given and the app
    /// is at another.
    async fn update_app_audited(
        &self,
        id: &str,
        change: &AppChange,
        expected_version: Option<u64>,
        audit: Option<&Audit<(App, App)>>,
    ) -> Result<(App, App), StoreError>;
    /// Deletes an app (`by` names who), with `audit`'s event: from this moment none of its
    /// keys works on any instance. The keys are marked revoked afterwards, in chunks, by
    /// [`Upkeep::revoke_keys_of_deleted_apps`]. Answers the app as it was; `Ok(None)` if it did
    /// not exist (no event then); `VersionMismatch` as for `update_app_audited`.
    async fn delete_app_audited(
        &self,
        id: &str,
        by: &str,
        expected_version: Option<u64>,
        audit: Option<&Audit<App>>,
    ) -> Result<Option<App>, StoreError>;

    /// Stores a new key, with `audit`'s event. `NotFound` if its app does not exist.
    async fn create_key_audited(
        &self,
        key: &KeyRecord,
        audit: Option<&Audit<KeyRecord>>,
    ) -> Result<(), StoreError>;
    /// One key, with `last_used_at` filled in.
    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// A page of the keys of one app, or of all keys, that `keep` accepts; oldest first (ties
    /// by id); with `last_used_at`.
    async fn list_keys(
        &self,
        app_id: Option<&str>,
        page: PageRequest<'_>,
        keep: Keep<'_, KeyRecord>,
    ) -> Result<Page<KeyRecord>, StoreError>;
    /// Applies `change` to the key as stored now, atomically, with `audit`'s event (made from
    /// the key as changed), and announces it. `NotFound`, or `Revoked` if the key is revoked.
    async fn update_key_audited(
        &self,
        id: &str,
        change: &KeyChange,
        audit: Option<&Audit<KeyRecord>>,
    ) -> Result<KeyRecord, StoreError>;
    /// A roll in one step: stores `new` and applies `end` to the key `old_id`, with `audit`'s
    /// event (made from the old key as changed), and announces both. Nothing is written if the
    /// old key is missing (`NotFound`, also when its app is gone) or revoked (`Revoked`), so a
    /// roll racing a revoke never leaves a new key behind that nobody was shown.
    async fn roll_key(
        &self,
        old_id: &str,
        new: &KeyRecord,
        end: &KeyChange,
        audit: Option<&Audit<KeyRecord>>,
    ) -> Result<KeyRecord, StoreError>;

    /// Appends an event to the audit log on its own (the gateway's purges; admin writes pass
    /// theirs with the write). Bounded: Redis keeps the newest [`AUDIT_MAX_EVENTS`], the
    /// embedded store drops events older than [`AUDIT_RETENTION`].
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// A page of the audit log, newest first, that `keep` accepts.
    async fn list_audit(
        &self,
        page: PageRequest<'_>,
        keep: Keep<'_, AuditEvent>,
    ) -> Result<Page<AuditEvent>, StoreError>;
}

/// Upstream credentials: records whose value is only ever stored sealed (see
/// [`crate::credentials`]). Each write keeps its audit event in the same step and announces
/// [`Invalidation::Credential`] (Redis: every instance; embedded: this process) from that step.
#[async_trait]
pub trait CredentialRecords: Send + Sync {
    /// Stores a new credential, with `audit`'s event. `Conflict` when the name is taken.
    async fn create_credential_audited(
        &self,
        credential: &CredentialRecord,
        audit: Option<&Audit<CredentialRecord>>,
    ) -> Result<(), StoreError>;
    /// One credential, with `last_used_at` filled in.
    async fn get_credential(&self, name: &str) -> Result<Option<CredentialRecord>, StoreError>;
    /// A page of credentials, oldest first (ties by name), that `keep` accepts, with
    /// `last_used_at`. Bounded like every listing ([`LIST_CHUNK`] per command).
    async fn list_credentials(
        &self,
        page: PageRequest<'_>,
        keep: Keep<'_, CredentialRecord>,
    ) -> Result<Page<CredentialRecord>, StoreError>;
    /// Applies `change` to the credential as stored now, atomically, with `audit`'s event (made
    /// from it as changed), announced when `change.announce`. `NotFound`; `VersionMismatch`
    /// when `change.expected_sealed` no longer matches.
    async fn update_credential_audited(
        &self,
        name: &str,
        change: &CredentialChange,
        audit: Option<&Audit<CredentialRecord>>,
    ) -> Result<CredentialRecord, StoreError>;
    /// Deletes a credential with `audit`'s event; the record as it was, `Ok(None)` if it did
    /// not exist (no event then).
    async fn delete_credential_audited(
        &self,
        name: &str,
        audit: Option<&Audit<CredentialRecord>>,
    ) -> Result<Option<CredentialRecord>, StoreError>;
    /// Records last use times of credentials in one batch (unknown names are ignored; a time
    /// never moves backwards).
    async fn touch_credentials(&self, uses: &[(String, UnixSeconds)]) -> Result<(), StoreError>;
}

/// The writes of [`Records`] with no audit event: for seeding (the demo) and tests. The admin
/// API always passes one.
#[async_trait]
pub trait UnauditedWrites: Records {
    async fn create_app(&self, app: &App) -> Result<(), StoreError> {
        self.create_app_audited(app, None).await
    }
    async fn update_app(
        &self,
        id: &str,
        change: &AppChange,
        expected_version: Option<u64>,
    ) -> Result<(App, App), StoreError> {
        self.update_app_audited(id, change, expected_version, None)
            .await
    }
    /// `Ok(false)` if it did not exist.
    async fn delete_app(
        &self,
        id: &str,
        by: &str,
        expected_version: Option<u64>,
    ) -> Result<bool, StoreError> {
        let old = self
            .delete_app_audited(id, by, expected_version, None)
            .await?;
        Ok(old.is_some())
    }
    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.create_key_audited(key, None).await
    }
    async fn update_key(&self, id: &str, change: &KeyChange) -> Result<KeyRecord, StoreError> {
        self.update_key_audited(id, change, None).await
    }
}

impl<T: Records + ?Sized> UnauditedWrites for T {}

/// Background upkeep of records: chunked revocation of deleted apps' keys, purging revoked
/// keys, expiry counts, layout upgrades.
#[async_trait]
pub trait Upkeep: Send + Sync {
    /// Marks up to `PURGE_CHUNK` keys of deleted apps revoked (at `at`, by whoever deleted the
    /// app). Returns how many it handled: 0 once nothing is left.
    async fn revoke_keys_of_deleted_apps(&self, at: UnixSeconds) -> Result<usize, StoreError>;
    /// Removes a key for good, with its usage counts (a revoked key past its retention).
    /// `Ok(false)` if it did not exist.
    async fn delete_key(&self, id: &str) -> Result<bool, StoreError>;
    /// Up to `PURGE_CHUNK` ids of keys revoked before `before`, oldest first.
    async fn revoked_before(&self, before: UnixSeconds) -> Result<Vec<String>, StoreError>;
    /// How many keys (not revoked) expire in `(from, to]`.
    async fn count_expiring(&self, from: UnixSeconds, to: UnixSeconds) -> Result<u64, StoreError>;
    /// Brings data written by an earlier version up to this one's layout (bounded commands,
    /// safe to repeat and to run on several instances at once); how many records it touched.
    async fn upgrade(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
}

/// Where bookkeeping goes: last-use times and usage counts, written in batches off the
/// request path.
#[async_trait]
pub trait UsageSink: Send + Sync {
    /// Records last use times in one batch. Unknown ids are ignored; a time never moves backwards.
    async fn touch_keys(&self, uses: &[(String, UnixSeconds)]) -> Result<(), StoreError>;

    /// Adds request counts, each batch at most once: a batch whose id the store has applied
    /// before (within [`USAGE_BATCH_MEMORY_SECS`]) is skipped, so a caller that did not learn
    /// whether a write went through sends the same batches again. Redis: one pipelined round
    /// trip of scripts, each recording the id of one chunk of at most [`USAGE_CHUNK`]
    /// increments together with them; embedded: one transaction. Counts dated before the
    /// retention period ([`USAGE_RETENTION_DAYS`]) are not stored.
    ///
    /// Ids are deliberately not checked: counts for a key or app that no longer exists (deleted
    /// between its requests and this flush) are stored all the same, and stay behind as
    /// orphans until the retention period ends. Checking would cost a lookup per id on every
    /// flush; what it would save is a few small counters per deleted id, never read by mistake
    /// since ids are random and not reused. Entries with a count of 0 are skipped.
    async fn add_usage(&self, batches: &[UsageBatch]) -> Result<(), StoreError>;
    /// Counts for the given [`usage_field`]s, in the same order (0 where nothing was recorded,
    /// including for an id never seen).
    async fn usage(
        &self,
        subject: UsageSubject<'_>,
        fields: &[String],
    ) -> Result<Vec<u64>, StoreError>;

    /// Requests and tokens on each of `dates` (`YYYY-MM-DD`), in the same order: one read of
    /// every measure's field.
    async fn day_usage(
        &self,
        subject: UsageSubject<'_>,
        dates: &[String],
    ) -> Result<Vec<DayUsage>, StoreError> {
        let fields: Vec<String> = dates
            .iter()
            .flat_map(|date| Measure::ALL.map(|m| usage_field(date, m)))
            .collect();
        let counts = self.usage(subject, &fields).await?;
        if counts.len() != fields.len() {
            return Err(StoreError::Corrupt(format!(
                "{} usage counts for {} fields",
                counts.len(),
                fields.len()
            )));
        }
        Ok(counts
            .chunks(Measure::ALL.len())
            .map(|c| DayUsage {
                requests: c[0],
                input_tokens: c[1],
                output_tokens: c[2],
            })
            .collect())
    }
}

/// Slices of shared budgets: rate limits shared across instances and quota counts.
/// Tokens spent by keys, per key in minute, day and month windows: what token quotas count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatch {
    /// Unique for good: the store applies a batch once, however often it is sent.
    pub id: String,
    /// The windows the tokens count in (those of the moment the batch was sealed).
    pub windows: TokenWindows,
    /// (key id, tokens), each key at most once.
    pub spent: Vec<(Arc<str>, u64)>,
}

/// A key's tokens in each window of a [`TokenWindows`] (minute, day, month).
pub type TokenTotals = [u64; 3];

/// Keys per store step of [`TokenLedger::add_tokens`]: bounds one script's keys (three each).
pub const TOKEN_CHUNK: usize = 256;

#[async_trait]
pub trait TokenLedger: Send + Sync {
    /// Adds the batch's tokens to each key's windows, at most once per batch id (a batch sent
    /// again after a write that timed out is not counted twice), and answers the totals in
    /// the batch's windows of every key of the batch, then of every key of `read`, in order.
    /// Windows past their end are forgotten by the store.
    async fn add_tokens(
        &self,
        batch: &TokenBatch,
        read: &[Arc<str>],
    ) -> Result<Vec<TokenTotals>, StoreError>;
}

#[async_trait]
pub trait BudgetLeases: Send + Sync {
    /// Leases up to `want` requests of `key_id`'s shared rate budget (GCRA: `limit`), atomically
    /// across every instance, on the store's clock. Only a shared store supports it.
    async fn lease_rate(
        &self,
        key_id: &str,
        limit: RateLimit,
        want: u32,
    ) -> Result<RateLease, StoreError> {
        let _ = (key_id, limit, want);
        Err(StoreError::Unavailable(
            "this store keeps no shared rate budgets".to_owned(),
        ))
    }

    /// One atomic step on `key_id`'s quota windows: settles `ask`'s totals (see [`QuotaAsk`]),
    /// then counts up to `ask.want` requests granted by [`quota_grant`] (counted as used at
    /// once), and records whether `ask.holder` still holds leased requests. A shared store
    /// answers, when it grants nothing, how long others may still hold some; a store of one
    /// instance answers 0.
    async fn lease_quota(
        &self,
        key_id: &str,
        windows: &QuotaWindows,
        ask: QuotaAsk<'_>,
    ) -> Result<QuotaLease, StoreError>;

    /// `key_id`'s counts in the windows: (day, month).
    async fn quota_used(
        &self,
        key_id: &str,
        windows: &QuotaWindows,
    ) -> Result<(u64, u64), StoreError>;
}

/// Whether the store answers, and the changes it reports for caches to drop.
pub trait ChangeFeed: Send + Sync {
    /// Committed changes (a shared store: every instance's; the embedded store: its own, as
    /// each commits). Called once, at start-up. The store keeps the feed alive itself and
    /// sends [`Invalidation::All`] after any gap.
    fn invalidations(&self) -> Option<mpsc::Receiver<Invalidation>>;

    /// Whether changes made by other instances reach this one right now: always for a store
    /// nobody else writes to; for a shared one, while its feed is subscribed. Read on cache
    /// fills, so it must be cheap.
    fn feed_live(&self) -> bool {
        true
    }
}

/// Cheap liveness check (readiness probes).
#[async_trait]
pub trait Ping: Send + Sync {
    async fn ping(&self) -> Result<(), StoreError>;
}

/// One count to add: whose, which day (`YYYY-MM-DD`), how many.
type Increment<'a> = (UsageSubject<'a>, &'a str, u64);

/// The entries of a batch, keys first, checked the same way for both stores: a count must fit
/// Redis's signed 64-bit `HINCRBY` and a date must be a `YYYY-MM-DD` day, so the whole batch is
/// refused (as not encodable) before anything is written if one does not. Zero counts are left
/// out. The answer depends on the batch alone (not on the time), so a retried batch splits into
/// the same chunks; days before the retention period are dropped later, per chunk.
fn usage_increments(counts: &UsageCounts) -> Result<Vec<Increment<'_>>, StoreError> {
    let keys = counts
        .keys
        .iter()
        .map(|(id, date, n)| (UsageSubject::Key(id.as_str()), date.as_str(), *n));
    let apps = counts
        .apps
        .iter()
        .map(|(id, date, n)| (UsageSubject::App(id.as_str()), date.as_str(), *n));
    keys.chain(apps)
        .filter(|(_, _, n)| *n > 0)
        .map(check_increment)
        .collect()
}

/// One listed position and its record (`None` when the record vanished since it was indexed).
type Indexed<T> = (String, Option<T>);

/// Walks an index from `page.cursor` in chunks of at most [`LIST_CHUNK`] positions (`fetch`
/// reads the chunk after a position), keeping what `keep` accepts, until the page is full,
/// the index ends, or [`LIST_SCAN_BUDGET`] positions were examined.
pub(crate) async fn scan_index<T, F, Fut>(
    page: PageRequest<'_>,
    keep: Keep<'_, T>,
    mut fetch: F,
) -> Result<Page<T>, StoreError>
where
    F: FnMut(Option<String>, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Indexed<T>>, StoreError>>,
{
    let limit = page.limit.max(1);
    let mut after = page.cursor.map(str::to_owned);
    let mut items = Vec::new();
    let mut examined = 0;
    let mut chunk_size = limit.min(LIST_CHUNK);
    loop {
        let chunk = fetch(after.clone(), chunk_size).await?;
        let ended = chunk.len() < chunk_size;
        let count = chunk.len();
        for (i, (position, record)) in chunk.into_iter().enumerate() {
            examined += 1;
            after = Some(position);
            if record.filter(|r| keep(r)).map(|r| items.push(r)).is_some() && items.len() == limit {
                let last = ended && i + 1 == count;
                return Ok(Page {
                    items,
                    next: if last { None } else { after },
                });
            }
        }
        if ended {
            return Ok(Page { items, next: None });
        }
        if examined >= LIST_SCAN_BUDGET {
            return Ok(Page { items, next: after });
        }
        chunk_size = LIST_CHUNK;
    }
}

fn check_increment(entry: Increment<'_>) -> Result<Increment<'_>, StoreError> {
    if i64::try_from(entry.2).is_err() {
        return Err(StoreError::Corrupt(format!(
            "usage count {} is out of range",
            entry.2
        )));
    }
    if usage_field_date(entry.1).and_then(utc_day_number).is_none() {
        return Err(StoreError::Corrupt(format!(
            "usage date {:?} is not a YYYY-MM-DD day",
            entry.1
        )));
    }
    Ok(entry)
}

/// The oldest date whose counts are still kept at `now`; earlier ones are not stored.
fn usage_cutoff(now: UnixSeconds) -> String {
    utc_date(now.saturating_sub(USAGE_RETENTION_DAYS * DAY))
}
