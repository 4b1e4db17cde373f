//! What each admin call does: validate, write to the store with its audit event, drop stale
//! cache entries. Each write runs detached from the caller's connection (see
//! [`Admin::handle`](super::Admin::handle)), so it is carried through whole or not at all.

use super::audit::{audit_of, log_write};
use super::validate::{invalid, matches, valid_name, whole_number, DAY_SECONDS};
use super::views::{AppView, CreateApp, ScopeView, UpdateApp, UsageView};
use super::views::{QuotaView, QuotaWindowView, TokenQuotaView};
use super::Admin;
use crate::auth::key;
use crate::error::AdminError;
use crate::model::{
    now_unix, utc_date, App, AppChange, Page, PageRequest, Quota, RateLimit, TokenQuota,
    UsageSubject,
};
use crate::store::Invalidation;
use serde_json::json;

fn app_target(id: &str) -> super::audit::Target<'_> {
    super::audit::Target {
        app: Some(id),
        key: None,
    }
}

/// Days of usage shown when the caller does not say.
const DEFAULT_USAGE_DAYS: u64 = 7;
/// A year and a day: enough for any report, bounded so one call stays cheap.
const MAX_USAGE_DAYS: u64 = 366;

fn valid_rate_limit(limit: Option<RateLimit>) -> Result<Option<RateLimit>, AdminError> {
    match limit {
        Some(l) if l.per_second == 0 || l.burst == 0 => Err(invalid(
            "rate_limit",
            "per_second and burst must be at least 1",
        )),
        other => Ok(other),
    }
}

/// A window set to 0 would refuse every request: almost certainly a mistake, so it is refused
/// here (leave the window out for no limit on it).
fn valid_quota(quota: Option<Quota>) -> Result<Option<Quota>, AdminError> {
    match quota {
        Some(q) if q.per_day == Some(0) || q.per_month == Some(0) => Err(invalid(
            "quota",
            "per_day and per_month must be at least 1 (leave one out for no limit)",
        )),
        other => Ok(other),
    }
}

/// As [`valid_quota`], for token quotas; an empty one (no window) is refused too.
fn valid_token_quota(quota: Option<TokenQuota>) -> Result<Option<TokenQuota>, AdminError> {
    match quota {
        Some(q) if q.windows().iter().any(|(_, limit)| *limit == Some(0)) => Err(invalid(
            "token_quota",
            "per_minute, per_day and per_month must be at least 1 (leave one out for no limit)",
        )),
        Some(q) if !q.is_limited() => Err(invalid(
            "token_quota",
            "give per_minute, per_day or per_month (or null for the config's default)",
        )),
        other => Ok(other),
    }
}

impl Admin {
    fn valid_scopes(&self, scopes: Vec<String>) -> Result<Vec<String>, AdminError> {
        let live = self.live.load();
        let known = &live.scopes;
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
        let live = self.live.load();
        let scopes = &live.scopes;
        let views: Vec<ScopeView<'_>> = scopes
            .iter()
            .map(|(name, description)| ScopeView { name, description })
            .collect();
        serde_json::json!(views)
    }

    pub(super) async fn create_app(&self, req: CreateApp, by: &str) -> Result<AppView, AdminError> {
        let credentials = match req.credentials {
            Some(map) => self.valid_app_credentials(map).await?,
            None => Default::default(),
        };
        let app = App {
            id: key::random_id(),
            name: valid_name(&req.name)?,
            scopes: self.valid_scopes(req.scopes)?,
            rate_limit: valid_rate_limit(req.rate_limit)?,
            quota: valid_quota(req.quota)?,
            token_quota: valid_token_quota(req.token_quota)?,
            created_at: now_unix(),
            created_by: by.to_owned(),
            version: 0,
            credentials,
        };
        let audit = audit_of(by, "app.created", |app: &App| {
            let details = json!({
                "name": app.name,
                "scopes": app.scopes,
                "rate_limit": app.rate_limit,
                "quota": app.quota,
                "token_quota": app.token_quota,
                "credentials": app.credentials,
            });
            (app_target(&app.id), details)
        });
        self.store.create_app_audited(&app, Some(&audit)).await?;
        log_write(&audit, &app);
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
        by: &str,
    ) -> Result<App, AdminError> {
        let change = AppChange {
            name: req.name.as_deref().map(valid_name).transpose()?,
            scopes: req.scopes.map(|s| self.valid_scopes(s)).transpose()?,
            rate_limit: req.rate_limit.map(valid_rate_limit).transpose()?,
            quota: req.quota.map(valid_quota).transpose()?,
            token_quota: req.token_quota.map(valid_token_quota).transpose()?,
            credentials: match req.credentials {
                Some(map) => Some(self.valid_app_credentials(map).await?),
                None => None,
            },
        };
        let audit = audit_of(by, "app.updated", |(before, app): &(App, App)| {
            let details = json!({
                "name": {"before": before.name, "after": app.name},
                "scopes": {"before": before.scopes, "after": app.scopes},
                "rate_limit": {"before": before.rate_limit, "after": app.rate_limit},
                "quota": {"before": before.quota, "after": app.quota},
                "token_quota": {"before": before.token_quota, "after": app.token_quota},
                "credentials": {"before": before.credentials, "after": app.credentials},
                "version": app.version,
            });
            (app_target(&app.id), details)
        });
        let both = self
            .store
            .update_app_audited(id, &change, expected_version, Some(&audit))
            .await?;
        self.cache
            .invalidate(&Invalidation::App(both.1.id.clone()))
            .await;
        log_write(&audit, &both);
        Ok(both.1)
    }

