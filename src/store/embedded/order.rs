//! The embedded store's listing order: `(created_at, id)` indexes of apps, of keys and of each
//! app's keys, so a page is a range read rather than a scan of every record; and the queue of
//! deleted apps whose keys are still to be removed.

use super::{db_error, decode, APPS, KEYS, LAST_USED};
use crate::model::{listing_position, App, KeyRecord};
use crate::store::{Indexed, StoreError};
use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use std::ops::Bound;

/// `{created_at:011}.{app id}` of every app.
pub(super) const APP_ORDER: TableDefinition<'_, &str, ()> = TableDefinition::new("app_order");
/// `{created_at:011}.{key id}` of every key.
pub(super) const KEY_ORDER: TableDefinition<'_, &str, ()> = TableDefinition::new("key_order");
/// `{app id}/{created_at:011}.{key id}`: each app's keys, together.
pub(super) const APP_KEY_ORDER: TableDefinition<'_, &str, ()> =
    TableDefinition::new("app_key_order");
/// Deleted app id -> who deleted it, while its keys are still to be revoked.
pub(super) const DELETED_APPS: TableDefinition<'_, &str, &str> =
    TableDefinition::new("deleted_apps");
/// `{revoked_at:011}.{key id}` of every revoked key, for purging after `keys.retain_revoked`.
pub(super) const REVOKED: TableDefinition<'_, &str, ()> = TableDefinition::new("revoked_keys");
/// `{expires_at:011}.{key id}` of every key that is not revoked and has an expiry.
pub(super) const EXPIRING: TableDefinition<'_, &str, ()> = TableDefinition::new("expiring_keys");

/// The id at the end of a listing position.
fn id_of(position: &str) -> &str {
    position.rsplit('.').next().unwrap_or(position)
}

fn app_key_position(app_id: &str, created_at: u64, key_id: &str) -> String {
    format!("{app_id}/{}", listing_position(created_at, key_id))
}

/// The range of `app_id`'s rows in [`APP_KEY_ORDER`] after `after`: `/` is followed by `0`, and
/// ids hold neither.
fn app_key_range(app_id: &str, after: Option<&str>) -> (Bound<String>, Bound<String>) {
    let start = match after {
        Some(after) => Bound::Excluded(format!("{app_id}/{after}")),
        None => Bound::Included(format!("{app_id}/")),
    };
    (start, Bound::Excluded(format!("{app_id}0")))
}

fn borrowed<'a>(
    start: &'a Bound<String>,
    end: &'a Bound<String>,
) -> (Bound<&'a str>, Bound<&'a str>) {
    (
        start.as_ref().map(String::as_str),
        end.as_ref().map(String::as_str),
    )
}

pub(super) fn index_app(tx: &WriteTransaction, app: &App) -> Result<(), StoreError> {
    let mut order = tx.open_table(APP_ORDER).map_err(db_error)?;
    order
        .insert(listing_position(app.created_at, &app.id).as_str(), ())
        .map_err(db_error)?;
    Ok(())
}

pub(super) fn unindex_app(tx: &WriteTransaction, app: &App) -> Result<(), StoreError> {
    let mut order = tx.open_table(APP_ORDER).map_err(db_error)?;
    order
        .remove(listing_position(app.created_at, &app.id).as_str())
        .map_err(db_error)?;
    Ok(())
}

pub(super) fn index_key(tx: &WriteTransaction, key: &KeyRecord) -> Result<(), StoreError> {
    let mut order = tx.open_table(KEY_ORDER).map_err(db_error)?;
    let mut per_app = tx.open_table(APP_KEY_ORDER).map_err(db_error)?;
    order
        .insert(listing_position(key.created_at, &key.id).as_str(), ())
        .map_err(db_error)?;
    per_app
        .insert(
            app_key_position(&key.app_id, key.created_at, &key.id).as_str(),
            (),
        )
        .map_err(db_error)?;
    Ok(())
}

pub(super) fn unindex_key(tx: &WriteTransaction, key: &KeyRecord) -> Result<(), StoreError> {
    let mut order = tx.open_table(KEY_ORDER).map_err(db_error)?;
    let mut per_app = tx.open_table(APP_KEY_ORDER).map_err(db_error)?;
    order
        .remove(listing_position(key.created_at, &key.id).as_str())
        .map_err(db_error)?;
    per_app
        .remove(app_key_position(&key.app_id, key.created_at, &key.id).as_str())
        .map_err(db_error)?;
    Ok(())
}

