//! Token quotas (`token_quota: {per_minute, per_day, per_month}`, an app may override the
//! config's default): input plus output tokens of a key's metered responses per UTC minute, day
//! and month, counted once across every instance sharing the store.
//!
//! # How
//! A metered request is admitted while every window of its key is below its limit, as this
//! instance knows it: the store's totals from its last answer, plus what this instance spent
//! since. A response's tokens are known only once it ends, so they are spent then
//! ([`KeyTokens::spend`]: two atomic adds) and the response that crosses a limit completes.
//! A background task ([`TokenQuotas::flush`], every [`FLUSH_INTERVAL`]) sends what was spent as
//! one batch under an id (retried unchanged until the store confirms it, so nothing counts
//! twice), and reads back the totals of every key in use, so a crossing counted by one
//! instance reaches every other within two intervals plus a round trip.
//!
//! # The bound
//! Once a window is crossed, every instance refuses the key within that time. What passes the
//! limit is at most what the requests admitted before then consume: those in flight at the
//! crossing, and those admitted elsewhere in the moment before the crossing was seen there.
//! While the store is unreachable each instance admits on what it knew plus what it spent; its
//! spending is kept and added once the store answers.
//!
//! # What it never does
//! A route without `meter` never reaches this module. A key in use (checked within the last
//! [`ACTIVE_SECS`]) has its totals read back by every flush, so its requests never wait on the
//! store; a key idle here for longer than [`STALE_MS`] reads its totals once before its next
//! request is admitted (so a crossing counted elsewhere while it was idle is never missed).

use crate::model::{now_unix, TokenQuota, TokenWindows, UnixSeconds};
use crate::store::{StoreError, TokenBatch, TokenLedger, TokenTotals};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often spending is sent and totals read back: a crossing reaches every instance within
/// two of these plus a store round trip, well inside the contract's second.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Keys not checked for this long, with nothing left to send, are forgotten.
const IDLE_SECS: UnixSeconds = 120;
/// The flush reads back the totals of keys checked this recently: the keys in use, so the
/// store's work follows the traffic, not every key seen in the last minutes.
const ACTIVE_SECS: UnixSeconds = 5;
/// A key whose totals are older than this (idle here for a while) reads them before its
/// request is admitted, so a crossing counted elsewhere meanwhile is never missed.
const STALE_MS: u64 = 1_000;

/// A metered request refused because a window of its key's token quota is used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("token quota exceeded: {limit} tokens per {window} used up; retry in {retry_after} s")]
pub struct TokenQuotaExceeded {
    pub window: &'static str,
    pub limit: u64,
    /// Whole seconds until the window ends (at least 1).
    pub retry_after: u64,
}

/// The tightest window of an admitted request, for the `X-Token-Quota-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenQuotaStatus {
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds until that window ends.
    pub reset: u64,
}

/// One window of a key's token quota now, for the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenWindowUse {
    pub window: &'static str,
    pub limit: u64,
    pub used: u64,
    pub ends: UnixSeconds,
}

/// What this instance knows of one key's tokens.
#[derive(Debug)]
pub struct KeyTokens {
    key: Arc<str>,
    /// The store's totals per window kind, and which window each total is of.
    totals: [AtomicU64; 3],
    windows: [AtomicU64; 3],
    /// Spent here, not yet taken into a batch.
    unsent: AtomicU64,
    /// Taken into the batch being sent, not yet confirmed.
    sending: AtomicU64,
    /// When a request last checked it (unix seconds).
    checked: AtomicU64,
    /// When the store's totals were last learnt (unix milliseconds; 0: never).
    learnt: AtomicU64,
}

impl KeyTokens {
    fn new(key: Arc<str>) -> KeyTokens {
        KeyTokens {
            key,
            totals: Default::default(),
            windows: Default::default(),
            unsent: AtomicU64::new(0),
            sending: AtomicU64::new(0),
            checked: AtomicU64::new(now_unix()),
            learnt: AtomicU64::new(0),
        }
    }

