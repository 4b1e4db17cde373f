//! Token-quota counts in the embedded store, so they survive a restart. Used by [`super`] (the
//! embedded store) inside its transactions.
//!
//! One row per key per kind of window (`{key id}\0{0|1|2}`: minute, day, month) holding the
//! window it counts and its total; tokens for a later window replace the row, so a key keeps
//! three rows at most whatever its age. Batch ids are remembered with usage's (same table,
//! same forgetting), so a batch written again after a timeout is counted once.

use super::{db_error, usage};
use crate::model::UnixSeconds;
use crate::store::{StoreError, TokenBatch, TokenTotals};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use std::sync::Arc;

/// `{key id}\0{kind}` -> (window number, tokens in it).
const TOKENS: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("token_windows");

pub(super) fn create_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(TOKENS).map_err(db_error)?;
    Ok(())
}

fn row(key_id: &str, kind: usize) -> String {
    format!("{key_id}\0{kind}")
}

/// Adds the batch (unless its id was applied before) and answers the totals of the batch's
/// keys, then `read`'s, in the batch's windows.
pub(super) fn add(
    tx: &WriteTransaction,
    batch: &TokenBatch,
    read: &[Arc<str>],
    now: UnixSeconds,
) -> Result<Vec<TokenTotals>, StoreError> {
    let apply = batch.spent.is_empty() || usage::remember_batch(tx, &batch.id, now)?;
    usage::forget_old_batches(tx, now)?;
    let mut table = tx.open_table(TOKENS).map_err(db_error)?;
    let spent = batch
        .spent
        .iter()
        .map(|(k, n)| (k, if apply { *n } else { 0 }));
    let reads = read.iter().map(|k| (k, 0));
    let mut out = Vec::with_capacity(batch.spent.len() + read.len());
    for (key, n) in spent.chain(reads) {
        let mut totals = [0; 3];
        for (kind, window) in batch.windows.ids.iter().enumerate() {
            let name = row(key, kind);
            let held = table
                .get(name.as_str())
                .map_err(db_error)?
                .map(|v| v.value());
            let total = match held {
                Some((w, t)) if w == *window => t,
                // A later window than the batch's: the batch's is over, nothing to add to.
                Some((w, _)) if w > *window => continue,
                _ => 0,
            };
            let total = total.saturating_add(n);
            if n > 0 {
                table
                    .insert(name.as_str(), (*window, total))
                    .map_err(db_error)?;
            }
            totals[kind] = total;
        }
        out.push(totals);
    }
    Ok(out)
}
