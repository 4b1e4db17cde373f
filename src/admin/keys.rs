//! The key calls: create (with the expiry policy and an IP allowlist), list, show, revoke
//! (the record stays), disable / enable, and roll with a grace period. Each change goes to the
//! store as one atomic edit of the key as stored then, together with its audit event, and drops
//! this instance's cached copy; other instances learn of it through the store's change feed.

use super::audit::{audit_of, log_write};
use super::validate::{invalid, matches, valid_name, whole_number, DAY_SECONDS};
use super::views::{rfc3339, CreateKey, KeyView, RollKey};
use super::Admin;
use crate::auth::key;
use crate::config::values::cidr;
use crate::error::AdminError;
use crate::model::{now_unix, KeyChange, KeyRecord, KeyStatus, Page, PageRequest, UnixSeconds};
use crate::store::{Invalidation, StoreError};
use serde_json::json;
use std::time::Duration;

/// Ten years: the longest expiry unless `keys.max_expires_in_days` says less.
const MAX_EXPIRY_DAYS: u32 = 3650;
/// More addresses than any real allowlist holds; bounds the work of one check.
const MAX_ALLOWED_IPS: usize = 100;
/// A roll's longest grace: the old key ends within a month at most.
const MAX_GRACE: Duration = Duration::from_secs(30 * 86_400);

/// Filters of a key listing, as given in the query string.
#[derive(Debug, Default)]
pub(super) struct KeyFilter {
    pub(super) search: Option<String>,
    pub(super) status: Option<String>,
    pub(super) expiring_within_days: Option<String>,
}

fn valid_status(status: &str) -> Result<KeyStatus, AdminError> {
    KeyStatus::ALL
        .into_iter()
        .find(|s| s.as_str() == status)
        .ok_or_else(|| {
            let all: Vec<&str> = KeyStatus::ALL.iter().map(|s| s.as_str()).collect();
            invalid("status", format!("must be one of {}", all.join(", ")))
        })
}

/// Each entry an address or a CIDR, as the proxy will read it; kept as written.
fn valid_allowed_ips(list: Vec<String>) -> Result<Vec<String>, AdminError> {
    if list.len() > MAX_ALLOWED_IPS {
        return Err(invalid(
            "allowed_ips",
            format!("at most {MAX_ALLOWED_IPS} entries"),
        ));
    }
    list.into_iter()
        .map(|entry| {
            let entry = entry.trim().to_owned();
            cidr(&entry)
                .map(|_| entry)
                .map_err(|e| invalid("allowed_ips", e))
        })
        .collect()
}

fn revoked_conflict(e: StoreError) -> AdminError {
    match e {
        StoreError::Revoked => AdminError::KeyRevoked,
        other => other.into(),
    }
}

impl Admin {
    /// When a key asked for with `days` (or the policy's default) expires; 422 past the
    /// policy's maximum.
    fn expiry(
        &self,
        days: Option<u32>,
        now: UnixSeconds,
    ) -> Result<Option<UnixSeconds>, AdminError> {
        let policy = self.live.load().key_policy;
        let max = policy.max_expires_in_days.unwrap_or(MAX_EXPIRY_DAYS);
        match days.or(policy.default_expires_in_days) {
            Some(0) => Err(invalid("expires_in_days", "must be at least 1")),
            Some(d) if d > max => Err(invalid("expires_in_days", format!("must be at most {max}"))),
            Some(d) => Ok(Some(now + u64::from(d) * DAY_SECONDS)),
            None => Ok(None),
        }
    }

    pub(super) async fn create_key(
        &self,
        app_id: &str,
        req: CreateKey,
        by: &str,
    ) -> Result<KeyView, AdminError> {
        let name = valid_name(&req.name)?;
        let now = now_unix();
        let expires_at = self.expiry(req.expires_in_days, now)?;
        let allowed_ips = valid_allowed_ips(req.allowed_ips.unwrap_or_default())?;
        let new = key::generate();
        let mut record = new.record(app_id, &name, by, expires_at);
        record.allowed_ips = allowed_ips;
        let audit = audit_of(by, "key.created", move |k: &KeyRecord| {
            let details = json!({
                "name": k.name,
                "expires_at": k.expires_at.map(rfc3339),
                "allowed_ips": k.allowed_ips,
            });
            (key_target(k), details)
        });
        let created = self.store.create_key_audited(&record, Some(&audit)).await;
        // A miss cached before this key existed must not hide it.
        self.invalidate_key(&record.id).await;
        created?;
        log_write(&audit, &record);
        let mut view = KeyView::new(record, now_unix());
        view.key = Some(new.full);
        Ok(view)
    }

