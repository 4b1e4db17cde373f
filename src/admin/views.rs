//! The admin API's JSON shapes: what callers send and what they get back.

use crate::model::{App, KeyRecord, Quota, RateLimit, TokenQuota, UnixSeconds};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

/// RFC 3339 UTC, seconds precision.
pub(crate) fn rfc3339(at: UnixSeconds) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at)).to_string()
}

fn rfc3339_opt(at: Option<UnixSeconds>) -> Option<String> {
    at.map(rfc3339)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateApp {
    pub name: String,
    pub scopes: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    pub quota: Option<Quota>,
    pub token_quota: Option<TokenQuota>,
    /// Upstream name -> credential name (the app's own credential for that upstream).
    pub credentials: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateApp {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// Absent: unchanged; `null`: back to the config's default.
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<Option<RateLimit>>,
    /// Absent: unchanged; `null`: back to the config's default.
    #[serde(default, deserialize_with = "present")]
    pub quota: Option<Option<Quota>>,
    /// Absent: unchanged; `null`: back to the config's default.
    #[serde(default, deserialize_with = "present")]
    pub token_quota: Option<Option<TokenQuota>>,
    /// Replaces the whole map (`{}` clears it).
    pub credentials: Option<BTreeMap<String, String>>,
}

/// A field given in the body, `null` included (serde maps absent fields to `None` through
/// `default`, so `Some(None)` can only mean an explicit `null`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    pub name: String,
    pub expires_in_days: Option<u32>,
    pub allowed_ips: Option<Vec<String>>,
}

/// The grace of a roll when the caller does not say: a day for clients to move to the new key.
fn default_grace() -> String {
    "24h".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollKey {
    /// How long the old key keeps working (`0s`: it is revoked at once).
    #[serde(default = "default_grace")]
    pub grace: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct ScopeView<'a> {
    pub name: &'a str,
    pub description: &'a str,
}

#[derive(Debug, Serialize)]
pub(crate) struct AppView {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// The app's own limit; `null` means the config's default applies.
    pub rate_limit: Option<RateLimit>,
    /// The app's own quota; `null` means the config's default applies.
    pub quota: Option<Quota>,
    /// The app's own token quota; `null` means the config's default applies.
    pub token_quota: Option<TokenQuota>,
    pub created_at: String,
    pub created_by: String,
    /// Upstream name -> credential name; `{}` when the app names none.
    pub credentials: BTreeMap<String, String>,
}

impl From<App> for AppView {
    fn from(a: App) -> AppView {
        AppView {
            id: a.id,
            name: a.name,
            scopes: a.scopes,
            rate_limit: a.rate_limit,
            quota: a.quota,
            token_quota: a.token_quota,
            created_at: rfc3339(a.created_at),
            created_by: a.created_by,
            credentials: a.credentials,
        }
    }
}

/// `GET /v1/keys/{id}/quota`: each window of the key's quota; `null` when it has none. Its
/// token quota's windows under `tokens` (`null` without a token quota).
#[derive(Debug, Default, Serialize)]
pub(crate) struct QuotaView {
    pub per_day: Option<QuotaWindowView>,
    pub per_month: Option<QuotaWindowView>,
    pub tokens: Option<TokenQuotaView>,
}

/// The windows of a key's token quota, in tokens (input plus output); `null` when unlimited.
#[derive(Debug, Default, Serialize)]
pub(crate) struct TokenQuotaView {
    pub per_minute: Option<QuotaWindowView>,
    pub per_day: Option<QuotaWindowView>,
    pub per_month: Option<QuotaWindowView>,
}

/// One quota window now. `used` counts admitted requests plus slices leased to instances and
/// not yet spent (given back within seconds of going unused).
#[derive(Debug, Serialize)]
pub(crate) struct QuotaWindowView {
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    pub resets_at: String,
    /// `resets_at` as unix seconds, for the `X-Quota-Reset` header.
    #[serde(skip)]
    pub ends: UnixSeconds,
}

impl QuotaWindowView {
    pub(crate) fn new(limit: u64, used: u64, ends: UnixSeconds) -> QuotaWindowView {
        QuotaWindowView {
            limit,
            used,
            remaining: limit.saturating_sub(used),
            resets_at: rfc3339(ends),
            ends,
        }
    }
}

impl QuotaView {
    /// The window with the least left, which is the one that refuses first.
    pub(crate) fn tightest(&self) -> Option<&QuotaWindowView> {
        [self.per_day.as_ref(), self.per_month.as_ref()]
            .into_iter()
            .flatten()
            .min_by_key(|w| w.remaining)
    }
}

/// Requests on one UTC day.
#[derive(Debug, Serialize)]
pub(crate) struct UsageView {
    pub date: String,
    pub requests: u64,
    /// Tokens of metered routes' responses (0 elsewhere).
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct KeyView {
    pub id: String,
    pub app_id: String,
    pub name: String,
    pub masked: String,
    pub status: &'static str,
    pub created_at: String,
    pub created_by: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub allowed_ips: Vec<String>,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
    /// The full key: only in the answer to the create call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl KeyView {
    pub(crate) fn new(k: KeyRecord, now: UnixSeconds) -> KeyView {
        KeyView {
            status: k.status(now).as_str(),
            id: k.id,
            app_id: k.app_id,
            name: k.name,
            masked: k.masked,
            created_at: rfc3339(k.created_at),
            created_by: k.created_by,
            expires_at: rfc3339_opt(k.expires_at),
            last_used_at: rfc3339_opt(k.last_used_at),
            allowed_ips: k.allowed_ips,
            revoked_at: rfc3339_opt(k.revoked_at),
            revoked_by: k.revoked_by,
            key: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
