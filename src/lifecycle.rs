//! Key lifecycle upkeep, off the request path: marks the keys of deleted apps revoked, purges
//! revoked keys once `keys.retain_revoked` has passed, and keeps the gauge of keys expiring
//! soon. Every step is a bounded store call, safe to run on every instance at once.

use crate::metrics::Metrics;
use crate::model::now_unix;
use crate::store::KeyStore;
use std::sync::Arc;
use std::time::Duration;

/// How often the upkeep runs: a delete starts its own revocation at once, so this only
/// resumes one cut short and purges what aged out.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(60);
/// "Expiring soon", for the gauge: within a week.
const SOON: u64 = 7 * 86_400;

/// Marks the keys of deleted apps revoked, chunk by chunk, until none is left.
pub async fn revoke_keys_of_deleted_apps(store: Arc<dyn KeyStore>) {
    let mut handled = 0;
    loop {
        match store.revoke_keys_of_deleted_apps(now_unix()).await {
            Ok(0) => break,
            Ok(n) => handled += n,
            Err(e) => {
                tracing::warn!(error = %e, "revoking the keys of deleted apps stopped; will resume later");
                break;
            }
        }
    }
    if handled > 0 {
        tracing::info!(handled, "keys of deleted apps revoked");
    }
}

/// Removes keys revoked longer than `retain` ago, with their usage; returns their ids.
pub async fn purge_revoked(store: &dyn KeyStore, retain: Duration) -> Vec<String> {
    let before = now_unix().saturating_sub(retain.as_secs());
    let mut purged = Vec::new();
    loop {
        let ids = match store.revoked_before(before).await {
            Ok(ids) if ids.is_empty() => break,
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "purging revoked keys stopped; will resume later");
                break;
            }
        };
        for id in ids {
            match store.delete_key(&id).await {
                Ok(_) => purged.push(id),
                Err(e) => {
                    tracing::warn!(error = %e, "purging revoked keys stopped; will resume later");
                    return purged;
                }
            }
        }
    }
    if !purged.is_empty() {
        tracing::info!(
            purged = purged.len(),
            "revoked keys purged after their retention"
        );
    }
    purged
}

/// Sets `scopegate_keys_expiring_soon` (keys not revoked that expire within a week).
pub async fn count_expiring_soon(store: &dyn KeyStore, metrics: &Metrics) {
    let now = now_unix();
    match store.count_expiring(now, now + SOON).await {
        Ok(n) => metrics.keys_expiring_soon(n),
        Err(e) => tracing::debug!(error = %e, "could not count keys expiring soon"),
    }
}
