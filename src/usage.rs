//! Usage bookkeeping, off the request path: last-used times, and request and token counts per
//! key per day and per app per day (UTC).
//!
//! A request adds one to its key's [`UseCell`] (an atomic on the cached key) and moves on: it
//! never waits, never blocks and sends nothing, except that the first use of a key since the
//! last sweep hands the cell to the background task once. Every flush interval the task sweeps
//! the cells it was handed, adds their counts up and writes them to the store in batches. A
//! count is dated when it is swept (at most one flush interval after the use). If the store is
//! down, pending counts are kept (bounded; past the bound the oldest are dropped and counted in
//! `scopegate_usage_dropped_total`) and retried; on shutdown they are flushed.
//!
//! Each use is counted exactly once. A write that times out may still have been applied, so
//! counts are sealed into batches with an id before they are written, and a batch is sent
//! again, unchanged and under the same id, until the store confirms it; the store skips ids it
//! has applied. Uses that arrive meanwhile add up apart and are sealed once every earlier
//! batch is confirmed, so no new count ever joins a batch that may already be stored.

use crate::metrics::{Metrics, StoreOp};
use crate::model::{
    now_unix, usage_field, utc_date, Measure, UnixSeconds, UsageBatch, UsageCounts,
};
use crate::store::{UsageSink, USAGE_CHUNK};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Often enough that the admin API shows a use within its 2-second promise.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Cells handed to the task between two sweeps: one per key used since the last sweep, so it
/// fills only if more keys than this are used within one flush interval.
const CHANNEL_CAPACITY: usize = 65_536;
/// Cells taken off the channel per wake-up of the task, at most.
const RECEIVE_BATCH: usize = 1024;
/// Pending (id, day) counters and last-used entries kept while the store is unreachable.
pub(crate) const MAX_PENDING: usize = 200_000;
/// Counters per sealed batch: one idempotent unit of the store (one Redis script). Also what
/// is dropped at once when pending counts reach [`MAX_PENDING`] with batches unconfirmed.
const BATCH_COUNTERS: usize = USAGE_CHUNK;
/// Batches per store call, at most: bounds one call's work, so a long backlog goes out in
/// calls that each fit the store timeout rather than one that never does.
const BATCHES_PER_WRITE: usize = 20;
const DAY: UnixSeconds = 86_400;

/// One key's uses not yet swept. Lives on the cached key, so counting a use is one atomic add.
#[derive(Debug)]
pub struct UseCell {
    key: Arc<str>,
    app: Arc<str>,
    uses: AtomicU64,
    /// Tokens of metered responses, reported when each response ends.
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    /// Whether the task holds this cell for its next sweep.
    handed: AtomicBool,
}

impl UseCell {
    pub fn new(key: Arc<str>, app: Arc<str>) -> Arc<UseCell> {
        Arc::new(UseCell {
            key,
            app,
            uses: AtomicU64::new(0),
            input_tokens: AtomicU64::new(0),
            output_tokens: AtomicU64::new(0),
            handed: AtomicBool::new(false),
        })
    }

    /// Takes the counts so far: uses, input and output tokens. The cell is released first, so
    /// a count added after the take hands the cell over again and none is missed.
    fn take(&self) -> [u64; 3] {
        self.handed.store(false, Ordering::SeqCst);
        [
            self.uses.swap(0, Ordering::SeqCst),
            self.input_tokens.swap(0, Ordering::SeqCst),
            self.output_tokens.swap(0, Ordering::SeqCst),
        ]
    }
}

/// Counts of one key, as swept: uses, input and output tokens.
struct Use {
    key: Arc<str>,
    app: Arc<str>,
    at: UnixSeconds,
    n: [u64; 3],
}

/// The request path's handle.
#[derive(Clone)]
pub struct UsageRecorder {
    tx: mpsc::Sender<Arc<UseCell>>,
    metrics: Arc<Metrics>,
}

opaque_debug!(UsageRecorder);

impl UsageRecorder {
    /// Notes one use of the cell's key. Never blocks; if the task's queue is full the use is
    /// dropped and counted.
    pub fn record(&self, cell: &Arc<UseCell>) {
        cell.uses.fetch_add(1, Ordering::SeqCst);
        if !self.hand(cell) {
            // Not handed: the next use tries again; this one is given up.
            cell.uses.fetch_sub(1, Ordering::SeqCst);
            self.metrics.usage_dropped(1);
        }
    }