    /// Tokens in each window at `at` as far as this instance knows.
    fn used(&self, at: &TokenWindows) -> [u64; 3] {
        let here = self.unsent.load(Ordering::SeqCst) + self.sending.load(Ordering::SeqCst);
        std::array::from_fn(|kind| {
            let stored = if self.windows[kind].load(Ordering::SeqCst) == at.ids[kind] {
                self.totals[kind].load(Ordering::SeqCst)
            } else {
                0
            };
            stored + here
        })
    }

    /// Takes the store's totals for the windows `at`, unless newer ones are held.
    fn learn(&self, at: &TokenWindows, totals: TokenTotals) {
        self.learnt.store(now_ms(), Ordering::SeqCst);
        for (kind, total) in totals.into_iter().enumerate() {
            if self.windows[kind].load(Ordering::SeqCst) <= at.ids[kind] {
                self.totals[kind].store(total, Ordering::SeqCst);
                self.windows[kind].store(at.ids[kind], Ordering::SeqCst);
            }
        }
    }
}

/// The batch being sent, kept unchanged until the store confirms it.
struct Sending {
    batch: TokenBatch,
    cells: Vec<Arc<KeyTokens>>,
}

/// Every key's token state on this instance.
pub struct TokenQuotas {
    keys: DashMap<Arc<str>, Arc<KeyTokens>, foldhash::fast::RandomState>,
    store: Arc<dyn TokenLedger>,
    sending: Mutex<Option<Sending>>,
}

opaque_debug!(TokenQuotas);

impl TokenQuotas {
    pub fn new(store: Arc<dyn TokenLedger>) -> TokenQuotas {
        TokenQuotas {
            keys: DashMap::default(),
            store,
            sending: Mutex::new(None),
        }
    }

    /// Admits a metered request of `key_id` while each window of `quota` is below its limit;
    /// the key's state, to spend the response's tokens on, and the tightest window.
    pub async fn check(
        &self,
        key_id: &Arc<str>,
        quota: TokenQuota,
    ) -> Result<(Arc<KeyTokens>, TokenQuotaStatus), TokenQuotaExceeded> {
        let cell = self.cell(key_id);
        if now_ms().saturating_sub(cell.learnt.load(Ordering::SeqCst)) > STALE_MS {
            self.load(&cell).await;
        }
        let now = now_unix();
        cell.checked.store(now, Ordering::Relaxed);
        let at = TokenWindows::at(now);
        let used = cell.used(&at);
        let mut tightest: Option<TokenQuotaStatus> = None;
        let mut refused: Option<TokenQuotaExceeded> = None;
        for (kind, (window, limit)) in quota.windows().into_iter().enumerate() {
            let Some(limit) = limit else { continue };
            let reset = at.ends[kind].saturating_sub(now).max(1);
            if used[kind] >= limit {
                // The window that ends last decides when the key may come back.
                if refused.is_none_or(|r| r.retry_after < reset) {
                    refused = Some(TokenQuotaExceeded {
                        window,
                        limit,
                        retry_after: reset,
                    });
                }
                continue;
            }
            let remaining = limit - used[kind];
            if tightest.is_none_or(|t| t.remaining > remaining) {
                tightest = Some(TokenQuotaStatus {
                    limit,
                    remaining,
                    reset,
                });
            }
        }
        if let Some(refused) = refused {
            return Err(refused);
        }
        let status = tightest.unwrap_or(TokenQuotaStatus {
            limit: 0,
            remaining: 0,
            reset: 0,
        });
        Ok((cell, status))
    }

    /// Counts a finished response's tokens on its key's state; the flush sends them on. A
    /// state forgotten while the response streamed (idle keys are) is taken back first, or
    /// its tokens added to the one that replaced it.
    pub fn spend(&self, cell: &Arc<KeyTokens>, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let held = self
            .keys
            .entry(cell.key.clone())
            .or_insert_with(|| cell.clone())
            .clone();
        held.checked.store(now_unix(), Ordering::Relaxed);
        held.unsent.fetch_add(tokens, Ordering::SeqCst);
    }

