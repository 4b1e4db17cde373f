//! Usage counts in the embedded store: the tables, adding batches exactly once, reading, and
//! keeping the tables bounded. Used by [`super`] (the embedded store) inside its transactions.
//!
//! Every write of counts also does a bounded share of the cleanup (forgetting old batch ids,
//! pruning rows past retention), so the cost of keeping the file bounded is spread over the
//! flushes and no single transaction scans a whole table.

use crate::model::{UnixSeconds, UsageBatch, UsageSubject};
use crate::store::{usage_cutoff, usage_increments, StoreError, USAGE_BATCH_MEMORY_SECS};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

/// `k\0{key id}\0{date}` or `a\0{app id}\0{date}` -> request count that day. Ids never hold
/// NUL (they are alphanumeric), so `k\0{id}\0` is a prefix of that id's rows only.
const USAGE: TableDefinition<'_, &str, u64> = TableDefinition::new("usage");
/// Batch id -> when it was applied (unix seconds): a batch found here is not applied again.
const BATCHES: TableDefinition<'_, &str, u64> = TableDefinition::new("usage_batches");
/// (applied at, batch id): the same ids in age order, so the oldest are found without a scan.
const BATCH_AGES: TableDefinition<'_, (u64, &str), ()> = TableDefinition::new("usage_batch_ages");
/// Bookkeeping of the row pruning: `prune_from` -> the row the next pass starts at.
const META: TableDefinition<'_, &str, &str> = TableDefinition::new("usage_meta");
const PRUNE_FROM: &str = "prune_from";

/// Usage rows looked at per write for retention; a full pass over a million rows takes about a
/// thousand flushes (minutes of traffic), while rows only age out one day at a time.
const PRUNE_ROWS_PER_WRITE: usize = 1024;
/// Old batch ids forgotten per write, at most: more than the ids one write adds, so the table
/// shrinks back after a burst.
const FORGET_BATCHES_PER_WRITE: usize = 64;

/// A batch as rows of the `usage` table: its id and `(row, count)` pairs.
pub(super) type RowBatch = (String, Vec<(String, u64)>);

/// Creates the usage tables (opening a file from before they existed adds them).
pub(super) fn create_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(USAGE).map_err(db_error)?;
    tx.open_table(BATCHES).map_err(db_error)?;
    tx.open_table(BATCH_AGES).map_err(db_error)?;
    tx.open_table(META).map_err(db_error)?;
    Ok(())
}