    /// Notes the tokens of one metered response of the cell's key. Never blocks; if the task's
    /// queue is full they are dropped and counted.
    pub fn record_tokens(&self, cell: &Arc<UseCell>, input: u64, output: u64) {
        cell.input_tokens.fetch_add(input, Ordering::SeqCst);
        cell.output_tokens.fetch_add(output, Ordering::SeqCst);
        if !self.hand(cell) {
            cell.input_tokens.fetch_sub(input, Ordering::SeqCst);
            cell.output_tokens.fetch_sub(output, Ordering::SeqCst);
            self.metrics.usage_dropped(input + output);
        }
    }

    /// Hands the cell to the task unless it holds it already; `false` if the queue was full.
    fn hand(&self, cell: &Arc<UseCell>) -> bool {
        if cell.handed.swap(true, Ordering::SeqCst) {
            return true;
        }
        if self.tx.try_send(cell.clone()).is_err() {
            cell.handed.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }
}

/// Starts the background writer. It flushes and ends when `shutdown` turns true.
pub(crate) fn spawn(
    store: Arc<dyn UsageSink>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> (UsageRecorder, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let pending = Pending::new(MAX_PENDING, metrics.clone());
    let task = tokio::spawn(run(store, rx, shutdown, pending));
    (UsageRecorder { tx, metrics }, task)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Counter {
    Key(Arc<str>, u64, Measure),
    App(Arc<str>, u64, Measure),
}

/// Uses not yet in the store.
struct Pending {
    /// Counts not yet sealed into a batch.
    counts: HashMap<Counter, u64>,
    /// Counters in the order they were first seen, to drop the oldest first.
    order: VecDeque<Counter>,
    /// Batches sent (or about to be) but not confirmed, oldest first. Never changed: a batch
    /// is retried as it is, or dropped whole.
    sealed: VecDeque<UsageBatch>,
    /// Counters in `sealed`, for the memory bound.
    sealed_counters: usize,
    last_used: HashMap<Arc<str>, UnixSeconds>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Pending {
    fn new(capacity: usize, metrics: Arc<Metrics>) -> Pending {
        Pending {
            counts: HashMap::new(),
            order: VecDeque::new(),
            sealed: VecDeque::new(),
            sealed_counters: 0,
            last_used: HashMap::new(),
            capacity,
            metrics,
        }
    }

    fn add(&mut self, u: Use) {
        let day = u.at / DAY;
        for (measure, n) in Measure::ALL.into_iter().zip(u.n) {
            if n > 0 {
                self.count(Counter::Key(u.key.clone(), day, measure), n);
                self.count(Counter::App(u.app.clone(), day, measure), n);
            }
        }
        if u.n[0] == 0 {
            // Tokens alone: the request's use was noted when it was forwarded.
            return;
        }
        if self.last_used.len() < self.capacity || self.last_used.contains_key(&u.key) {
            let at = self.last_used.entry(u.key).or_insert(u.at);
            *at = (*at).max(u.at);
        }
    }

    fn count(&mut self, counter: Counter, n: u64) {
        if let Some(count) = self.counts.get_mut(&counter) {
            *count += n;
            return;
        }
        while self.counters() >= self.capacity && self.drop_oldest() {}
        self.order.push_back(counter.clone());
        self.counts.insert(counter, n);
    }

    /// Counters held, sealed or not.
    fn counters(&self) -> usize {
        self.counts.len() + self.sealed_counters
    }

    /// Drops the oldest counts, counting them as dropped: the oldest sealed batch whole (its
    /// counts may in fact have landed by a write that timed out; they are counted as dropped
    /// all the same), else the oldest unsealed counter. `false` if nothing was left.
    fn drop_oldest(&mut self) -> bool {
        if let Some(batch) = self.sealed.pop_front() {
            self.sealed_counters -= batch.len();
            let counts = &batch.counts;
            let total = counts.keys.iter().chain(&counts.apps).map(|e| e.2).sum();
            self.metrics.usage_dropped(total);
            return true;
        }
        let Some(oldest) = self.order.pop_front() else {
            return false;
        };
        if let Some(dropped) = self.counts.remove(&oldest) {
            self.metrics.usage_dropped(dropped);
        }
        true
    }

    /// Moves every unsealed count into new batches of at most [`BATCH_COUNTERS`], oldest
    /// counters first, each under a fresh id.
    fn seal(&mut self) {
        let mut batch = UsageCounts::default();
        for counter in std::mem::take(&mut self.order) {
            let Some(n) = self.counts.remove(&counter) else {
                continue;
            };
            match counter {
                Counter::Key(id, day, m) => batch.keys.push((id.to_string(), field(day, m), n)),
                Counter::App(id, day, m) => batch.apps.push((id.to_string(), field(day, m), n)),
            }
            if batch.keys.len() + batch.apps.len() == BATCH_COUNTERS {
                self.push_sealed(std::mem::take(&mut batch));
            }
        }
        if !batch.keys.is_empty() || !batch.apps.is_empty() {
            self.push_sealed(batch);
        }
        self.counts.clear();
    }

    fn push_sealed(&mut self, counts: UsageCounts) {
        let batch = UsageBatch::new(counts);
        self.sealed_counters += batch.len();
        self.sealed.push_back(batch);
    }

    /// The store confirmed the first `n` sealed batches.
    fn confirm(&mut self, n: usize) {
        for batch in self.sealed.drain(..n) {
            self.sealed_counters -= batch.len();
        }
    }

    fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.sealed.is_empty() && self.last_used.is_empty()
    }
}

async fn run(
    store: Arc<dyn UsageSink>,
    mut rx: mpsc::Receiver<Arc<UseCell>>,
    mut shutdown: watch::Receiver<bool>,
    mut pending: Pending,
) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cells: Vec<Arc<UseCell>> = Vec::new();
    let mut received = Vec::with_capacity(RECEIVE_BATCH);
    let mut open = true;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut received, RECEIVE_BATCH), if open => {
                open = n > 0;
                cells.append(&mut received);
            }
            _ = tick.tick() => {
                sweep(&mut cells, &mut rx, &mut pending);
                flush(&*store, &mut pending).await;
            }
            _ = crate::server::stopped(&mut shutdown) => break,
        }
    }
    sweep(&mut cells, &mut rx, &mut pending);
    flush(&*store, &mut pending).await;
    if !pending.is_empty() {
        tracing::warn!(
            counters = pending.counters(),
            "usage not written at shutdown: the store is unreachable"
        );
    }
}

