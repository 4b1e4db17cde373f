//! The audit log's admin side: every write's event is made here and stored by the store in
//! the same step as the write (so neither is ever kept without the other), the write is logged
//! once the store confirms it, and `GET /v1/audit` reads the log back, newest first, filtered
//! and paginated.

use super::validate::invalid;
use super::views::rfc3339;
use super::Admin;
use crate::error::AdminError;
use crate::model::{now_unix, AuditEvent, Page, PageRequest, UnixSeconds};
use crate::store::Audit;
use serde::Serialize;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// What a write touched.
#[derive(Debug, Default)]
pub(super) struct Target<'a> {
    pub(super) app: Option<&'a str>,
    pub(super) key: Option<&'a str>,
}

/// Filters of `GET /v1/audit`, as given in the query string.
#[derive(Debug, Default)]
pub(super) struct AuditFilter {
    pub(super) since: Option<String>,
    pub(super) app: Option<String>,
    pub(super) key: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct AuditView {
    at: String,
    actor: String,
    action: String,
    app_id: Option<String>,
    key_id: Option<String>,
    details: serde_json::Value,
}

impl From<AuditEvent> for AuditView {
    fn from(e: AuditEvent) -> AuditView {
        AuditView {
            at: rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            app_id: e.app_id,
            key_id: e.key_id,
            details: e.details,
        }
    }
}

fn since(text: &str) -> Result<UnixSeconds, AdminError> {
    humantime::parse_rfc3339_weak(text.trim())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .ok_or_else(|| {
            invalid(
                "since",
                "must be an RFC 3339 time, e.g. 2026-01-31T00:00:00Z",
            )
        })
}

/// The audit event of a write, made from what the write did (`describe` gives its target and
/// details); handed to the store, which keeps it in the same step as the write.
pub(super) fn audit_of<T, F>(by: &str, action: &'static str, describe: F) -> Audit<T>
where
    F: Fn(&T) -> (Target<'_>, serde_json::Value) + Send + Sync + 'static,
{
    let (actor, at) = (by.to_owned(), now_unix());
    Arc::new(move |done: &T| {
        let (target, details) = describe(done);
        AuditEvent {
            at,
            actor: actor.clone(),
            action: action.to_owned(),
            app_id: target.app.map(str::to_owned),
            key_id: target.key.map(str::to_owned),
            details,
        }
    })
}

/// Logs a write the store confirmed, as its audit event tells it.
pub(super) fn log_write<T>(audit: &Audit<T>, done: &T) {
    let e = audit(done);
    let (app, key, details) = (e.app_id.as_deref(), e.key_id.as_deref(), &e.details);
    tracing::info!(actor = e.actor, action = e.action, app, key, %details, "admin write");
}

impl Admin {
    pub(super) async fn list_audit(
        &self,
        filter: &AuditFilter,
        page: PageRequest<'_>,
    ) -> Result<Page<AuditView>, AdminError> {
        let since = filter.since.as_deref().map(since).transpose()?;
        let (app, key) = (filter.app.as_deref(), filter.key.as_deref());
        let keep = |e: &AuditEvent| {
            since.is_none_or(|t| e.at >= t)
                && app.is_none_or(|a| e.app_id.as_deref() == Some(a))
                && key.is_none_or(|k| e.key_id.as_deref() == Some(k))
        };
        let found = self.store.list_audit(page, &keep).await?;
        Ok(Page {
            items: found.items.into_iter().map(AuditView::from).collect(),
            next: found.next,
        })
    }
}
