//! The audit log in the embedded store: a table keyed `{at:011}.{sequence}` (oldest first),
//! read newest first in bounded ranges; appending also drops a bounded number of events older
//! than [`AUDIT_RETENTION`].

use super::{db_error, decode, encode};
use crate::model::{listing_position, AuditEvent};
use crate::store::{Indexed, StoreError, AUDIT_RETENTION};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) const AUDIT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("audit");
/// Old events dropped per append at most: keeps every write small; a steady trickle of writes
/// keeps up with any backlog.
const PRUNE_PER_APPEND: usize = 64;

/// Orders events written in the same second by this process; the random start keeps two
/// processes that used the file one after the other from colliding.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

fn next_row(at: u64) -> String {
    if SEQUENCE.load(Ordering::Relaxed) == 0 {
        let _ = SEQUENCE.compare_exchange(
            0,
            rand::random::<u32>().into(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    listing_position(at, &format!("{n:016x}"))
}

pub(super) fn append(tx: &WriteTransaction, event: &AuditEvent) -> Result<(), StoreError> {
    let mut audit = tx.open_table(AUDIT).map_err(db_error)?;
    audit
        .insert(next_row(event.at).as_str(), encode(event)?.as_slice())
        .map_err(db_error)?;
    let cutoff = listing_position(event.at.saturating_sub(AUDIT_RETENTION.as_secs()), "");
    let old: Vec<String> = audit
        .range::<&str>(..cutoff.as_str())
        .map_err(db_error)?
        .take(PRUNE_PER_APPEND)
        .map(|row| row.map(|(k, _)| k.value().to_owned()).map_err(db_error))
        .collect::<Result<_, _>>()?;
    for row in old {
        audit.remove(row.as_str()).map_err(db_error)?;
    }
    Ok(())
}

/// Up to `n` events older than `before` (newest first).
pub(super) fn before(
    tx: &ReadTransaction,
    before: Option<&str>,
    n: usize,
) -> Result<Vec<Indexed<AuditEvent>>, StoreError> {
    let audit = tx.open_table(AUDIT).map_err(db_error)?;
    let end = before.map_or(Bound::Unbounded, Bound::Excluded);
    let rows = audit
        .range::<&str>((Bound::Unbounded, end))
        .map_err(db_error)?;
    rows.rev()
        .take(n)
        .map(|row| {
            let (k, v) = row.map_err(db_error)?;
            Ok((k.value().to_owned(), Some(decode::<AuditEvent>(v.value())?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PageRequest;
    use crate::store::{EmbeddedStore, Records};

    fn event(at: u64, action: &str) -> AuditEvent {
        AuditEvent {
            at,
            actor: "t".into(),
            action: action.into(),
            app_id: None,
            key_id: None,
            details: serde_json::Value::Null,
        }
    }

    #[tokio::test]
    async fn events_past_retention_are_dropped_as_new_ones_come() {
        let dir = tempfile::tempdir().expect("dir");
        let store = EmbeddedStore::open(dir.path()).expect("store");
        let now = crate::model::now_unix();
        let old = now - AUDIT_RETENTION.as_secs() - 10;
        store
            .append_audit(&event(old, "old"))
            .await
            .expect("append");
        store
            .append_audit(&event(now, "new"))
            .await
            .expect("append");
        let page = PageRequest {
            cursor: None,
            limit: 10,
        };
        let left = store.list_audit(page, &|_| true).await.expect("list");
        let actions: Vec<&str> = left.items.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["new"]);
    }
}
