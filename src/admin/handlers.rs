//! What each admin call does: validate, write to the store, drop stale cache entries.

use super::views::{AppView, CreateApp, CreateKey, KeyView, ScopeView, UpdateApp, UsageView};
use super::Admin;
use crate::auth::key;
use crate::error::AdminError;
use crate::model::{
    now_unix, utc_date, App, AppChange, Page, PageRequest, RateLimit, UsageSubject,
};
use crate::store::{Invalidation, KeyStore};
use std::sync::Arc;

/// Days of usage shown when the caller does not say.
const DEFAULT_USAGE_DAYS: u64 = 7;
/// A year and a day: enough for any report, bounded so one call stays cheap.
const MAX_USAGE_DAYS: u64 = 366;

/// Longest app or key name accepted.
const MAX_NAME_LEN: usize = 200;
/// Ten years: anything longer is almost certainly a typo.
const MAX_EXPIRY_DAYS: u32 = 3650;
const DAY_SECONDS: u64 = 86_400;

fn invalid(field: &'static str, message: impl Into<String>) -> AdminError {
    AdminError::Invalid {
        field,
        message: message.into(),
    }
}

fn valid_name(name: &str) -> Result<String, AdminError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("must be at most {MAX_NAME_LEN} bytes"),
        ));
    }
    Ok(name.to_owned())
}

fn valid_rate_limit(limit: Option<RateLimit>) -> Result<Option<RateLimit>, AdminError> {
    match limit {
        Some(l) if l.per_second == 0 || l.burst == 0 => Err(invalid(
            "rate_limit",
            "per_second and burst must be at least 1",
        )),
        other => Ok(other),
    }
}

fn matches(name: &str, search: Option<&str>) -> bool {
    search.is_none_or(|s| name.to_lowercase().contains(&s.to_lowercase()))
}

impl Admin {
    fn valid_scopes(&self, scopes: Vec<String>) -> Result<Vec<String>, AdminError> {
        let known = self.scopes.load();
        let mut out: Vec<String> = Vec::with_capacity(scopes.len());
        for scope in scopes {
            if !known.iter().any(|(name, _)| *name == scope) {
                return Err(invalid("scopes", format!("unknown scope {scope:?}")));
            }
            if !out.contains(&scope) {
                out.push(scope);
            }
        }
        Ok(out)
    }

    pub(super) fn list_scopes(&self) -> serde_json::Value {
        let scopes = self.scopes.load();
        let views: Vec<ScopeView<'_>> = scopes
            .iter()
            .map(|(name, description)| ScopeView { name, description })
            .collect();
        serde_json::json!(views)
    }

    pub(super) async fn create_app(&self, req: CreateApp, by: &str) -> Result<AppView, AdminError> {
        let app = App {
            id: key::random_id(),
            name: valid_name(&req.name)?,
            scopes: self.valid_scopes(req.scopes)?,
            rate_limit: valid_rate_limit(req.rate_limit)?,
            created_at: now_unix(),
            created_by: by.to_owned(),
            version: 0,
        };
        self.store.create_app(&app).await?;
        tracing::info!(app = %app.id, by, "app created");
        Ok(app.into())
    }

    pub(super) async fn list_apps(
        &self,
        search: Option<&str>,
        page: PageRequest<'_>,
    ) -> Result<Page<AppView>, AdminError> {
        let found = self
            .store
            .list_apps(page, &|a: &App| matches(&a.name, search))
            .await?;
        Ok(Page {
            items: found.items.into_iter().map(AppView::from).collect(),
            next: found.next,
        })
    }

    pub(super) async fn get_app(&self, id: &str) -> Result<App, AdminError> {
        self.store.get_app(id).await?.ok_or(AdminError::NotFound)
    }

    /// Applies only the fields the request names, to the app as stored at that moment, so a
    /// concurrent edit of other fields is never undone.
    pub(super) async fn update_app(
        &self,
        id: &str,
        req: UpdateApp,
        expected_version: Option<u64>,
    ) -> Result<App, AdminError> {
        let change = AppChange {
            name: req.name.as_deref().map(valid_name).transpose()?,
            scopes: req.scopes.map(|s| self.valid_scopes(s)).transpose()?,
            rate_limit: req.rate_limit.map(valid_rate_limit).transpose()?,
        };
        let app = self.store.update_app(id, &change, expected_version).await?;
        self.cache
            .invalidate(&Invalidation::App(app.id.clone()))
            .await;
        tracing::info!(app = %app.id, version = app.version, "app updated");
        Ok(app)
    }