    pub(super) async fn list_keys(
        &self,
        app_id: Option<&str>,
        filter: &KeyFilter,
        page: PageRequest<'_>,
    ) -> Result<Page<KeyView>, AdminError> {
        if let Some(id) = app_id {
            self.store.get_app(id).await?.ok_or(AdminError::NotFound)?;
        }
        let now = now_unix();
        let status = filter.status.as_deref().map(valid_status).transpose()?;
        let within = filter
            .expiring_within_days
            .as_deref()
            .map(|d| whole_number("expiring_within_days", d, MAX_EXPIRY_DAYS.into()))
            .transpose()?;
        let search = filter.search.as_deref();
        let keep = |k: &KeyRecord| {
            matches(&k.name, search)
                && status.is_none_or(|s| k.status(now) == s)
                && within.is_none_or(|days| expires_within(k, now, days))
        };
        let found = self.store.list_keys(app_id, page, &keep).await?;
        Ok(Page {
            items: found
                .items
                .into_iter()
                .map(|k| KeyView::new(k, now))
                .collect(),
            next: found.next,
        })
    }

    pub(super) async fn get_key(&self, id: &str) -> Result<KeyView, AdminError> {
        let k = self.store.get_key(id).await?.ok_or(AdminError::NotFound)?;
        Ok(KeyView::new(k, now_unix()))
    }

    /// Applies `change` with the event `action` names; this instance's cached copy is dropped
    /// whatever the store answered (a write it applied after all must not stay cached; the
    /// store's feed drops it too once it commits).
    async fn change_key(
        &self,
        id: &str,
        change: &KeyChange,
        by: &str,
        action: &'static str,
    ) -> Result<KeyRecord, AdminError> {
        let audit = audit_of(by, action, |k: &KeyRecord| (key_target(k), json!({})));
        let changed = self
            .store
            .update_key_audited(id, change, Some(&audit))
            .await;
        self.invalidate_key(id).await;
        let key = changed.map_err(revoked_conflict)?;
        log_write(&audit, &key);
        Ok(key)
    }

    async fn invalidate_key(&self, id: &str) {
        self.cache
            .invalidate(&Invalidation::Key(id.to_owned()))
            .await;
    }

    /// Revokes a key for good; the record stays listed. Revoking it again changes nothing
    /// (and answers the same).
    pub(super) async fn revoke_key(&self, id: &str, by: &str) -> Result<(), AdminError> {
        let change = KeyChange::Revoke {
            at: now_unix(),
            by: by.to_owned(),
        };
        match self.change_key(id, &change, by, "key.revoked").await {
            Ok(_) | Err(AdminError::KeyRevoked) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn set_disabled(
        &self,
        id: &str,
        disabled: bool,
        by: &str,
    ) -> Result<KeyView, AdminError> {
        let (change, action) = if disabled {
            (KeyChange::Disable, "key.disabled")
        } else {
            (KeyChange::Enable, "key.enabled")
        };
        let key = self.change_key(id, &change, by, action).await?;
        Ok(KeyView::new(key, now_unix()))
    }

    /// Issues a new key for the same app, name, allowlist and lifetime, and ends the old one
    /// after `grace` (at once for `0s`), in one store step: a roll racing a revoke either
    /// leaves both keys as they were or does both, never a new key that nobody was shown.
    pub(super) async fn roll_key(
        &self,
        id: &str,
        req: RollKey,
        by: &str,
    ) -> Result<KeyView, AdminError> {
        let grace = humantime::parse_duration(req.grace.trim())
            .map_err(|e| invalid("grace", format!("{:?} is not a duration ({e})", req.grace)))?;
        if grace > MAX_GRACE {
            return Err(invalid("grace", "must be at most 30 days"));
        }
        let old = self.store.get_key(id).await?.ok_or(AdminError::NotFound)?;
        if old.revoked_at.is_some() {
            return Err(AdminError::KeyRevoked);
        }
        let now = now_unix();
        let new = key::generate();
        let lifetime = old.expires_at.map(|at| at.saturating_sub(old.created_at));
        let mut record = new.record(&old.app_id, &old.name, by, lifetime.map(|l| now + l));
        record.allowed_ips = old.allowed_ips.clone();
        let end = if grace.is_zero() {
            KeyChange::Revoke {
                at: now,
                by: by.to_owned(),
            }
        } else {
            KeyChange::EndBy(now + grace.as_secs().max(1))
        };
        let new_id = record.id.clone();
        let audit = audit_of(by, "key.rolled", move |old: &KeyRecord| {
            let details = json!({
                "new_key_id": new_id,
                "grace": humantime::format_duration(grace).to_string(),
                "old_key_ends_at": old.revoked_at.or(old.expires_at).map(rfc3339),
            });
            (key_target(old), details)
        });
        let rolled = self.store.roll_key(id, &record, &end, Some(&audit)).await;
        self.invalidate_key(&record.id).await;
        self.invalidate_key(id).await;
        let old = rolled.map_err(revoked_conflict)?;
        log_write(&audit, &old);
        let mut view = KeyView::new(record, now_unix());
        view.key = Some(new.full);
        Ok(view)
    }
}

fn key_target(key: &KeyRecord) -> super::audit::Target<'_> {
    super::audit::Target {
        app: Some(&key.app_id),
        key: Some(&key.id),
    }
}

fn expires_within(k: &KeyRecord, now: UnixSeconds, days: u64) -> bool {
    k.revoked_at.is_none()
        && k.expires_at
            .is_some_and(|at| at > now && at <= now + days * DAY_SECONDS)
}
