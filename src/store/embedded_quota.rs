//! Quota counts in the embedded store, so they survive a restart. Used by [`super::embedded`]
//! inside its transactions.
//!
//! One row per key per window: `{key id}\0d\0{YYYY-MM-DD}` and `{key id}\0m\0{YYYY-MM}`. Ids are
//! alphanumeric (no NUL), so `{id}\0d\0` prefixes one key's day rows only; a lease deletes the
//! key's rows of earlier windows, so each key keeps at most one day row and one month row.

use super::{quota_grant, QuotaLease, StoreError};
use crate::model::QuotaWindows;
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

const QUOTA: TableDefinition<&str, u64> = TableDefinition::new("quota");

pub(super) fn create_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(QUOTA).map_err(db_error)?;
    Ok(())
}

fn day_row(key_id: &str, windows: &QuotaWindows) -> String {
    format!("{key_id}\0d\0{}", windows.day)
}

fn month_row(key_id: &str, windows: &QuotaWindows) -> String {
    format!("{key_id}\0m\0{}", windows.month)
}

/// Subtracts `give_back` (never below 0), then counts a grant by [`quota_grant`] in both
/// windows.
pub(super) fn lease(
    tx: &WriteTransaction,
    key_id: &str,
    windows: &QuotaWindows,
    want: u64,
    give_back: u64,
) -> Result<QuotaLease, StoreError> {
    forget_earlier_windows(tx, key_id, windows)?;
    let mut table = tx.open_table(QUOTA).map_err(db_error)?;
    let (day, month) = (day_row(key_id, windows), month_row(key_id, windows));
    let day_used = get(&table, &day)?.saturating_sub(give_back);
    let month_used = get(&table, &month)?.saturating_sub(give_back);
    let granted = quota_grant(windows, day_used, month_used, want);
    if granted > 0 || give_back > 0 {
        table
            .insert(day.as_str(), day_used + granted)
            .map_err(db_error)?;
        table
            .insert(month.as_str(), month_used + granted)
            .map_err(db_error)?;
    }
    Ok(QuotaLease {
        granted,
        day_used: day_used + granted,
        month_used: month_used + granted,
        held_elsewhere_ms: 0,
    })
}

/// Adds `delta` to both counts, never below 0.
pub(super) fn adjust(
    tx: &WriteTransaction,
    key_id: &str,
    windows: &QuotaWindows,
    delta: i64,
) -> Result<(), StoreError> {
    let mut table = tx.open_table(QUOTA).map_err(db_error)?;
    for row in [day_row(key_id, windows), month_row(key_id, windows)] {
        let now = get(&table, &row)?;
        let next = now.saturating_add_signed(delta);
        table.insert(row.as_str(), next).map_err(db_error)?;
    }
    Ok(())
}

pub(super) fn used(
    tx: &ReadTransaction,
    key_id: &str,
    windows: &QuotaWindows,
) -> Result<(u64, u64), StoreError> {
    let table = tx.open_table(QUOTA).map_err(db_error)?;
    Ok((
        get(&table, &day_row(key_id, windows))?,
        get(&table, &month_row(key_id, windows))?,
    ))
}

fn get(table: &impl ReadableTable<&'static str, u64>, row: &str) -> Result<u64, StoreError> {
    Ok(table.get(row).map_err(db_error)?.map_or(0, |v| v.value()))
}

/// Deletes the key's rows of days and months before `windows` (dates sort as text).
fn forget_earlier_windows(
    tx: &WriteTransaction,
    key_id: &str,
    windows: &QuotaWindows,
) -> Result<(), StoreError> {
    let mut table = tx.open_table(QUOTA).map_err(db_error)?;
    for (kind, current) in [("d", &windows.day), ("m", &windows.month)] {
        let from = format!("{key_id}\0{kind}\0");
        let to = format!("{key_id}\0{kind}\0{current}");
        table
            .retain_in(from.as_str()..to.as_str(), |_, _| false)
            .map_err(db_error)?;
    }
    Ok(())
}

fn db_error(e: impl Into<redb::Error>) -> StoreError {
    super::embedded::db_error(e)
}
