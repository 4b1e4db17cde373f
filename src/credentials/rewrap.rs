//! `scopegate credentials rewrap`: moves every stored value from an old master key to the
//! configured one, through the store directly (no gateway needs to run; with the embedded
//! store none may, since one process holds its file).
//!
//! Each credential is one compare-and-set of its sealed value (with an audit event
//! `credential.updated`, details `"rewrapped": true`), so a value replaced through the admin
//! API meanwhile is never overwritten, and a second run skips what the first did. Plaintexts
//! live only inside this loop, zeroized as each iteration ends.

use super::{open, seal, MasterKey};
use crate::model::{now_unix, AuditEvent, CredentialChange, CredentialRecord, PageRequest};
use crate::store::{Audit, KeyStore, StoreError};
use std::sync::Arc;

/// Credentials read per store call.
const PAGE: usize = 500;
/// Who the audit log names for a rewrap.
pub const REWRAP_ACTOR: &str = "rewrap";

/// What a rewrap did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewrapped {
    /// Moved to the new key.
    pub moved: usize,
    /// Already under the new key (an earlier run).
    pub already: usize,
    /// Names that open under neither key (left as they are).
    pub unreadable: Vec<String>,
}

/// Why a rewrap stopped.
#[derive(Debug, thiserror::Error)]
pub enum RewrapError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}: cannot seal the value")]
    Seal(String),
}

/// Re-seals every credential sealed under `old` with `new`.
pub async fn rewrap(
    store: &dyn KeyStore,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<Rewrapped, RewrapError> {
    let mut done = Rewrapped::default();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_credentials(
                PageRequest {
                    cursor: cursor.as_deref(),
                    limit: PAGE,
                },
                &|_: &CredentialRecord| true,
            )
            .await?;
        for record in page.items {
            rewrap_one(store, old, new, record, &mut done).await?;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(done),
        }
    }
}

async fn rewrap_one(
    store: &dyn KeyStore,
    old: &MasterKey,
    new: &MasterKey,
    record: CredentialRecord,
    done: &mut Rewrapped,
) -> Result<(), RewrapError> {
    let name = record.name.clone();
    let value = match open(old, &name, &record.sealed) {
        Ok(value) => value,
        Err(_) if open(new, &name, &record.sealed).is_ok() => {
            done.already += 1;
            return Ok(());
        }
        Err(_) => {
            done.unreadable.push(name);
            return Ok(());
        }
    };
    let sealed = seal(new, &name, &value).map_err(|_| RewrapError::Seal(name.clone()))?;
    drop(value);
    let change = CredentialChange {
        value: Some((sealed, record.masked.clone())),
        description: None,
        at: now_unix(),
        by: REWRAP_ACTOR.to_owned(),
        expected_sealed: Some(record.sealed),
        // The plaintext is unchanged: caches keep their decrypted copies.
        announce: false,
    };
    let audit: Audit<CredentialRecord> = Arc::new(|c: &CredentialRecord| AuditEvent {
        at: c.updated_at,
        actor: REWRAP_ACTOR.to_owned(),
        action: "credential.updated".to_owned(),
        app_id: None,
        key_id: None,
        details: serde_json::json!({"credential": c.name, "rewrapped": true}),
    });
    match store
        .update_credential_audited(&name, &change, Some(&audit))
        .await
    {
        Ok(_) => done.moved += 1,
        // Replaced or deleted since it was read: the admin API sealed it under the key in
        // force there, which is not this run's business.
        Err(StoreError::VersionMismatch | StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