/// Moves the counts of every cell handed over so far into `pending`, dated now.
fn sweep(
    cells: &mut Vec<Arc<UseCell>>,
    rx: &mut mpsc::Receiver<Arc<UseCell>>,
    pending: &mut Pending,
) {
    while let Ok(cell) = rx.try_recv() {
        cells.push(cell);
    }
    let at = now_unix();
    for cell in cells.drain(..) {
        let n = cell.take();
        if n != [0; 3] {
            pending.add(Use {
                key: cell.key.clone(),
                app: cell.app.clone(),
                at,
                n,
            });
        }
    }
}

/// The stored field of `measure` on day number `day`.
fn field(day: u64, measure: Measure) -> String {
    usage_field(&utc_date(day * DAY), measure)
}

async fn flush(store: &dyn UsageSink, pending: &mut Pending) {
    flush_counts(store, pending).await;
    flush_last_used(store, pending).await;
}

/// Writes the sealed batches, oldest first, then seals what came in meanwhile and writes that,
/// until all is confirmed or a write fails (the rest waits for the next flush). Nothing is
/// sealed while an earlier batch is unconfirmed: new uses keep adding up in `counts`.
async fn flush_counts(store: &dyn UsageSink, pending: &mut Pending) {
    loop {
        if pending.sealed.is_empty() {
            pending.seal();
        }
        let n = pending.sealed.len().min(BATCHES_PER_WRITE);
        if n == 0 {
            return;
        }
        let batches = &pending.sealed.make_contiguous()[..n];
        match store.add_usage(batches).await {
            Ok(()) => pending.confirm(n),
            Err(e) => {
                pending.metrics.store_error(StoreOp::Flush);
                tracing::warn!(error = %e, "usage flush failed; will retry");
                return;
            }
        }
    }
}

