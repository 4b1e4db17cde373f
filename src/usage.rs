//! Last-used bookkeeping, off the request path.
//!
//! The request hands a key id to a bounded channel and moves on (never waits, never blocks);
//! a background task coalesces uses per key and writes them to the store in batches. If the
//! store is down, pending writes are kept and retried; on shutdown they are flushed.

use crate::model::{now_unix, UnixSeconds};
use crate::store::KeyStore;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Often enough that the admin API shows a use within its 2-second promise.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Uses buffered between the request path and the task; past it a use is dropped (the next
/// use of the same key records it again), never waited for.
const CHANNEL_CAPACITY: usize = 65_536;
/// Distinct keys held while the store is unreachable; beyond it new ones are dropped.
const MAX_PENDING_KEYS: usize = 100_000;

/// The request path's handle: records that a key was used.
#[derive(Clone)]
pub struct UsageRecorder {
    tx: mpsc::Sender<Arc<str>>,
}

impl UsageRecorder {
    /// Never blocks; a full queue drops the event.
    pub fn record(&self, key_id: &Arc<str>) {
        if self.tx.try_send(key_id.clone()).is_err() {
            tracing::debug!("usage queue full; a last-used update was dropped");
        }
    }
}

/// Starts the background writer. It flushes and ends when `shutdown` turns true.
pub fn spawn(
    store: Arc<dyn KeyStore>,
    shutdown: watch::Receiver<bool>,
) -> (UsageRecorder, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let task = tokio::spawn(run(store, rx, shutdown));
    (UsageRecorder { tx }, task)
}

async fn run(
    store: Arc<dyn KeyStore>,
    mut rx: mpsc::Receiver<Arc<str>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending: HashMap<Arc<str>, UnixSeconds> = HashMap::new();
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(id) = rx.recv() => note(&mut pending, id),
            _ = tick.tick() => flush(&*store, &mut pending).await,
            _ = crate::server::stopped(&mut shutdown) => break,
        }
    }
    while let Ok(id) = rx.try_recv() {
        note(&mut pending, id);
    }
    flush(&*store, &mut pending).await;
    if !pending.is_empty() {
        tracing::warn!(
            keys = pending.len(),
            "last-used updates lost at shutdown: store unreachable"
        );
    }
}

fn note(pending: &mut HashMap<Arc<str>, UnixSeconds>, id: Arc<str>) {
    if pending.len() >= MAX_PENDING_KEYS && !pending.contains_key(&id) {
        return;
    }
    pending.insert(id, now_unix());
}

async fn flush(store: &dyn KeyStore, pending: &mut HashMap<Arc<str>, UnixSeconds>) {
    if pending.is_empty() {
        return;
    }
    let batch: Vec<(String, UnixSeconds)> = pending
        .iter()
        .map(|(id, at)| (id.to_string(), *at))
        .collect();
    match store.touch_keys(&batch).await {
        Ok(()) => pending.clear(),
        Err(e) => {
            tracing::warn!(error = %e, keys = batch.len(), "last-used flush failed; will retry")
        }
    }
}