    /// Deletes the app at once (its keys stop working everywhere), then removes its keys in
    /// the background, in chunks.
    pub(super) async fn delete_app(
        &self,
        id: &str,
        expected_version: Option<u64>,
    ) -> Result<(), AdminError> {
        if !self.store.delete_app(id, expected_version).await? {
            return Err(AdminError::NotFound);
        }
        self.cache
            .invalidate(&Invalidation::App(id.to_owned()))
            .await;
        tracing::info!(app = %id, "app deleted");
        tokio::spawn(purge_deleted_apps(self.store.clone()));
        Ok(())
    }

    pub(super) async fn create_key(
        &self,
        app_id: &str,
        req: CreateKey,
        by: &str,
    ) -> Result<KeyView, AdminError> {
        let name = valid_name(&req.name)?;
        let expires_at = match req.expires_in_days {
            Some(0) => return Err(invalid("expires_in_days", "must be at least 1")),
            Some(d) if d > MAX_EXPIRY_DAYS => {
                return Err(invalid(
                    "expires_in_days",
                    format!("must be at most {MAX_EXPIRY_DAYS}"),
                ))
            }
            Some(d) => Some(now_unix() + u64::from(d) * DAY_SECONDS),
            None => None,
        };
        let new = key::generate();
        let record = new.record(app_id, &name, by, expires_at);
        self.store.create_key(&record).await?;
        // A miss cached before this key existed must not hide it.
        self.cache
            .invalidate(&Invalidation::Key(record.id.clone()))
            .await;
        tracing::info!(key = %record.id, app = %app_id, by, "key created");
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
        let search = filter.search.as_deref();
        let keep = |k: &crate::model::KeyRecord| {
            matches(&k.name, search) && status.is_none_or(|s| KeyView::status_of(k, now) == s)
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

    pub(super) async fn usage(
        &self,
        subject: UsageSubject<'_>,
        days: Option<&str>,
    ) -> Result<Vec<UsageView>, AdminError> {
        let days = match days {
            None => DEFAULT_USAGE_DAYS,
            Some(text) => match text.parse::<u64>() {
                Ok(d) if (1..=MAX_USAGE_DAYS).contains(&d) => d,
                _ => {
                    return Err(invalid(
                        "days",
                        format!("must be a whole number from 1 to {MAX_USAGE_DAYS}"),
                    ))
                }
            },
        };
        let exists = match subject {
            UsageSubject::Key(id) => self.store.get_key(id).await?.is_some(),
            UsageSubject::App(id) => self.store.get_app(id).await?.is_some(),
        };
        if !exists {
            return Err(AdminError::NotFound);
        }
        let today = now_unix() / DAY_SECONDS;
        let dates: Vec<String> = (0..days)
            .rev()
            .map(|back| utc_date((today - back.min(today)) * DAY_SECONDS))
            .collect();
        let counts = self.store.usage(subject, &dates).await?;
        Ok(dates
            .into_iter()
            .zip(counts)
            .map(|(date, requests)| UsageView { date, requests })
            .collect())
    }

    pub(super) async fn delete_key(&self, id: &str) -> Result<(), AdminError> {
        if !self.store.delete_key(id).await? {
            return Err(AdminError::NotFound);
        }
        self.cache
            .invalidate(&Invalidation::Key(id.to_owned()))
            .await;
        tracing::info!(key = %id, "key revoked");
        Ok(())
    }
}

/// Filters of a key listing, as given in the query string.
#[derive(Debug, Default)]
pub(super) struct KeyFilter {
    pub(super) search: Option<String>,
    pub(super) status: Option<String>,
}

fn valid_status(status: &str) -> Result<&'static str, AdminError> {
    KeyView::STATUSES
        .iter()
        .copied()
        .find(|s| *s == status)
        .ok_or_else(|| {
            invalid(
                "status",
                format!("must be one of {}", KeyView::STATUSES.join(", ")),
            )
        })
}

/// Removes the keys of deleted apps, chunk by chunk, until none is left. Safe to run on every
/// instance at once: each chunk is one idempotent store call.
pub async fn purge_deleted_apps(store: Arc<dyn KeyStore>) {
    let mut removed = 0;
    loop {
        match store.purge_deleted_apps().await {
            Ok(0) => break,
            Ok(n) => removed += n,
            Err(e) => {
                tracing::warn!(error = %e, "purging the keys of deleted apps stopped; will resume later");
                break;
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, "keys of deleted apps purged");
    }
}
