//! The credential calls (`/v1/credentials`): create, list with search, show, replace the value,
//! delete. Values arrive here once, are checked, sealed under the master key and dropped
//! (zeroized); nothing this module answers, logs or audits holds a value: a credential is shown
//! by its name, description and mask. Without a master key every call is 503
//! `credentials_unavailable`.
//!
//! Bodies are parsed straight into [`Secret`]s, and a body that does not parse is refused with
//! a message of ours, never serde's (which quotes what it could not read).

use super::audit::{audit_of, log_write, Target};
use super::validate::{invalid, matches, valid_description};
use super::views::rfc3339;
use super::Admin;
use crate::credentials::{self, MasterKey, Secret};
use crate::error::AdminError;
use crate::live::LiveConfig;
use crate::model::{now_unix, App, CredentialChange, CredentialRecord, Page, PageRequest};
use crate::store::{Invalidation, LIST_SCAN_BUDGET};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateCredential {
    name: String,
    value: Secret,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplaceCredential {
    value: Secret,
    /// Absent: unchanged.
    description: Option<String>,
}

/// An app that names a credential, for `used_by` and the delete's 409.
#[derive(Clone, Debug, Serialize)]
pub(super) struct AppUse {
    id: String,
    name: String,
    upstream: String,
}

/// Who names a credential: upstreams of the config in force, and apps (per upstream).
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct UsedBy {
    upstreams: Vec<String>,
    apps: Vec<AppUse>,
}

impl UsedBy {
    fn is_empty(&self) -> bool {
        self.upstreams.is_empty() && self.apps.is_empty()
    }

    /// `upstreams a, b; apps x (upstream u)`, for the delete's 409.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.upstreams.is_empty() {
            parts.push(format!("upstreams {}", self.upstreams.join(", ")));
        }
        if !self.apps.is_empty() {
            let apps: Vec<String> = self
                .apps
                .iter()
                .map(|a| format!("{} ({}, upstream {})", a.name, a.id, a.upstream))
                .collect();
            parts.push(format!("apps {}", apps.join(", ")));
        }
        parts.join("; ")
    }
}

/// A credential as the admin API shows it: never the value.
#[derive(Debug, Serialize)]
pub(super) struct CredentialView {
    name: String,
    description: String,
    masked: String,
    created_at: String,
    created_by: String,
    updated_at: String,
    updated_by: String,
    last_used_at: Option<String>,
    used_by: UsedBy,
}

impl CredentialView {
    fn new(c: CredentialRecord, used_by: UsedBy) -> CredentialView {
        CredentialView {
            name: c.name,
            description: c.description,
            masked: c.masked,
            created_at: rfc3339(c.created_at),
            created_by: c.created_by,
            updated_at: rfc3339(c.updated_at),
            updated_by: c.updated_by,
            last_used_at: c.last_used_at.map(rfc3339),
            used_by,
        }
    }
}

/// A credential body, refused with our own words if it does not parse: serde's messages quote
/// what they could not read, which may be the value.
pub(super) fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => invalid(
            "body",
            "expected {\"name\", \"value\", \"description\"?} (or {\"value\", \"description\"?} to replace), all strings",
        ),
        _ => AdminError::BadJson(format!(
            "at line {} column {}",
            e.line(),
            e.column()
        )),
    })
}

fn credential_target<'a>() -> Target<'a> {
    Target::default()
}

/// The upstreams of the config in force whose `credential:` names `name`.
fn upstreams_naming(live: &LiveConfig, name: &str) -> Vec<String> {
    live.upstreams
        .iter()
        .filter(|u| u.spec.credential.as_ref().is_some_and(|c| *c.name == *name))
        .map(|u| u.spec.name.to_string())
        .collect()
}

fn valid_name(name: &str) -> Result<(), AdminError> {
    credentials::valid_name(name).map_err(|message| invalid("name", message))
}

impl Admin {
    /// The master key, or 503 `credentials_unavailable`.
    pub(super) fn master_key(&self) -> Result<&Arc<MasterKey>, AdminError> {
        self.master_key
            .as_ref()
            .ok_or(AdminError::CredentialsUnavailable)
    }

    /// The value checked, sealed for `name`, and its mask.
    fn sealed(&self, name: &str, value: &Secret) -> Result<(String, String), AdminError> {
        let key = self.master_key()?;
        credentials::valid_value(value).map_err(|message| invalid("value", message))?;
        let sealed =
            credentials::seal(key, name, value).map_err(|e| AdminError::Failed(e.to_string()))?;
        Ok((sealed, credentials::masked(value)))
    }