    /// Deletes the app at once (its keys stop working everywhere), then marks its keys
    /// revoked in the background, in chunks.
    pub(super) async fn delete_app(
        &self,
        id: &str,
        by: &str,
        expected_version: Option<u64>,
    ) -> Result<(), AdminError> {
        let audit = audit_of(by, "app.deleted", |app: &App| {
            let details = json!({"name": app.name, "keys": "revoked with the app"});
            (app_target(&app.id), details)
        });
        let deleted = self
            .store
            .delete_app_audited(id, by, expected_version, Some(&audit))
            .await;
        // Dropped whatever the answer: a write the store applied after all must not stay
        // cached here (the store's feed drops it too, once it commits).
        self.cache
            .invalidate(&Invalidation::App(id.to_owned()))
            .await;
        let old = deleted?.ok_or(AdminError::NotFound)?;
        log_write(&audit, &old);
        tokio::spawn(crate::lifecycle::revoke_keys_of_deleted_apps(
            self.store.clone(),
        ));
        Ok(())
    }

    pub(super) async fn usage(
        &self,
        subject: UsageSubject<'_>,
        days: Option<&str>,
    ) -> Result<Vec<UsageView>, AdminError> {
        let days = match days {
            None => DEFAULT_USAGE_DAYS,
            Some(text) => whole_number("days", text, MAX_USAGE_DAYS)?,
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
        let counts = self.store.day_usage(subject, &dates).await?;
        Ok(dates
            .into_iter()
            .zip(counts)
            .map(|(date, day)| UsageView {
                date,
                requests: day.requests,
                input_tokens: day.input_tokens,
                output_tokens: day.output_tokens,
            })
            .collect())
    }

    /// The key's quota as it applies now (its app's, or the config's default), with the
    /// store's counts: `null` windows are unlimited.
    pub(super) async fn key_quota(&self, id: &str) -> Result<QuotaView, AdminError> {
        let key = self.store.get_key(id).await?.ok_or(AdminError::NotFound)?;
        let app = self.store.get_app(&key.app_id).await?;
        let live = self.live.load();
        let token_quota = crate::budgets::tokens::effective(
            app.as_ref().and_then(|a| a.token_quota),
            live.default_token_quota,
        );
        let tokens = match token_quota {
            Some(q) => Some(self.token_windows(id, q).await?),
            None => None,
        };
        let quota = crate::budgets::quota::effective(app.and_then(|a| a.quota), live.default_quota);
        let Some(quota) = quota else {
            return Ok(QuotaView {
                tokens,
                ..QuotaView::default()
            });
        };
        let windows = crate::budgets::quota::windows_now(quota);
        let (day, month) = self.quotas.used(id, &windows).await?;
        Ok(QuotaView {
            per_day: quota
                .per_day
                .map(|limit| QuotaWindowView::new(limit, day, windows.day_ends)),
            per_month: quota
                .per_month
                .map(|limit| QuotaWindowView::new(limit, month, windows.month_ends)),
            tokens,
        })
    }

    /// The key's token windows now (store totals plus what this instance has not sent).
    async fn token_windows(
        &self,
        id: &str,
        quota: TokenQuota,
    ) -> Result<TokenQuotaView, AdminError> {
        let mut view = TokenQuotaView::default();
        for w in self.tokens.usage(id, quota).await? {
            let window = Some(QuotaWindowView::new(w.limit, w.used, w.ends));
            match w.window {
                "minute" => view.per_minute = window,
                "day" => view.per_day = window,
                _ => view.per_month = window,
            }
        }
        Ok(view)
    }
}
