//! Apps and keys in the embedded store: the steps of each write and read, each run inside the
//! one transaction its caller opened (so a check and the write it guards cannot be separated),
//! and the order indexes kept in step ([`super::order`]).

use super::usage::remove_usage;
use super::{db_error, decode, encode, encode_key, order, APPS, APP_NAMES, KEYS, LAST_USED};
use crate::model::{App, AppChange, KeyChange, KeyRecord, UnixSeconds, UsageSubject};
use crate::store::{StoreError, PURGE_CHUNK};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

pub(super) fn insert_app(tx: &WriteTransaction, app: &App) -> Result<(), StoreError> {
    let mut apps = tx.open_table(APPS).map_err(db_error)?;
    let mut names = tx.open_table(APP_NAMES).map_err(db_error)?;
    let name = app.name.to_lowercase();
    // An existing id is a conflict too: overwriting would orphan the old name claim.
    if apps.get(app.id.as_str()).map_err(db_error)?.is_some()
        || names.get(name.as_str()).map_err(db_error)?.is_some()
    {
        return Err(StoreError::Conflict);
    }
    apps.insert(app.id.as_str(), encode(app)?.as_slice())
        .map_err(db_error)?;
    names
        .insert(name.as_str(), app.id.as_str())
        .map_err(db_error)?;
    order::index_app(tx, app)
}

pub(super) fn read_app(tx: &ReadTransaction, id: &str) -> Result<Option<App>, StoreError> {
    let apps = tx.open_table(APPS).map_err(db_error)?;
    let found = apps.get(id).map_err(db_error)?;
    found.map(|json| decode(json.value())).transpose()
}

/// Applies `change` to the stored app in this transaction, so nothing can come between the
/// read and the write.
pub(super) fn change_app(
    tx: &WriteTransaction,
    id: &str,
    change: &AppChange,
    expected_version: Option<u64>,
) -> Result<(App, App), StoreError> {
    let mut apps = tx.open_table(APPS).map_err(db_error)?;
    let old: App = match apps.get(id).map_err(db_error)? {
        Some(json) => decode(json.value())?,
        None => return Err(StoreError::NotFound),
    };
    if expected_version.is_some_and(|v| v != old.version) {
        return Err(StoreError::VersionMismatch);
    }
    let app = change.applied_to(&old);
    let (old_name, new_name) = (old.name.to_lowercase(), app.name.to_lowercase());
    if old_name != new_name {
        move_name_claim(tx, &app.id, &old_name, &new_name)?;
    }
    apps.insert(app.id.as_str(), encode(&app)?.as_slice())
        .map_err(db_error)?;
    Ok((old, app))
}

/// Claims `new` for `id` and releases `old`; `Conflict` if another app holds `new`.
pub(super) fn move_name_claim(
    tx: &WriteTransaction,
    id: &str,
    old: &str,
    new: &str,
) -> Result<(), StoreError> {
    let mut names = tx.open_table(APP_NAMES).map_err(db_error)?;
    let owner = names
        .get(new)
        .map_err(db_error)?
        .map(|v| v.value().to_owned());
    if owner.is_some_and(|owner| owner != id) {
        return Err(StoreError::Conflict);
    }
    names.insert(new, id).map_err(db_error)?;
    release_name(&mut names, id, old)
}

/// Removes the claim on `name` if `id` holds it.
pub(super) fn release_name(
    names: &mut redb::Table<'_, &str, &str>,
    id: &str,
    name: &str,
) -> Result<(), StoreError> {
    let held = names.get(name).map_err(db_error)?.map(|v| v.value() == id);
    if held == Some(true) {
        names.remove(name).map_err(db_error)?;
    }
    Ok(())
}

/// Removes the app record (its keys stop working: they resolve to no app) and queues its keys
/// for [`revoke_chunk`], so one call stays small whatever the number of keys.
pub(super) fn remove_app(
    tx: &WriteTransaction,
    id: &str,
    by: &str,
    expected_version: Option<u64>,
) -> Result<Option<App>, StoreError> {
    let mut apps = tx.open_table(APPS).map_err(db_error)?;
    let old: App = match apps.get(id).map_err(db_error)? {
        Some(json) => decode(json.value())?,
        None => return Ok(None),
    };
    if expected_version.is_some_and(|v| v != old.version) {
        return Err(StoreError::VersionMismatch);
    }
    apps.remove(id).map_err(db_error)?;
    let mut names = tx.open_table(APP_NAMES).map_err(db_error)?;
    release_name(&mut names, id, &old.name.to_lowercase())?;
    order::unindex_app(tx, &old)?;
    order::queue_deleted_app(tx, id, by)?;
    remove_usage(tx, UsageSubject::App(id))?;
    Ok(Some(old))
}