/// Up to `n` apps after `after`, in order.
pub(super) fn apps_after(
    tx: &ReadTransaction,
    after: Option<&str>,
    n: usize,
) -> Result<Vec<Indexed<App>>, StoreError> {
    let order = tx.open_table(APP_ORDER).map_err(db_error)?;
    let apps = tx.open_table(APPS).map_err(db_error)?;
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::new();
    for entry in order
        .range::<&str>((start, Bound::Unbounded))
        .map_err(db_error)?
        .take(n)
    {
        let position = entry.map_err(db_error)?.0.value().to_owned();
        let app = apps.get(id_of(&position)).map_err(db_error)?;
        let app = app.map(|json| decode::<App>(json.value())).transpose()?;
        out.push((position, app));
    }
    Ok(out)
}

/// Up to `n` keys (of one app, or all) after `after`, in order, with their last-use times.
pub(super) fn keys_after(
    tx: &ReadTransaction,
    app_id: Option<&str>,
    after: Option<&str>,
    n: usize,
) -> Result<Vec<Indexed<KeyRecord>>, StoreError> {
    let positions = match app_id {
        Some(app_id) => {
            let per_app = tx.open_table(APP_KEY_ORDER).map_err(db_error)?;
            let prefix_len = app_id.len() + 1;
            let (start, end) = app_key_range(app_id, after);
            let rows = per_app
                .range::<&str>(borrowed(&start, &end))
                .map_err(db_error)?;
            rows.take(n)
                .map(|row| Ok(row.map_err(db_error)?.0.value()[prefix_len..].to_owned()))
                .collect::<Result<Vec<_>, StoreError>>()?
        }
        None => {
            let order = tx.open_table(KEY_ORDER).map_err(db_error)?;
            let start = after.map_or(Bound::Unbounded, Bound::Excluded);
            let rows = order
                .range::<&str>((start, Bound::Unbounded))
                .map_err(db_error)?;
            rows.take(n)
                .map(|row| Ok(row.map_err(db_error)?.0.value().to_owned()))
                .collect::<Result<Vec<_>, StoreError>>()?
        }
    };
    let keys = tx.open_table(KEYS).map_err(db_error)?;
    let last_used = tx.open_table(LAST_USED).map_err(db_error)?;
    let mut out = Vec::with_capacity(positions.len());
    for position in positions {
        let id = id_of(&position);
        let key = match keys.get(id).map_err(db_error)? {
            Some(json) => {
                let mut key: KeyRecord = decode(json.value())?;
                key.last_used_at = last_used.get(id).map_err(db_error)?.map(|at| at.value());
                Some(key)
            }
            None => None,
        };
        out.push((position, key));
    }
    Ok(out)
}

/// A deleted app whose keys remain, and up to `n` of those keys' ids; `None` when no deleted
/// app is left. An app with no keys left is taken off the queue.
pub(super) fn deleted_app_keys(
    tx: &WriteTransaction,
    n: usize,
) -> Result<Option<(String, Vec<String>)>, StoreError> {
    let mut deleted = tx.open_table(DELETED_APPS).map_err(db_error)?;
    let first = deleted.first().map_err(db_error)?;
    let Some((app_id, by)) = first.map(|(id, by)| (id.value().to_owned(), by.value().to_owned()))
    else {
        return Ok(None);
    };
    let per_app = tx.open_table(APP_KEY_ORDER).map_err(db_error)?;
    let mut ids = Vec::new();
    let (start, end) = app_key_range(&app_id, None);
    for row in per_app
        .range::<&str>(borrowed(&start, &end))
        .map_err(db_error)?
        .take(n)
    {
        ids.push(id_of(row.map_err(db_error)?.0.value()).to_owned());
    }
    if ids.len() < n {
        deleted.remove(app_id.as_str()).map_err(db_error)?;
    }
    Ok(Some((by, ids)))
}

pub(super) fn queue_deleted_app(
    tx: &WriteTransaction,
    app_id: &str,
    by: &str,
) -> Result<(), StoreError> {
    let mut deleted = tx.open_table(DELETED_APPS).map_err(db_error)?;
    deleted.insert(app_id, by).map_err(db_error)?;
    Ok(())
}

