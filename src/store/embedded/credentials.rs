//! Upstream credentials in the embedded store: a table of records (the value only sealed), an
//! order table of listing positions (`{created_at:011}.{name}`) and a table of last-use times.
//! Each write is one transaction with its audit event, announced to this process's cache from
//! the committing thread (see `Feed`).

use super::{audited, db_error, decode, encode, read, write, EmbeddedStore};
use crate::model::{
    listing_position, CredentialChange, CredentialRecord, Page, PageRequest, UnixSeconds,
};
use crate::store::{Audit, CredentialRecords, Indexed, Invalidation, Keep, StoreError};
use async_trait::async_trait;
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use std::ops::Bound;

/// Credential name -> record JSON (without its last-use time).
pub(super) const CREDENTIALS: TableDefinition<'_, &str, &[u8]> =
    TableDefinition::new("credentials");
/// `{created_at:011}.{name}` -> (): the listing order.
pub(super) const CREDENTIAL_ORDER: TableDefinition<'_, &str, ()> =
    TableDefinition::new("credential_order");
/// Credential name -> last use, unix seconds.
pub(super) const CREDENTIAL_LAST_USED: TableDefinition<'_, &str, u64> =
    TableDefinition::new("credential_last_used");

pub(super) fn create_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(CREDENTIALS).map_err(db_error)?;
    tx.open_table(CREDENTIAL_ORDER).map_err(db_error)?;
    tx.open_table(CREDENTIAL_LAST_USED).map_err(db_error)?;
    Ok(())
}

fn encode_record(record: &CredentialRecord) -> Result<Vec<u8>, StoreError> {
    encode(&CredentialRecord {
        last_used_at: None,
        ..record.clone()
    })
}

fn insert(tx: &WriteTransaction, record: &CredentialRecord) -> Result<(), StoreError> {
    let mut records = tx.open_table(CREDENTIALS).map_err(db_error)?;
    if records
        .get(record.name.as_str())
        .map_err(db_error)?
        .is_some()
    {
        return Err(StoreError::Conflict);
    }
    records
        .insert(record.name.as_str(), encode_record(record)?.as_slice())
        .map_err(db_error)?;
    let mut order = tx.open_table(CREDENTIAL_ORDER).map_err(db_error)?;
    order
        .insert(
            listing_position(record.created_at, &record.name).as_str(),
            (),
        )
        .map_err(db_error)?;
    Ok(())
}

fn stored(tx: &WriteTransaction, name: &str) -> Result<Option<CredentialRecord>, StoreError> {
    let records = tx.open_table(CREDENTIALS).map_err(db_error)?;
    let found = records.get(name).map_err(db_error)?;
    found.map(|json| decode(json.value())).transpose()
}

fn change(
    tx: &WriteTransaction,
    name: &str,
    change: &CredentialChange,
) -> Result<CredentialRecord, StoreError> {
    let old = stored(tx, name)?.ok_or(StoreError::NotFound)?;
    let record = change.applied_to(&old).ok_or(StoreError::VersionMismatch)?;
    let mut records = tx.open_table(CREDENTIALS).map_err(db_error)?;
    records
        .insert(name, encode_record(&record)?.as_slice())
        .map_err(db_error)?;
    Ok(record)
}

fn remove(tx: &WriteTransaction, name: &str) -> Result<Option<CredentialRecord>, StoreError> {
    let Some(old) = stored(tx, name)? else {
        return Ok(None);
    };
    tx.open_table(CREDENTIALS)
        .map_err(db_error)?
        .remove(name)
        .map_err(db_error)?;
    tx.open_table(CREDENTIAL_ORDER)
        .map_err(db_error)?
        .remove(listing_position(old.created_at, name).as_str())
        .map_err(db_error)?;
    tx.open_table(CREDENTIAL_LAST_USED)
        .map_err(db_error)?
        .remove(name)
        .map_err(db_error)?;
    Ok(Some(old))
}

fn with_last_use(
    tx: &ReadTransaction,
    mut record: CredentialRecord,
) -> Result<CredentialRecord, StoreError> {
    let last_used = tx.open_table(CREDENTIAL_LAST_USED).map_err(db_error)?;
    record.last_used_at = last_used
        .get(record.name.as_str())
        .map_err(db_error)?
        .map(|at| at.value());
    Ok(record)
}