/// Marks up to [`PURGE_CHUNK`] keys of one deleted app revoked, and takes them off its index.
pub(super) fn revoke_chunk(tx: &WriteTransaction, at: UnixSeconds) -> Result<usize, StoreError> {
    let Some((by, ids)) = order::deleted_app_keys(tx, PURGE_CHUNK)? else {
        return Ok(0);
    };
    let revoke = KeyChange::Revoke { at, by };
    for id in &ids {
        let key = match change_key(tx, id, &revoke) {
            Ok(key) => key,
            Err(StoreError::Revoked) => match read_key_for_write(tx, id)? {
                Some(key) => key,
                None => continue,
            },
            Err(StoreError::NotFound) => continue,
            Err(e) => return Err(e),
        };
        order::unindex_from_app(tx, &key)?;
    }
    // A finished app counts as progress too, so callers go on to the next one.
    Ok(ids.len().max(1))
}

pub(super) fn read_key_for_write(
    tx: &WriteTransaction,
    id: &str,
) -> Result<Option<KeyRecord>, StoreError> {
    let keys = tx.open_table(KEYS).map_err(db_error)?;
    let found = keys.get(id).map_err(db_error)?;
    found.map(|json| decode(json.value())).transpose()
}

/// Applies `change` to the stored key in this transaction.
pub(super) fn change_key(
    tx: &WriteTransaction,
    id: &str,
    change: &KeyChange,
) -> Result<KeyRecord, StoreError> {
    let old = read_key_for_write(tx, id)?.ok_or(StoreError::NotFound)?;
    let key = change.applied_to(&old).ok_or(StoreError::Revoked)?;
    let mut keys = tx.open_table(KEYS).map_err(db_error)?;
    keys.insert(id, encode_key(&key)?.as_slice())
        .map_err(db_error)?;
    drop(keys);
    order::track_state(tx, Some(&old), Some(&key))?;
    Ok(key)
}

pub(super) fn insert_key(tx: &WriteTransaction, key: &KeyRecord) -> Result<(), StoreError> {
    let apps = tx.open_table(APPS).map_err(db_error)?;
    if apps.get(key.app_id.as_str()).map_err(db_error)?.is_none() {
        return Err(StoreError::NotFound);
    }
    let mut keys = tx.open_table(KEYS).map_err(db_error)?;
    if keys.get(key.id.as_str()).map_err(db_error)?.is_some() {
        return Err(StoreError::Conflict);
    }
    keys.insert(key.id.as_str(), encode_key(key)?.as_slice())
        .map_err(db_error)?;
    order::index_key(tx, key)?;
    order::track_state(tx, None, Some(key))?;
    if let Some(at) = key.last_used_at {
        let mut last_used = tx.open_table(LAST_USED).map_err(db_error)?;
        last_used.insert(key.id.as_str(), at).map_err(db_error)?;
    }
    Ok(())
}

pub(super) fn read_key(tx: &ReadTransaction, id: &str) -> Result<Option<KeyRecord>, StoreError> {
    let keys = tx.open_table(KEYS).map_err(db_error)?;
    let last_used = tx.open_table(LAST_USED).map_err(db_error)?;
    let Some(json) = keys.get(id).map_err(db_error)? else {
        return Ok(None);
    };
    let mut key: KeyRecord = decode(json.value())?;
    key.last_used_at = last_used.get(id).map_err(db_error)?.map(|at| at.value());
    Ok(Some(key))
}

pub(super) fn remove_key(tx: &WriteTransaction, id: &str) -> Result<bool, StoreError> {
    let mut keys = tx.open_table(KEYS).map_err(db_error)?;
    let mut last_used = tx.open_table(LAST_USED).map_err(db_error)?;
    let removed = keys.remove(id).map_err(db_error)?;
    let Some(json) = removed else {
        return Ok(false);
    };
    let record: KeyRecord = decode(json.value())?;
    drop(json);
    order::unindex_key(tx, &record)?;
    order::track_state(tx, Some(&record), None)?;
    last_used.remove(id).map_err(db_error)?;
    remove_usage(tx, UsageSubject::Key(id))?;
    Ok(true)
}

pub(super) fn record_uses(
    tx: &WriteTransaction,
    uses: &[(String, UnixSeconds)],
) -> Result<(), StoreError> {
    let keys = tx.open_table(KEYS).map_err(db_error)?;
    let mut last_used = tx.open_table(LAST_USED).map_err(db_error)?;
    for (id, at) in uses {
        if keys.get(id.as_str()).map_err(db_error)?.is_none() {
            continue;
        }
        let current = last_used
            .get(id.as_str())
            .map_err(db_error)?
            .map(|v| v.value());
        if current.is_none_or(|current| current < *at) {
            last_used.insert(id.as_str(), *at).map_err(db_error)?;
        }
    }
    Ok(())
}
