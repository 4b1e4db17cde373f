//! Quota counts in the embedded store, so they survive a restart. Used by [`super`] (the embedded store)
//! inside its transactions.
//!
//! One row per key per window: `{key id}\0d\0{YYYY-MM-DD}` and `{key id}\0m\0{YYYY-MM}`. Ids are
//! alphanumeric (no NUL), so `{id}\0d\0` prefixes one key's day rows only; a lease deletes the
//! key's rows of earlier windows, so each key keeps at most one day row and one month row.
//!
//! Beside them, per holder of a key's quota (`{key id}\0t\0{YYYY-MM-DD}\0{holder}`): what was
//! granted to it, taken back from it and added for it, so a step repeated after a timeout (the
//! transaction committed, its answer came too late) applies nothing twice (see [`QuotaAsk`]).

use crate::model::QuotaWindows;
use crate::store::{quota_grant, QuotaAsk, QuotaLease, StoreError};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

const QUOTA: TableDefinition<'_, &str, u64> = TableDefinition::new("quota");
/// (granted, returned, owed) per holder and day.
const TALLIES: TableDefinition<'_, &str, (u64, u64, u64)> = TableDefinition::new("quota_tallies");

pub(super) fn create_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(QUOTA).map_err(db_error)?;
    tx.open_table(TALLIES).map_err(db_error)?;
    Ok(())
}

/// A [`QuotaAsk`] without its borrow, to move into the store's thread.
#[derive(Debug)]
pub(super) struct Tally {
    want: u64,
    holder: String,
    received: u64,
    returned: u64,
    owed: u64,
}

impl Tally {
    pub(super) fn of(ask: &QuotaAsk<'_>) -> Tally {
        Tally {
            want: ask.want,
            holder: ask.holder.to_owned(),
            received: ask.received,
            returned: ask.returned,
            owed: ask.owed,
        }
    }
}

fn tally_row(key_id: &str, windows: &QuotaWindows, holder: &str) -> String {
    format!("{key_id}\0t\0{}\0{holder}", windows.day)
}

fn day_row(key_id: &str, windows: &QuotaWindows) -> String {
    format!("{key_id}\0d\0{}", windows.day)
}

fn month_row(key_id: &str, windows: &QuotaWindows) -> String {
    format!("{key_id}\0m\0{}", windows.month)
}

/// Settles the holder's tallies (what it has not yet given back, grants it never learned of,
/// what it admitted on its own), then counts a grant by [`quota_grant`] in both windows.
pub(super) fn lease(
    tx: &WriteTransaction,
    key_id: &str,
    windows: &QuotaWindows,
    ask: &Tally,
) -> Result<QuotaLease, StoreError> {
    forget_earlier_windows(tx, key_id, windows)?;
    let mut tallies = tx.open_table(TALLIES).map_err(db_error)?;
    let row = tally_row(key_id, windows, &ask.holder);
    let (granted_before, returned_before, owed_before) = tallies
        .get(row.as_str())
        .map_err(db_error)?
        .map_or((0, 0, 0), |v| v.value());
    let back =
        granted_before.saturating_sub(ask.received) + ask.returned.saturating_sub(returned_before);
    let add = ask.owed.saturating_sub(owed_before);
    let mut table = tx.open_table(QUOTA).map_err(db_error)?;
    let (day, month) = (day_row(key_id, windows), month_row(key_id, windows));
    let settle = |used: u64| (used + add).saturating_sub(back);
    let day_used = settle(get(&table, &day)?);
    let month_used = settle(get(&table, &month)?);
    let granted = quota_grant(windows, day_used, month_used, ask.want);
    tallies
        .insert(
            row.as_str(),
            (
                ask.received + granted,
                returned_before.max(ask.returned),
                owed_before.max(ask.owed),
            ),
        )
        .map_err(db_error)?;
    if granted > 0 || back > 0 || add > 0 {
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
        records_holders: false,
    })
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
    let mut tallies = tx.open_table(TALLIES).map_err(db_error)?;
    let from = format!("{key_id}\0t\0");
    let to = format!("{key_id}\0t\0{}", windows.day);
    tallies
        .retain_in(from.as_str()..to.as_str(), |_, _| false)
        .map_err(db_error)?;
    Ok(())
}

fn db_error(e: impl Into<redb::Error>) -> StoreError {
    super::db_error(e)
}
