//! Usage bookkeeping, off the request path: last-used times and request counts per key per day
//! and per app per day (UTC).
//!
//! The request hands (key, app) to a bounded channel and moves on: it never waits and never
//! blocks. A background task adds the uses up and writes them to the store in batches. If the
//! store is down, pending counts are kept (bounded; past the bound the oldest are dropped and
//! counted in `scopegate_usage_dropped_total`) and retried; on shutdown they are flushed.

use crate::metrics::{Metrics, StoreOp};
use crate::model::{now_unix, utc_date, UnixSeconds, UsageCounts};
use crate::store::KeyStore;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Often enough that the admin API shows a use within its 2-second promise.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Uses buffered between the request path and the task; the task drains it far faster than
/// requests arrive, so it fills only if the task is starved.
const CHANNEL_CAPACITY: usize = 65_536;
/// Uses taken off the channel per wake-up of the task, at most.
const RECEIVE_BATCH: usize = 1024;
/// Pending (id, day) counters and last-used entries kept while the store is unreachable.
pub const MAX_PENDING: usize = 200_000;
const DAY: UnixSeconds = 86_400;

/// One use of a key.
struct Use {
    key: Arc<str>,
    app: Arc<str>,
    at: UnixSeconds,
}

/// The request path's handle.
#[derive(Clone)]
pub struct UsageRecorder {
    tx: mpsc::Sender<Use>,
    metrics: Arc<Metrics>,
}

impl UsageRecorder {
    /// Notes one use of `key` (of `app`). Never blocks; a full queue drops the use and counts it.
    pub fn record(&self, key: &Arc<str>, app: &Arc<str>) {
        let event = Use {
            key: key.clone(),
            app: app.clone(),
            at: now_unix(),
        };
        if self.tx.try_send(event).is_err() {
            self.metrics.usage_dropped(1);
        }
    }
}

/// Starts the background writer. It flushes and ends when `shutdown` turns true.
pub fn spawn(
    store: Arc<dyn KeyStore>,
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
    Key(Arc<str>, u64),
    App(Arc<str>, u64),
}

/// Uses not yet in the store.
struct Pending {
    counts: HashMap<Counter, u64>,
    /// Counters in the order they were first seen, to drop the oldest first.
    order: VecDeque<Counter>,
    last_used: HashMap<Arc<str>, UnixSeconds>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Pending {
    fn new(capacity: usize, metrics: Arc<Metrics>) -> Pending {
        Pending {
            counts: HashMap::new(),
            order: VecDeque::new(),
            last_used: HashMap::new(),
            capacity,
            metrics,
        }
    }

    fn add(&mut self, u: Use) {
        let day = u.at / DAY;
        self.count(Counter::Key(u.key.clone(), day));
        self.count(Counter::App(u.app, day));
        if self.last_used.len() < self.capacity || self.last_used.contains_key(&u.key) {
            let at = self.last_used.entry(u.key).or_insert(u.at);
            *at = (*at).max(u.at);
        }
    }

    fn count(&mut self, counter: Counter) {
        if let Some(n) = self.counts.get_mut(&counter) {
            *n += 1;
            return;
        }
        while self.counts.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(dropped) = self.counts.remove(&oldest) {
                self.metrics.usage_dropped(dropped);
            }
        }
        self.order.push_back(counter.clone());
        self.counts.insert(counter, 1);
    }

    fn batch(&self) -> UsageCounts {
        let mut batch = UsageCounts::default();
        for (counter, n) in &self.counts {
            match counter {
                Counter::Key(id, day) => batch.keys.push((id.to_string(), utc_date(day * DAY), *n)),
                Counter::App(id, day) => batch.apps.push((id.to_string(), utc_date(day * DAY), *n)),
            }
        }
        batch
    }

    fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.last_used.is_empty()
    }
}

async fn run(
    store: Arc<dyn KeyStore>,
    mut rx: mpsc::Receiver<Use>,
    mut shutdown: watch::Receiver<bool>,
    mut pending: Pending,
) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Under load many uses queue up between two runs of this task: take them in one go rather
    // than one `select!` round each.
    let mut received = Vec::with_capacity(RECEIVE_BATCH);
    let mut open = true;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut received, RECEIVE_BATCH), if open => {
                open = n > 0;
                received.drain(..).for_each(|u| pending.add(u));
            }
            _ = tick.tick() => flush(&*store, &mut pending).await,
            _ = crate::server::stopped(&mut shutdown) => break,
        }
    }
    while let Ok(u) = rx.try_recv() {
        pending.add(u);
    }
    flush(&*store, &mut pending).await;
    if !pending.is_empty() {
        tracing::warn!(
            counters = pending.counts.len(),
            "usage not written at shutdown: the store is unreachable"
        );
    }
}

async fn flush(store: &dyn KeyStore, pending: &mut Pending) {
    if !pending.counts.is_empty() {
        match store.add_usage(&pending.batch()).await {
            Ok(()) => {
                pending.counts.clear();
                pending.order.clear();
            }
            Err(e) => {
                pending.metrics.store_error(StoreOp::Flush);
                tracing::warn!(error = %e, "usage flush failed; will retry");
            }
        }
    }
    if !pending.last_used.is_empty() {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn use_of(key: &str, app: &str, at: UnixSeconds) -> Use {
        Use {
            key: Arc::from(key),
            app: Arc::from(app),
            at,
        }
    }

    #[test]
    fn adds_up_per_key_and_app_per_day() {
        let mut p = Pending::new(100, Metrics::new());
        let day1 = 20_000 * DAY + 5;
        p.add(use_of("k1", "a", day1));
        p.add(use_of("k1", "a", day1 + 10));
        p.add(use_of("k2", "a", day1 + 20));
        p.add(use_of("k1", "a", day1 + DAY));
        let mut batch = p.batch();
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
        assert!(p.counts.contains_key(&Counter::Key(Arc::from("k3"), 0)));
        assert!(
            !p.counts.contains_key(&Counter::Key(Arc::from("k0"), 0)),
            "oldest dropped"
        );
        assert!(
            metrics.render().contains("scopegate_usage_dropped_total 4"),
            "{}",
            metrics.render()
        );
    }
}