/// Takes a key off its app's index (its app is gone, so it is listed only among all keys).
pub(super) fn unindex_from_app(tx: &WriteTransaction, key: &KeyRecord) -> Result<(), StoreError> {
    let mut per_app = tx.open_table(APP_KEY_ORDER).map_err(db_error)?;
    per_app
        .remove(app_key_position(&key.app_id, key.created_at, &key.id).as_str())
        .map_err(db_error)?;
    Ok(())
}

/// Keeps the revoked and expiring indexes in step with a key going from `old` to `new` (either
/// may be absent: created, deleted).
pub(super) fn track_state(
    tx: &WriteTransaction,
    old: Option<&KeyRecord>,
    new: Option<&KeyRecord>,
) -> Result<(), StoreError> {
    let mut revoked = tx.open_table(REVOKED).map_err(db_error)?;
    let mut expiring = tx.open_table(EXPIRING).map_err(db_error)?;
    let revoked_row = |k: &KeyRecord| k.revoked_at.map(|at| listing_position(at, &k.id));
    let expiring_row = |k: &KeyRecord| match k.revoked_at {
        Some(_) => None,
        None => k.expires_at.map(|at| listing_position(at, &k.id)),
    };
    if let Some(old) = old {
        if let Some(row) = revoked_row(old) {
            revoked.remove(row.as_str()).map_err(db_error)?;
        }
        if let Some(row) = expiring_row(old) {
            expiring.remove(row.as_str()).map_err(db_error)?;
        }
    }
    if let Some(new) = new {
        if let Some(row) = revoked_row(new) {
            revoked.insert(row.as_str(), ()).map_err(db_error)?;
        }
        if let Some(row) = expiring_row(new) {
            expiring.insert(row.as_str(), ()).map_err(db_error)?;
        }
    }
    Ok(())
}

/// Up to `n` ids of keys revoked before `before`.
pub(super) fn revoked_before(
    tx: &ReadTransaction,
    before: u64,
    n: usize,
) -> Result<Vec<String>, StoreError> {
    let revoked = tx.open_table(REVOKED).map_err(db_error)?;
    let end = listing_position(before, "");
    let rows = revoked.range::<&str>(..end.as_str()).map_err(db_error)?;
    rows.take(n)
        .map(|row| Ok(id_of(row.map_err(db_error)?.0.value()).to_owned()))
        .collect()
}

/// How many keys expire in `(from, to]`.
pub(super) fn count_expiring(tx: &ReadTransaction, from: u64, to: u64) -> Result<u64, StoreError> {
    let expiring = tx.open_table(EXPIRING).map_err(db_error)?;
    // Positions of `from` itself sort before `{from}.` + any id; `to + 1` bounds `to`'s.
    let start = listing_position(from + 1, "");
    let end = listing_position(to + 1, "");
    let mut count = 0;
    for row in expiring
        .range::<&str>(start.as_str()..end.as_str())
        .map_err(db_error)?
    {
        row.map_err(db_error)?;
        count += 1;
    }
    Ok(count)
}

/// Builds the indexes of a file written before they existed (once: when they are empty but
/// records are not).
pub(super) fn build_if_missing(tx: &WriteTransaction) -> Result<(), StoreError> {
    let apps_indexed = !tx
        .open_table(APP_ORDER)
        .map_err(db_error)?
        .is_empty()
        .map_err(db_error)?;
    let keys_indexed = !tx
        .open_table(KEY_ORDER)
        .map_err(db_error)?
        .is_empty()
        .map_err(db_error)?;
    if !apps_indexed {
        let apps: Vec<App> = {
            let table = tx.open_table(APPS).map_err(db_error)?;
            let rows = table.iter().map_err(db_error)?;
            rows.map(|row| decode(row.map_err(db_error)?.1.value()))
                .collect::<Result<_, _>>()?
        };
        for app in &apps {
            index_app(tx, app)?;
        }
    }
    if !keys_indexed {
        let keys: Vec<KeyRecord> = {
            let table = tx.open_table(KEYS).map_err(db_error)?;
            let rows = table.iter().map_err(db_error)?;
            rows.map(|row| decode(row.map_err(db_error)?.1.value()))
                .collect::<Result<_, _>>()?
        };
        for key in &keys {
            index_key(tx, key)?;
            track_state(tx, None, Some(key))?;
        }
    }
    Ok(())
}