fn get(tx: &ReadTransaction, name: &str) -> Result<Option<CredentialRecord>, StoreError> {
    let records = tx.open_table(CREDENTIALS).map_err(db_error)?;
    let Some(json) = records.get(name).map_err(db_error)? else {
        return Ok(None);
    };
    let record = decode(json.value())?;
    with_last_use(tx, record).map(Some)
}

/// Up to `n` credentials after `after`, in order, with their last-use times.
fn after(
    tx: &ReadTransaction,
    after: Option<&str>,
    n: usize,
) -> Result<Vec<Indexed<CredentialRecord>>, StoreError> {
    let order = tx.open_table(CREDENTIAL_ORDER).map_err(db_error)?;
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::new();
    for entry in order
        .range::<&str>((start, Bound::Unbounded))
        .map_err(db_error)?
        .take(n)
    {
        let position = entry.map_err(db_error)?.0.value().to_owned();
        let name = position
            .split_once('.')
            .map_or(position.as_str(), |(_, name)| name);
        let record = get(tx, name)?;
        out.push((position, record));
    }
    Ok(out)
}

fn touch(tx: &WriteTransaction, uses: &[(String, UnixSeconds)]) -> Result<(), StoreError> {
    let records = tx.open_table(CREDENTIALS).map_err(db_error)?;
    let mut last_used = tx.open_table(CREDENTIAL_LAST_USED).map_err(db_error)?;
    for (name, at) in uses {
        if records.get(name.as_str()).map_err(db_error)?.is_none() {
            continue;
        }
        let current = last_used
            .get(name.as_str())
            .map_err(db_error)?
            .map(|v| v.value());
        if current.is_none_or(|current| current < *at) {
            last_used.insert(name.as_str(), *at).map_err(db_error)?;
        }
    }
    Ok(())
}

#[async_trait]
impl CredentialRecords for EmbeddedStore {
    async fn create_credential_audited(
        &self,
        credential: &CredentialRecord,
        audit: Option<&Audit<CredentialRecord>>,
    ) -> Result<(), StoreError> {
        let (record, audit) = (credential.clone(), audit.cloned());
        self.blocking_with_feed(move |db, feed| {
            write(db, |tx| {
                insert(tx, &record)?;
                audited(tx, audit.as_ref(), &record)
            })?;
            feed.announce([Invalidation::Credential(record.name)]);
            Ok(())
        })
        .await
    }

    async fn get_credential(&self, name: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let name = name.to_owned();
        self.blocking(move |db| read(db, |tx| get(tx, &name))).await
    }

    async fn list_credentials(
        &self,
        page: PageRequest<'_>,
        keep: Keep<'_, CredentialRecord>,
    ) -> Result<Page<CredentialRecord>, StoreError> {
        crate::store::scan_index(page, keep, |start, n| {
            self.blocking(move |db| read(db, |tx| after(tx, start.as_deref(), n)))
        })
        .await
    }

    async fn update_credential_audited(
        &self,
        name: &str,
        change_of: &CredentialChange,
        audit: Option<&Audit<CredentialRecord>>,
    ) -> Result<CredentialRecord, StoreError> {
        let (name, change_of, audit) = (name.to_owned(), change_of.clone(), audit.cloned());
        self.blocking_with_feed(move |db, feed| {
            let record = write(db, |tx| {
                let record = change(tx, &name, &change_of)?;
                audited(tx, audit.as_ref(), &record)?;
                Ok(record)
            })?;
            if change_of.announce {
                feed.announce([Invalidation::Credential(name)]);
            }
            Ok(record)
        })
        .await
    }

    async fn delete_credential_audited(
        &self,
        name: &str,
        audit: Option<&Audit<CredentialRecord>>,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        let (name, audit) = (name.to_owned(), audit.cloned());
        self.blocking_with_feed(move |db, feed| {
            let old = write(db, |tx| {
                let old = remove(tx, &name)?;
                if let Some(old) = &old {
                    audited(tx, audit.as_ref(), old)?;
                }
                Ok(old)
            })?;
            if old.is_some() {
                feed.announce([Invalidation::Credential(name)]);
            }
            Ok(old)
        })
        .await
    }

    async fn touch_credentials(&self, uses: &[(String, UnixSeconds)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let uses = uses.to_vec();
        self.blocking(move |db| write(db, |tx| touch(tx, &uses)))
            .await
    }
}
