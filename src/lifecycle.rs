//! Key lifecycle upkeep, off the request path: marks the keys of deleted apps revoked, purges
//! revoked keys once `keys.retain_revoked` has passed, and keeps the gauge of keys expiring
//! soon. Every step is a bounded store call, safe to run on every instance at once.

use crate::metrics::Metrics;
use crate::model::{now_unix, AuditEvent};
use crate::store::{KeyStore, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// How often the upkeep runs: a delete starts its own revocation at once, so this only
/// resumes one cut short and purges what aged out.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(60);
/// The actor named in the audit log for what the gateway does by itself.
pub const SYSTEM_ACTOR: &str = "scopegate";
/// "Expiring soon", for the gauge: within a week.
const SOON: u64 = 7 * 86_400;

/// Brings an older version's data up to date (see [`KeyStore::upgrade`]).
pub async fn upgrade(store: &dyn KeyStore) {
    match store.upgrade().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(records = n, "indexed records written by an earlier version"),
        Err(e) => {
            tracing::warn!(error = %e, "upgrading the store layout stopped; will resume later")
        }
    }
}

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
        let mut progress = false;
        for id in ids {
            match purge_one(store, &id).await {
                Ok(true) => {
                    progress = true;
                    purged.push(id);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "purging revoked keys stopped; will resume later");
                    return purged;
                }
            }
        }
        // Ids whose records were gone already (another instance purged them): the indexes no
        // longer hold them either, so the next round moves on; a round with no progress ends.
        if !progress {
            break;
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

/// Removes one revoked key and records that in the audit log (as the gateway's own act).
async fn purge_one(store: &dyn KeyStore, id: &str) -> Result<bool, StoreError> {
    let app_id = store.get_key(id).await?.map(|k| k.app_id);
    let deleted = store.delete_key(id).await?;
    if deleted {
        let event = AuditEvent {
            at: now_unix(),
            actor: SYSTEM_ACTOR.to_owned(),
            action: "key.purged".to_owned(),
            app_id,
            key_id: Some(id.to_owned()),
            details: serde_json::json!({"reason": "revoked longer than keys.retain_revoked"}),
        };
        store.append_audit(&event).await?;
    }
    Ok(deleted)
}

/// Sets `scopegate_keys_expiring_soon` (keys not revoked that expire within a week).
pub async fn count_expiring_soon(store: &dyn KeyStore, metrics: &Metrics) {
    let now = now_unix();
    match store.count_expiring(now, now + SOON).await {
        Ok(n) => metrics.keys_expiring_soon(n),
        Err(e) => tracing::debug!(error = %e, "could not count keys expiring soon"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::key;
    use crate::model::App;
    use crate::store::EmbeddedStore;
    use crate::store::UnauditedWrites;

    #[tokio::test]
    async fn the_gauge_counts_keys_expiring_within_a_week_and_not_revoked() {
        let dir = tempfile::tempdir().expect("dir");
        let store = EmbeddedStore::open(dir.path()).expect("store");
        let app = App {
            id: "a1".into(),
            name: "a".into(),
            scopes: Vec::new(),
            rate_limit: None,
            quota: None,
            token_quota: None,
            created_at: 1,
            created_by: "t".into(),
            version: 0,
            credentials: Default::default(),
        };
        store.create_app(&app).await.expect("app");
        let now = now_unix();
        for (days, revoked) in [(3, false), (6, false), (5, true), (30, false)] {
            let record = key::generate().record("a1", "k", "t", Some(now + days * 86_400));
            store.create_key(&record).await.expect("key");
            if revoked {
                let change = crate::model::KeyChange::Revoke {
                    at: now,
                    by: "t".into(),
                };
                store.update_key(&record.id, &change).await.expect("revoke");
            }
        }
        let metrics = Metrics::new();
        count_expiring_soon(&store, &metrics).await;
        let text = metrics.render();
        assert!(text.contains("scopegate_keys_expiring_soon 2"), "{text}");
    }
}