/// The batches as rows to add at `now`, checked before any transaction starts; rows dated
/// before the retention period are left out. `None` when there is nothing to write.
pub(super) fn row_batches(
    batches: &[UsageBatch],
    now: UnixSeconds,
) -> Result<Option<Vec<RowBatch>>, StoreError> {
    let cutoff = usage_cutoff(now);
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let rows: Vec<(String, u64)> = usage_increments(&batch.counts)?
            .into_iter()
            .filter(|(_, date, _)| *date >= cutoff.as_str())
            .map(|(subject, date, count)| (usage_row(subject, date), count))
            .collect();
        if !rows.is_empty() {
            out.push((batch.id.clone(), rows));
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Adds each batch not applied before and records its id, then does this write's share of
/// cleanup; all in the caller's transaction, so counts and ids commit together.
pub(super) fn add_batches(
    tx: &WriteTransaction,
    batches: &[RowBatch],
    now: UnixSeconds,
) -> Result<(), StoreError> {
    for (id, rows) in batches {
        if remember_batch(tx, id, now)? {
            add_counts(tx, rows)?;
        }
    }
    forget_old_batches(tx, now)?;
    prune_rows(tx, &usage_cutoff(now))
}

/// Records `id` as applied at `now`; `false` if it already was.
pub(super) fn remember_batch(
    tx: &WriteTransaction,
    id: &str,
    now: UnixSeconds,
) -> Result<bool, StoreError> {
    let mut ids = tx.open_table(BATCHES).map_err(db_error)?;
    if ids.get(id).map_err(db_error)?.is_some() {
        return Ok(false);
    }
    ids.insert(id, now).map_err(db_error)?;
    let mut ages = tx.open_table(BATCH_AGES).map_err(db_error)?;
    ages.insert((now, id), ()).map_err(db_error)?;
    Ok(true)
}

/// Adds each count to its row. Rows may repeat within a batch; they add up.
fn add_counts(tx: &WriteTransaction, rows: &[(String, u64)]) -> Result<(), StoreError> {
    let mut usage = tx.open_table(USAGE).map_err(db_error)?;
    for (row, count) in rows {
        let current = usage
            .get(row.as_str())
            .map_err(db_error)?
            .map_or(0, |v| v.value());
        let total = current
            .checked_add(*count)
            .ok_or_else(|| StoreError::Corrupt(format!("usage count overflow in {row:?}")))?;
        usage.insert(row.as_str(), total).map_err(db_error)?;
    }
    Ok(())
}

/// Forgets batch ids applied more than [`USAGE_BATCH_MEMORY_SECS`] ago, oldest first, a
/// bounded number per call.
pub(super) fn forget_old_batches(
    tx: &WriteTransaction,
    now: UnixSeconds,
) -> Result<(), StoreError> {
    let before = now.saturating_sub(USAGE_BATCH_MEMORY_SECS);
    let mut ages = tx.open_table(BATCH_AGES).map_err(db_error)?;
    let mut old = Vec::new();
    for entry in ages
        .range((0, "")..(before, ""))
        .map_err(db_error)?
        .take(FORGET_BATCHES_PER_WRITE)
    {
        let (key, _) = entry.map_err(db_error)?;
        let (at, id) = key.value();
        old.push((at, id.to_owned()));
    }
    let mut ids = tx.open_table(BATCHES).map_err(db_error)?;
    for (at, id) in &old {
        ages.remove((*at, id.as_str())).map_err(db_error)?;
        ids.remove(id.as_str()).map_err(db_error)?;
    }
    Ok(())
}

/// Looks at the next [`PRUNE_ROWS_PER_WRITE`] rows (continuing where the previous write
/// stopped, wrapping at the end) and removes those dated before `cutoff`.
fn prune_rows(tx: &WriteTransaction, cutoff: &str) -> Result<(), StoreError> {
    let mut meta = tx.open_table(META).map_err(db_error)?;
    let from = meta
        .get(PRUNE_FROM)
        .map_err(db_error)?
        .map(|v| v.value().to_owned())
        .unwrap_or_default();
    let mut usage = tx.open_table(USAGE).map_err(db_error)?;
    let mut stale = Vec::new();
    let mut next = String::new();
    for (seen, entry) in usage.range(from.as_str()..).map_err(db_error)?.enumerate() {
        let (row, _) = entry.map_err(db_error)?;
        let row = row.value();
        if seen == PRUNE_ROWS_PER_WRITE {
            next = row.to_owned();
            break;
        }
        if row_date(row) < cutoff {
            stale.push(row.to_owned());
        }
    }
    for row in &stale {
        usage.remove(row.as_str()).map_err(db_error)?;
    }
    meta.insert(PRUNE_FROM, next.as_str()).map_err(db_error)?;
    Ok(())
}

/// The count in each row, in order (0 where nothing was recorded).
pub(super) fn read_counts(tx: &ReadTransaction, rows: &[String]) -> Result<Vec<u64>, StoreError> {
    let usage = tx.open_table(USAGE).map_err(db_error)?;
    rows.iter()
        .map(|row| {
            usage
                .get(row.as_str())
                .map(|found| found.map_or(0, |v| v.value()))
                .map_err(db_error)
        })
        .collect()
}

/// Removes every usage row of `subject` (at most about [`crate::store::USAGE_RETENTION_DAYS`] of them, since
/// older ones are pruned): the range from its prefix up to the same prefix with the final NUL
/// raised to 0x01, which is exactly the strings starting with the prefix.
pub(super) fn remove_usage(
    tx: &WriteTransaction,
    subject: UsageSubject<'_>,
) -> Result<(), StoreError> {
    let mut usage = tx.open_table(USAGE).map_err(db_error)?;
    let start = usage_prefix(subject);
    let mut end = start.clone();
    end.pop();
    end.push('\u{1}');
    usage
        .retain_in(start.as_str()..end.as_str(), |_, _| false)
        .map_err(db_error)
}

/// The `usage` rows of one subject all start with this.
fn usage_prefix(subject: UsageSubject<'_>) -> String {
    match subject {
        UsageSubject::Key(id) => format!("k\0{id}\0"),
        UsageSubject::App(id) => format!("a\0{id}\0"),
    }
}

pub(super) fn usage_row(subject: UsageSubject<'_>, date: &str) -> String {
    format!("{}{date}", usage_prefix(subject))
}

/// The date a row is for: what follows its last NUL.
fn row_date(row: &str) -> &str {
    row.rsplit('\0').next().unwrap_or(row)
}

fn db_error(e: impl Into<redb::Error>) -> StoreError {
    super::db_error(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_carry_their_date_last() {
        let row = usage_row(UsageSubject::Key("k1"), "2024-02-29");
        assert_eq!(row, "k\0k1\x002024-02-29");
        assert_eq!(row_date(&row), "2024-02-29");
        assert!(row.starts_with(&usage_prefix(UsageSubject::Key("k1"))));
        assert!(!row.starts_with(&usage_prefix(UsageSubject::App("k1"))));
    }
}