async fn flush_last_used(store: &dyn UsageSink, pending: &mut Pending) {
    if pending.last_used.is_empty() {
        return;
    }
    let batch: Vec<(String, UnixSeconds)> = pending
        .last_used
        .iter()
        .map(|(id, at)| (id.to_string(), *at))
        .collect();
    match store.touch_keys(&batch).await {
        Ok(()) => pending.last_used.clear(),
        Err(e) => {
            pending.metrics.store_error(StoreOp::Flush);
            tracing::warn!(error = %e, "last-used flush failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UsageSubject;
    use crate::store::StoreError;
    use std::sync::atomic::Ordering::SeqCst;

    fn use_of(key: &str, app: &str, at: UnixSeconds) -> Use {
        Use {
            key: Arc::from(key),
            app: Arc::from(app),
            at,
            n: [1, 0, 0],
        }
    }

    fn key_total(p: &Pending, key: &str) -> u64 {
        p.counts
            .iter()
            .filter(|(c, _)| matches!(c, Counter::Key(k, _, _) if &**k == key))
            .map(|(_, n)| n)
            .sum()
    }

    #[test]
    fn every_use_counted_in_a_cell_is_swept_exactly_once_while_sweeps_run() {
        let (tx, mut rx) = mpsc::channel(16);
        let recorder = UsageRecorder {
            tx,
            metrics: Metrics::new(),
        };
        let cell = UseCell::new(Arc::from("k1"), Arc::from("a"));
        let mut pending = Pending::new(1000, Metrics::new());
        let mut cells = Vec::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..20_000).for_each(|_| recorder.record(&cell)));
            }
            for _ in 0..200 {
                sweep(&mut cells, &mut rx, &mut pending);
                std::thread::yield_now();
            }
        });
        sweep(&mut cells, &mut rx, &mut pending);
        assert_eq!(key_total(&pending, "k1"), 80_000);
        // Swept dry: nothing is handed over until the next use.
        assert!(rx.try_recv().is_err());
        recorder.record(&cell);
        sweep(&mut cells, &mut rx, &mut pending);
        assert_eq!(key_total(&pending, "k1"), 80_001);
    }

    #[test]
    fn a_use_that_finds_the_queue_full_is_dropped_and_counted_and_the_next_one_retries() {
        let (tx, mut rx) = mpsc::channel(1);
        let metrics = Metrics::new();
        let recorder = UsageRecorder {
            tx,
            metrics: metrics.clone(),
        };
        let first = UseCell::new(Arc::from("k1"), Arc::from("a"));
        let second = UseCell::new(Arc::from("k2"), Arc::from("a"));
        recorder.record(&first);
        recorder.record(&second);
        assert!(metrics.render().contains("scopegate_usage_dropped_total 1"));
        let mut pending = Pending::new(1000, Metrics::new());
        let mut cells = Vec::new();
        sweep(&mut cells, &mut rx, &mut pending);
        recorder.record(&second);
        sweep(&mut cells, &mut rx, &mut pending);
        assert_eq!(key_total(&pending, "k1"), 1);
        assert_eq!(key_total(&pending, "k2"), 1);
    }

    #[test]
    fn adds_up_per_key_and_app_per_day() {
        let mut p = Pending::new(100, Metrics::new());
        let day1 = 20_000 * DAY + 5;
        p.add(use_of("k1", "a", day1));
        p.add(use_of("k1", "a", day1 + 10));
        p.add(use_of("k2", "a", day1 + 20));
        p.add(use_of("k1", "a", day1 + DAY));
        p.seal();
        assert_eq!(p.sealed.len(), 1);
        let mut batch = p.sealed[0].counts.clone();
        batch.keys.sort();
        batch.apps.sort();
        let d1 = utc_date(day1);
        let d2 = utc_date(day1 + DAY);
        assert_eq!(
            batch.keys,
            vec![
                ("k1".into(), d1.clone(), 2),
                ("k1".into(), d2.clone(), 1),
                ("k2".into(), d1.clone(), 1)
            ]
        );
        assert_eq!(batch.apps, vec![("a".into(), d1, 3), ("a".into(), d2, 1)]);
        assert_eq!(p.last_used[&Arc::from("k1")], day1 + DAY);
    }

    #[test]
    fn drops_the_oldest_counters_past_the_bound_and_counts_them() {
        let metrics = Metrics::new();
        let mut p = Pending::new(4, metrics.clone());
        for i in 0..4 {
            p.add(use_of(&format!("k{i}"), &format!("a{i}"), 1_000));
        }
        assert_eq!(p.counts.len(), 4);
        assert!(p
            .counts
            .contains_key(&Counter::Key(Arc::from("k3"), 0, Measure::Requests)));
        assert!(
            !p.counts
                .contains_key(&Counter::Key(Arc::from("k0"), 0, Measure::Requests)),
            "oldest dropped"
        );
        assert!(
            metrics.render().contains("scopegate_usage_dropped_total 4"),
            "{}",
            metrics.render()
        );
    }

    #[test]
    fn a_sealed_batch_does_not_change_while_new_uses_add_up_apart() {
        let mut p = Pending::new(100, Metrics::new());
        p.add(use_of("k1", "a", 1_000));
        p.add(use_of("k1", "a", 1_001));
        p.seal();
        let sealed = p.sealed.clone();
        assert_eq!(sealed.len(), 1);
        assert!(p.counts.is_empty());

        p.add(use_of("k1", "a", 1_002));
        p.add(use_of("k2", "a", 1_003));
        assert_eq!(p.sealed, sealed, "same id, same counts");
        assert_eq!(
            p.counts[&Counter::Key(Arc::from("k1"), 0, Measure::Requests)],
            1
        );
        assert_eq!(
            p.counts[&Counter::App(Arc::from("a"), 0, Measure::Requests)],
            2
        );
        assert_eq!(p.counters(), 2 + 3);
    }

    #[test]
    fn sealing_cuts_batches_of_at_most_one_store_chunk_each_with_its_own_id() {
        let mut p = Pending::new(10_000, Metrics::new());
        for i in 0..BATCH_COUNTERS {
            p.add(use_of(&format!("k{i}"), "a", 1_000));
        }
        // One key counter per use plus the one app counter.
        p.seal();
        let sizes: Vec<usize> = p.sealed.iter().map(UsageBatch::len).collect();
        assert_eq!(sizes, [BATCH_COUNTERS, 1]);
        assert_ne!(p.sealed[0].id, p.sealed[1].id);
        assert_eq!(p.sealed_counters, BATCH_COUNTERS + 1);
        p.confirm(1);
        assert_eq!(p.sealed_counters, 1);
    }

    #[test]
    fn past_the_bound_the_oldest_sealed_batch_goes_first_and_is_counted() {
        let metrics = Metrics::new();
        let mut p = Pending::new(4, metrics.clone());
        p.add(use_of("k0", "a0", 1_000));
        p.add(use_of("k0", "a0", 1_000));
        p.seal();
        p.add(use_of("k1", "a1", 1_000));
        assert_eq!((p.sealed.len(), p.counters()), (1, 4));
        // A fifth counter: the sealed batch (2 counters of 2 uses each) goes, whole.
        p.add(use_of("k2", "a1", 1_000));
        assert!(p.sealed.is_empty());
        assert_eq!(p.counters(), 3);
        assert!(
            metrics.render().contains("scopegate_usage_dropped_total 4"),
            "{}",
            metrics.render()
        );
    }

    /// Fails the first `failures` writes, as a store that timed out would (after applying
    /// them, or not); records every batch it was sent.
    struct FlakyStore {
        failures: std::sync::atomic::AtomicUsize,
        sent: std::sync::Mutex<Vec<Vec<UsageBatch>>>,
    }

    impl FlakyStore {
        fn new(failures: usize) -> FlakyStore {
            FlakyStore {
                failures: failures.into(),
                sent: Default::default(),
            }
        }

        fn sent(&self) -> Vec<Vec<UsageBatch>> {
            self.sent.lock().expect("lock").clone()
        }
    }

    #[async_trait::async_trait]
    impl UsageSink for FlakyStore {
        async fn add_usage(&self, batches: &[UsageBatch]) -> Result<(), StoreError> {
            self.sent.lock().expect("lock").push(batches.to_vec());
            let fail = self
                .failures
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok();
            match fail {
                true => Err(StoreError::Unavailable("timed out".into())),
                false => Ok(()),
            }
        }

        async fn touch_keys(&self, _: &[(String, UnixSeconds)]) -> Result<(), StoreError> {
            Ok(())
        }

        /// Never read by these tests; answers as a store that counted nothing would.
        async fn usage(
            &self,
            _: UsageSubject<'_>,
            dates: &[String],
        ) -> Result<Vec<u64>, StoreError> {
            Ok(vec![0; dates.len()])
        }
    }

    fn total(batches: &[UsageBatch]) -> u64 {
        batches
            .iter()
            .flat_map(|b| b.counts.keys.iter())
            .map(|e| e.2)
            .sum()
    }

    #[tokio::test]
    async fn failed_flushes_resend_the_same_batch_and_new_uses_go_in_a_later_one() {
        let store = FlakyStore::new(2);
        let mut p = Pending::new(100, Metrics::new());
        p.add(use_of("k1", "a", 1_000));
        p.add(use_of("k1", "a", 1_000));
        flush(&store, &mut p).await;
        p.add(use_of("k1", "a", 1_001));
        flush(&store, &mut p).await;
        p.add(use_of("k1", "a", 1_002));
        // Third attempt succeeds; what came in meanwhile is sealed and sent right after.
        flush(&store, &mut p).await;
        assert!(p.is_empty());

        let sent = store.sent();
        assert_eq!(sent.len(), 4, "{sent:?}");
        assert_eq!(sent[0], sent[1], "a retry is the same batch");
        assert_eq!(sent[1], sent[2], "a retry is the same batch");
        assert_eq!(total(&sent[0]), 2, "no new count under the old id");
        assert_ne!(sent[3][0].id, sent[0][0].id);
        assert_eq!(total(&sent[3]), 2, "the uses that arrived meanwhile");
    }
}