    fn cell(&self, key_id: &Arc<str>) -> Arc<KeyTokens> {
        if let Some(cell) = self.keys.get(key_id) {
            return cell.clone();
        }
        self.keys
            .entry(key_id.clone())
            .or_insert_with(|| Arc::new(KeyTokens::new(key_id.clone())))
            .clone()
    }

    /// Reads the key's totals; on a store error it goes on from what it knew and spent here
    /// (marked learnt, so an outage costs each idle key one failed read a second, not one per
    /// request).
    async fn load(&self, cell: &KeyTokens) {
        let at = TokenWindows::at(now_unix());
        let batch = TokenBatch {
            id: batch_id(),
            windows: at,
            spent: Vec::new(),
        };
        match self
            .store
            .add_tokens(&batch, std::slice::from_ref(&cell.key))
            .await
        {
            Ok(totals) => {
                if let Some(t) = totals.first() {
                    cell.learn(&at, *t);
                }
            }
            Err(e) => {
                cell.learnt.store(now_ms(), Ordering::SeqCst);
                tracing::warn!(error = %e, "token quota totals not read; counting locally");
            }
        }
    }

    /// A key's windows now: the store's totals, fresh, plus what this instance has not sent.
    pub async fn usage(
        &self,
        key_id: &str,
        quota: TokenQuota,
    ) -> Result<Vec<TokenWindowUse>, StoreError> {
        let now = now_unix();
        let at = TokenWindows::at(now);
        let batch = TokenBatch {
            id: batch_id(),
            windows: at,
            spent: Vec::new(),
        };
        let totals = self.store.add_tokens(&batch, &[Arc::from(key_id)]).await?;
        let stored = totals.first().copied().unwrap_or_default();
        let here = self.keys.get(key_id).map_or(0, |c| {
            c.unsent.load(Ordering::SeqCst) + c.sending.load(Ordering::SeqCst)
        });
        Ok(quota
            .windows()
            .into_iter()
            .enumerate()
            .filter_map(|(kind, (window, limit))| {
                Some(TokenWindowUse {
                    window,
                    limit: limit?,
                    used: stored[kind] + here,
                    ends: at.ends[kind],
                })
            })
            .collect())
    }