    /// Every app naming a credential, by credential name: one bounded scan of the apps (pages
    /// of the store's list, each command bounded), shared by a whole listing.
    async fn apps_naming(&self) -> Result<BTreeMap<String, Vec<AppUse>>, AdminError> {
        let mut out: BTreeMap<String, Vec<AppUse>> = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = PageRequest {
                cursor: cursor.as_deref(),
                limit: LIST_SCAN_BUDGET,
            };
            let found = self
                .store
                .list_apps(page, &|a: &App| !a.credentials.is_empty())
                .await?;
            for app in found.items {
                for (upstream, credential) in &app.credentials {
                    out.entry(credential.clone()).or_default().push(AppUse {
                        id: app.id.clone(),
                        name: app.name.clone(),
                        upstream: upstream.clone(),
                    });
                }
            }
            match found.next {
                Some(next) => cursor = Some(next),
                None => return Ok(out),
            }
        }
    }

    async fn used_by(&self, name: &str) -> Result<UsedBy, AdminError> {
        let mut apps = self.apps_naming().await?;
        Ok(UsedBy {
            upstreams: upstreams_naming(&self.live.load(), name),
            apps: apps.remove(name).unwrap_or_default(),
        })
    }

    async fn invalidate_credential(&self, name: &str) {
        self.cache
            .invalidate(&Invalidation::Credential(name.to_owned()))
            .await;
    }

    pub(super) async fn create_credential(
        &self,
        req: CreateCredential,
        by: &str,
    ) -> Result<CredentialView, AdminError> {
        self.master_key()?;
        valid_name(&req.name)?;
        let description = valid_description(req.description.as_deref().unwrap_or(""))?;
        let (sealed, masked) = self.sealed(&req.name, &req.value)?;
        drop(req.value);
        let now = now_unix();
        let record = CredentialRecord {
            name: req.name,
            description,
            sealed,
            masked,
            created_at: now,
            created_by: by.to_owned(),
            updated_at: now,
            updated_by: by.to_owned(),
            last_used_at: None,
        };
        let audit = audit_of(by, "credential.created", |c: &CredentialRecord| {
            let details = json!({"credential": c.name, "description": c.description});
            (credential_target(), details)
        });
        let created = self
            .store
            .create_credential_audited(&record, Some(&audit))
            .await;
        self.invalidate_credential(&record.name).await;
        created.map_err(|e| match e {
            crate::store::StoreError::Conflict => AdminError::CredentialExists,
            other => other.into(),
        })?;
        log_write(&audit, &record);
        let used_by = self.used_by(&record.name).await?;
        Ok(CredentialView::new(record, used_by))
    }

    pub(super) async fn list_credentials(
        &self,
        search: Option<&str>,
        page: PageRequest<'_>,
    ) -> Result<Page<CredentialView>, AdminError> {
        self.master_key()?;
        let found = self
            .store
            .list_credentials(page, &|c: &CredentialRecord| matches(&c.name, search))
            .await?;
        let live = self.live.load();
        let mut apps = if found.items.is_empty() {
            BTreeMap::new()
        } else {
            self.apps_naming().await?
        };
        Ok(Page {
            items: found
                .items
                .into_iter()
                .map(|c| {
                    let used_by = UsedBy {
                        upstreams: upstreams_naming(&live, &c.name),
                        apps: apps.remove(&c.name).unwrap_or_default(),
                    };
                    CredentialView::new(c, used_by)
                })
                .collect(),
            next: found.next,
        })
    }

    pub(super) async fn get_credential(&self, name: &str) -> Result<CredentialView, AdminError> {
        self.master_key()?;
        let record = self
            .store
            .get_credential(name)
            .await?
            .ok_or(AdminError::NotFound)?;
        let used_by = self.used_by(name).await?;
        Ok(CredentialView::new(record, used_by))
    }

    /// Replaces the value (and the description when given); every instance drops its copy
    /// through the change feed.
    pub(super) async fn replace_credential(
        &self,
        name: &str,
        req: ReplaceCredential,
        by: &str,
    ) -> Result<CredentialView, AdminError> {
        self.master_key()?;
        let description = req
            .description
            .as_deref()
            .map(valid_description)
            .transpose()?;
        let value = self.sealed(name, &req.value)?;
        drop(req.value);
        let change = CredentialChange {
            value: Some(value),
            description,
            at: now_unix(),
            by: by.to_owned(),
            expected_sealed: None,
            announce: true,
        };
        let audit = audit_of(by, "credential.updated", |c: &CredentialRecord| {
            let details = json!({"credential": c.name, "description": c.description});
            (credential_target(), details)
        });
        let changed = self
            .store
            .update_credential_audited(name, &change, Some(&audit))
            .await;
        self.invalidate_credential(name).await;
        let record = changed?;
        log_write(&audit, &record);
        let used_by = self.used_by(name).await?;
        Ok(CredentialView::new(record, used_by))
    }

    /// Deletes a credential nobody names; 409 naming the upstreams and apps that still do.
    ///
    /// The check and the delete are two steps: an app edited to name the credential in between
    /// is left naming a missing credential (its requests then fail 502
    /// `credential_unavailable`, loudly), which is safe.
    pub(super) async fn delete_credential(&self, name: &str, by: &str) -> Result<(), AdminError> {
        self.master_key()?;
        if self.store.get_credential(name).await?.is_none() {
            return Err(AdminError::NotFound);
        }
        let used_by = self.used_by(name).await?;
        if !used_by.is_empty() {
            return Err(AdminError::CredentialInUse(used_by.describe()));
        }
        let audit = audit_of(by, "credential.deleted", |c: &CredentialRecord| {
            (credential_target(), json!({"credential": c.name}))
        });
        let deleted = self
            .store
            .delete_credential_audited(name, Some(&audit))
            .await;
        self.invalidate_credential(name).await;
        let old = deleted?.ok_or(AdminError::NotFound)?;
        log_write(&audit, &old);
        Ok(())
    }

    /// An app's `credentials` map, checked: each upstream configured, each credential named
    /// well and stored.
    pub(super) async fn valid_app_credentials(
        &self,
        map: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, AdminError> {
        let upstreams: Vec<Arc<str>> = self
            .live
            .load()
            .upstreams
            .iter()
            .map(|u| u.spec.name.clone())
            .collect();
        for (upstream, credential) in &map {
            if !upstreams.iter().any(|u| **u == **upstream) {
                return Err(invalid(
                    "credentials",
                    format!("unknown upstream {upstream:?}"),
                ));
            }
            credentials::valid_name(credential)
                .map_err(|m| invalid("credentials", format!("credential name {m}")))?;
            if self.store.get_credential(credential).await?.is_none() {
                return Err(invalid(
                    "credentials",
                    format!("no credential named {credential:?}"),
                ));
            }
        }
        Ok(map)
    }
}