    /// One round of the background task: sends what was spent (or the unconfirmed batch
    /// again), reads back the totals of every key checked lately, forgets idle keys.
    pub async fn flush(&self) {
        let now = now_unix();
        let (batch, cells) = self.next_batch(now);
        let read: Vec<Arc<KeyTokens>> = self
            .keys
            .iter()
            .filter(|c| now.saturating_sub(c.checked.load(Ordering::Relaxed)) < ACTIVE_SECS)
            .filter(|c| !batch.spent.iter().any(|(k, _)| *k == c.key))
            .map(|c| c.clone())
            .collect();
        if batch.spent.is_empty() && read.is_empty() {
            self.forget_idle(now);
            return;
        }
        let names: Vec<Arc<str>> = read.iter().map(|c| c.key.clone()).collect();
        match self.store.add_tokens(&batch, &names).await {
            Ok(totals) => {
                for (cell, totals) in cells.iter().chain(&read).zip(totals) {
                    cell.learn(&batch.windows, totals);
                }
                for (cell, (_, n)) in cells.iter().zip(&batch.spent) {
                    cell.sending.fetch_sub(*n, Ordering::SeqCst);
                }
                *self.lock() = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "token counts not written; will retry");
                *self.lock() = Some(Sending { batch, cells });
            }
        }
        self.forget_idle(now);
    }

    /// The unconfirmed batch, or a new one of everything spent since.
    fn next_batch(&self, now: UnixSeconds) -> (TokenBatch, Vec<Arc<KeyTokens>>) {
        if let Some(Sending { batch, cells }) = self.lock().take() {
            return (batch, cells);
        }
        let mut spent = Vec::new();
        let mut cells = Vec::new();
        for cell in self.keys.iter() {
            let n = cell.unsent.load(Ordering::SeqCst);
            if n == 0 {
                continue;
            }
            // Counted as sending before it leaves unsent: a check in between sees it twice
            // (refusing early for an instant), never not at all.
            cell.sending.fetch_add(n, Ordering::SeqCst);
            cell.unsent.fetch_sub(n, Ordering::SeqCst);
            spent.push((cell.key.clone(), n));
            cells.push(cell.clone());
        }
        let batch = TokenBatch {
            id: batch_id(),
            windows: TokenWindows::at(now),
            spent,
        };
        (batch, cells)
    }

    fn forget_idle(&self, now: UnixSeconds) {
        self.keys.retain(|_, c| {
            now.saturating_sub(c.checked.load(Ordering::Relaxed)) < IDLE_SECS
                || c.unsent.load(Ordering::SeqCst) > 0
                || c.sending.load(Ordering::SeqCst) > 0
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Sending>> {
        self.sending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn batch_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The key's app's token quota, or the config's default; `None` when neither limits anything.
pub fn effective(app: Option<TokenQuota>, default: Option<TokenQuota>) -> Option<TokenQuota> {
    app.or(default).filter(TokenQuota::is_limited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;
    use std::sync::atomic::AtomicUsize;

    fn quota(per_minute: u64, per_day: Option<u64>) -> TokenQuota {
        TokenQuota {
            per_minute: Some(per_minute),
            per_day,
            per_month: None,
        }
    }

    fn embedded() -> (tempfile::TempDir, Arc<EmbeddedStore>) {
        let dir = tempfile::tempdir().expect("dir");
        let store = EmbeddedStore::open(&dir.path().join("data")).expect("open");
        (dir, Arc::new(store))
    }

    #[tokio::test]
    async fn admits_below_the_limit_and_refuses_once_a_response_crossed_it() {
        let (_dir, store) = embedded();
        let quotas = TokenQuotas::new(store.clone());
        let key: Arc<str> = Arc::from("k1");
        let (cell, status) = quotas
            .check(&key, quota(100, Some(1000)))
            .await
            .expect("ok");
        assert_eq!((status.limit, status.remaining), (100, 100));
        // Two requests admitted at 60 used; both complete and cross together.
        quotas.spend(&cell, 60);
        let (second, status) = quotas
            .check(&key, quota(100, Some(1000)))
            .await
            .expect("ok");
        assert_eq!(status.remaining, 40);
        quotas.spend(&second, 70);
        let refused = quotas
            .check(&key, quota(100, Some(1000)))
            .await
            .expect_err("over the minute");
        assert_eq!((refused.window, refused.limit), ("minute", 100));
        assert!((1..=60).contains(&refused.retry_after), "{refused:?}");
        // Sent and read back: the store holds 130, and the key stays refused.
        quotas.flush().await;
        let other = TokenQuotas::new(store.clone());
        let seen = other
            .check(&key, quota(100, Some(1000)))
            .await
            .expect_err("another instance sees the crossing");
        assert_eq!(seen.window, "minute");
        let windows = quotas
            .usage("k1", quota(100, Some(1000)))
            .await
            .expect("usage");
        assert_eq!(
            windows
                .iter()
                .map(|w| (w.window, w.used))
                .collect::<Vec<_>>(),
            [("minute", 130), ("day", 130)]
        );
        // A higher limit admits again, with what is left of it.
        let (_, status) = quotas.check(&key, quota(500, None)).await.expect("ok");
        assert_eq!(status.remaining, 370);
    }

    #[tokio::test]
    async fn a_key_idle_here_reads_its_totals_before_it_is_admitted_again() {
        let (_dir, store) = embedded();
        let here = TokenQuotas::new(store.clone());
        let elsewhere = TokenQuotas::new(store);
        let key: Arc<str> = Arc::from("k1");
        let (cell, _) = here.check(&key, quota(100, None)).await.expect("ok");
        // Another instance crosses the limit and sends it.
        let (theirs, _) = elsewhere.check(&key, quota(100, None)).await.expect("ok");
        elsewhere.spend(&theirs, 150);
        elsewhere.flush().await;
        // Just read: this instance goes on what it knew (its flush would read the crossing).
        here.check(&key, quota(100, None))
            .await
            .expect("not seen yet");
        // Idle longer than STALE_MS: the totals are read before admitting.
        cell.learnt.store(0, Ordering::SeqCst);
        let refused = here
            .check(&key, quota(100, None))
            .await
            .expect_err("read before admitting");
        assert_eq!(refused.window, "minute");
    }

    #[tokio::test]
    async fn the_window_that_ends_last_says_when_to_come_back() {
        let (_dir, store) = embedded();
        let quotas = TokenQuotas::new(store);
        let key: Arc<str> = Arc::from("k1");
        let (cell, _) = quotas.check(&key, quota(10, Some(10))).await.expect("ok");
        quotas.spend(&cell, 10);
        let refused = quotas
            .check(&key, quota(10, Some(10)))
            .await
            .expect_err("both used up");
        assert_eq!(refused.window, "day");
        assert!(refused.retry_after > 60, "{refused:?}");
    }

    /// Fails its first `failures` calls after applying them (a write whose answer was lost),
    /// then answers; records every batch id it was sent.
    struct LostAnswers {
        inner: Arc<EmbeddedStore>,
        failures: AtomicUsize,
        ids: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl TokenLedger for LostAnswers {
        async fn add_tokens(
            &self,
            batch: &TokenBatch,
            read: &[Arc<str>],
        ) -> Result<Vec<TokenTotals>, StoreError> {
            self.ids.lock().expect("ids").push(batch.id.clone());
            let answer = self.inner.add_tokens(batch, read).await;
            if !batch.spent.is_empty() && self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(StoreError::Unavailable("answer lost".into()));
            }
            answer
        }
    }

    #[tokio::test]
    async fn a_batch_whose_answer_was_lost_is_sent_again_unchanged_and_counted_once() {
        let (_dir, store) = embedded();
        let ledger = Arc::new(LostAnswers {
            inner: store.clone(),
            failures: AtomicUsize::new(2),
            ids: Mutex::new(Vec::new()),
        });
        let quotas = TokenQuotas::new(ledger.clone());
        let key: Arc<str> = Arc::from("k1");
        let (cell, _) = quotas.check(&key, quota(1000, None)).await.expect("ok");
        quotas.spend(&cell, 40);
        quotas.flush().await;
        // Spent while the first batch is unconfirmed: waits for the next one.
        quotas.spend(&cell, 2);
        quotas.flush().await;
        quotas.flush().await;
        quotas.flush().await;
        let ids = ledger.ids.lock().expect("ids").clone();
        // load, then the 40-token batch three times under one id, then the 2-token batch.
        assert_eq!(ids.len(), 5, "{ids:?}");
        assert!(
            ids[1] == ids[2] && ids[2] == ids[3] && ids[3] != ids[4],
            "{ids:?}"
        );
        let windows = quotas.usage("k1", quota(1000, None)).await.expect("usage");
        assert_eq!(windows[0].used, 42);
        // Meanwhile the instance counted what it spent: nothing was lost or doubled.
        let (_, status) = quotas.check(&key, quota(1000, None)).await.expect("ok");
        assert_eq!(status.remaining, 958);
    }

    #[tokio::test]
    async fn a_forgotten_key_state_is_taken_back_when_its_response_ends() {
        let (_dir, store) = embedded();
        let quotas = TokenQuotas::new(store);
        let key: Arc<str> = Arc::from("k1");
        let (cell, _) = quotas.check(&key, quota(1000, None)).await.expect("ok");
        // Idle long enough to be forgotten while a long stream was still running.
        cell.checked.store(0, Ordering::SeqCst);
        quotas.flush().await;
        assert!(quotas.keys.is_empty());
        quotas.spend(&cell, 25);
        quotas.flush().await;
        let windows = quotas.usage("k1", quota(1000, None)).await.expect("usage");
        assert_eq!(windows[0].used, 25);
    }
}
