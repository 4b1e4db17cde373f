//! The records scopegate keeps: apps, their keys, and the limits attached to them.
//!
//! These are what the store persists and the admin API shows; nothing here talks to the network.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (UTC). Stored as a number, shown as RFC 3339 by the admin API.
pub type UnixSeconds = u64;

/// Now, as [`UnixSeconds`].
pub fn now_unix() -> UnixSeconds {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A per-key request budget (GCRA: a sustained rate and a burst).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// A per-key request allowance over UTC calendar windows; a window left out is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_month: Option<u64>,
}

impl Quota {
    /// Whether it limits anything (both windows unset: no quota).
    pub fn is_limited(&self) -> bool {
        self.per_day.is_some() || self.per_month.is_some()
    }
}

/// A per-key token allowance (input plus output tokens of metered routes) over UTC calendar
/// windows; a window left out is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_month: Option<u64>,
}

impl TokenQuota {
    /// Whether it limits anything (every window unset: no token quota).
    pub fn is_limited(&self) -> bool {
        self.per_minute.is_some() || self.per_day.is_some() || self.per_month.is_some()
    }

    /// Each window's name and limit, tightest span first.
    pub fn windows(&self) -> [(&'static str, Option<u64>); 3] {
        [
            ("minute", self.per_minute),
            ("day", self.per_day),
            ("month", self.per_month),
        ]
    }
}

/// An application: the holder of scopes. Keys belong to apps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Overrides the config's default for every key of this app.
    pub rate_limit: Option<RateLimit>,
    /// Overrides the config's default quota for every key of this app. Left out of the stored
    /// JSON when unset, so records written before quotas existed read the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// Overrides the config's default token quota for every key of this app; left out of the
    /// stored JSON when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_quota: Option<TokenQuota>,
    pub created_at: UnixSeconds,
    pub created_by: String,
    /// Bumped by every change; the admin API's `ETag`. Records written before versions existed
    /// read as 0.
    #[serde(default)]
    pub version: u64,
    /// Upstream name -> credential name: the app's own credential for that upstream ("bring
    /// your own key"), used instead of the upstream's. Left out of the stored JSON when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, String>,
}

/// A change to an app's editable fields, applied by the store to the app as it is at that
/// moment, so concurrent changes of different fields both stay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppChange {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// `Some(None)` returns the app to the config's default.
    pub rate_limit: Option<Option<RateLimit>>,
    /// `Some(None)` returns the app to the config's default quota.
    pub quota: Option<Option<Quota>>,
    /// `Some(None)` returns the app to the config's default token quota.
    pub token_quota: Option<Option<TokenQuota>>,
    /// Replaces the whole upstream -> credential map.
    pub credentials: Option<BTreeMap<String, String>>,
}

impl AppChange {
    /// `app` with this change applied and its version bumped.
    pub fn applied_to(&self, app: &App) -> App {
        let mut next = app.clone();
        if let Some(name) = &self.name {
            next.name.clone_from(name);
        }
        if let Some(scopes) = &self.scopes {
            next.scopes.clone_from(scopes);
        }
        if let Some(limit) = self.rate_limit {
            next.rate_limit = limit;
        }
        if let Some(quota) = self.quota {
            next.quota = quota;
        }
        if let Some(quota) = self.token_quota {
            next.token_quota = quota;
        }
        if let Some(credentials) = &self.credentials {
            next.credentials.clone_from(credentials);
        }
        next.version = app.version + 1;
        next
    }
}

/// An upstream credential as stored: its value only sealed (see [`crate::credentials::seal`]),
/// never in plaintext; `masked` is computed from the plaintext when the value is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// base64 of version, nonce and AES-256-GCM ciphertext, the name bound as associated data.
    pub sealed: String,
    pub masked: String,
    pub created_at: UnixSeconds,
    pub created_by: String,
    pub updated_at: UnixSeconds,
    pub updated_by: String,
    /// Kept apart from the record (written in batches by the proxy); filled in on reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<UnixSeconds>,
}

/// A change to a credential, applied by the store to the record as stored at that moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialChange {
    /// The new sealed value and its mask; `None` keeps the value.
    pub value: Option<(String, String)>,
    /// `None` keeps the description.
    pub description: Option<String>,
    pub at: UnixSeconds,
    pub by: String,
    /// Only if the stored sealed value is still this one (`rewrap`): else `VersionMismatch`.
    pub expected_sealed: Option<String>,
    /// Whether caches must drop the credential: false for a rewrap, which keeps the plaintext
    /// (instances still on the old master key keep serving their decrypted copies until they
    /// restart with the new one).
    pub announce: bool,
}

impl CredentialChange {
    /// `record` with this change applied, or `None` if `expected_sealed` does not match it.
    pub fn applied_to(&self, record: &CredentialRecord) -> Option<CredentialRecord> {
        if self
            .expected_sealed
            .as_ref()
            .is_some_and(|s| *s != record.sealed)
        {
            return None;
        }
        let mut next = record.clone();
        if let Some((sealed, masked)) = &self.value {
            next.sealed.clone_from(sealed);
            next.masked.clone_from(masked);
        }
        if let Some(description) = &self.description {
            next.description.clone_from(description);
        }
        next.updated_at = self.at;
        next.updated_by.clone_from(&self.by);
        Some(next)
    }
}

/// Where a listing stands: records are listed in (created_at, id) order, and a page ends at
/// the last record it examined.
#[derive(Clone, Copy, Debug)]
pub struct PageRequest<'a> {
    /// Opaque position from the previous page's `next`; `None` starts at the beginning.
    pub cursor: Option<&'a str>,
    pub limit: usize,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Where the next page starts, when records may remain.
    pub next: Option<String>,
}

/// The position of a record in a listing: ordered by creation time, then id. Ids are
/// alphanumeric, so `.` cannot occur in them and the text sorts as the pair does.
pub fn listing_position(created_at: UnixSeconds, id: &str) -> String {
    format!("{created_at:011}.{id}")
}

/// A stored API key. The secret itself is never stored, only its SHA-256 digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub app_id: String,
    pub name: String,
    /// First 4 and last 4 characters of the full key, the rest `*`.
    pub masked: String,
    /// Lower-case hex SHA-256 of the secret part of the key.
    pub secret_hash: String,
    pub created_at: UnixSeconds,
    pub created_by: String,
    pub expires_at: Option<UnixSeconds>,
    /// Kept apart from the record by the stores (written in batches); filled in on read.
    pub last_used_at: Option<UnixSeconds>,
    /// Client addresses or CIDRs the key may be used from; empty: any. (Left out of the stored
    /// JSON when empty, as are the fields below when unset: records written before they
    /// existed read the same.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<String>,
    /// Stopped for now; `enable` undoes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Revoked for good; the record stays (listed, with its usage) until it is purged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<UnixSeconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
}

/// Where a key stands, most final first: a revoked key never works again, a disabled one until
/// it is enabled, an expired one never (its expiry cannot move later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Expired,
    Disabled,
    Revoked,
}

impl KeyStatus {
    pub const ALL: [KeyStatus; 4] = [
        KeyStatus::Active,
        KeyStatus::Expired,
        KeyStatus::Disabled,
        KeyStatus::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Expired => "expired",
            KeyStatus::Disabled => "disabled",
            KeyStatus::Revoked => "revoked",
        }
    }
}

impl KeyRecord {
    /// Whether the key is past its expiry at `now`.
    pub fn is_expired(&self, now: UnixSeconds) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    pub fn status(&self, now: UnixSeconds) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.disabled {
            KeyStatus::Disabled
        } else if self.is_expired(now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// A change to a key's state, applied by the store to the key as stored at that moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyChange {
    Revoke {
        at: UnixSeconds,
        by: String,
    },
    Disable,
    Enable,
    /// The key ends by `at` at the latest (a roll's grace): its expiry moves earlier, never later.
    EndBy(UnixSeconds),
}

impl KeyChange {
    /// `key` with this change applied; `None` if the key is revoked (nothing changes it then).
    pub fn applied_to(&self, key: &KeyRecord) -> Option<KeyRecord> {
        if key.revoked_at.is_some() {
            return None;
        }
        let mut next = key.clone();
        match self {
            KeyChange::Revoke { at, by } => {
                next.revoked_at = Some(*at);
                next.revoked_by = Some(by.clone());
            }
            KeyChange::Disable => next.disabled = true,
            KeyChange::Enable => next.disabled = false,
            KeyChange::EndBy(at) => {
                next.expires_at = Some(next.expires_at.map_or(*at, |own| own.min(*at)));
            }
        }
        Some(next)
    }
}

/// One admin write, as the audit log keeps it: who did what to which app or key, and the
/// details that matter (scopes before and after, a roll's new key id). Never secret material.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub at: UnixSeconds,
    pub actor: String,
    /// `app.created`, `app.updated`, `app.deleted`, `key.created`, `key.rolled`,
    /// `key.disabled`, `key.enabled`, `key.revoked`, `key.purged`.
    pub action: String,
    pub app_id: Option<String>,
    pub key_id: Option<String>,
    #[serde(default)]
    pub details: serde_json::Value,
}

/// A UTC calendar day, `YYYY-MM-DD`.
///
/// Plain integer arithmetic: the inverse of days-from-civil (Howard Hinnant's `civil_from_days`,
/// <https://howardhinnant.github.io/date_algorithms.html>), on the proleptic Gregorian calendar.
/// Unsigned throughout, since `at` is never before 1970.
pub fn utc_date(at: UnixSeconds) -> String {
    let (year, month, day) = civil_from_days(at / 86_400);
    format!("{year:04}-{month:02}-{day:02}")
}

/// (year, month, day) of day number `days` since 1970-01-01, UTC. No strings: the hot path's
/// windows come from it.
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Days since 0000-03-01: starting the year in March puts the leap day last.
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097; // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let march_month = (5 * day_of_year + 2) / 153; // [0, 11], 0 = March
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// Day number since 1970-01-01 of a valid (year ≥ 1970, month, day).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    // Years start in March, so the leap day is the last day of the (shifted) year.
    let year = year - u64::from(month <= 2);
    let era = year / 400;
    let year_of_era = year % 400;
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).checked_sub(719_468)
}

/// The day number (days since 1970-01-01) of a `YYYY-MM-DD` date as [`utc_date`] writes it;
/// `None` for anything else (another format, an impossible day, a year before 1970).
///
/// Days-from-civil, the inverse of [`utc_date`] (same source); checked by writing the answer
/// back, so only canonical dates pass.
pub fn utc_day_number(date: &str) -> Option<u64> {
    let bytes = date.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let year: u64 = date.get(0..4)?.parse().ok()?;
    let month: u64 = date.get(5..7)?.parse().ok()?;
    let day: u64 = date.get(8..10)?.parse().ok()?;
    if year < 1970 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let number = days_from_civil(year, month, day)?;
    // 02-30 and the like come back as another date: refuse them.
    (utc_date(number * 86_400) == date).then_some(number)
}

/// A key's quota windows at one moment: the UTC day and month it falls in, each window's limit
/// (`None`: unlimited, still counted) and when each ends. Counts are kept per window, so a new
/// day or month starts from zero without anything being reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaWindows {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// `YYYY-MM`.
    pub month: String,
    pub per_day: Option<u64>,
    pub per_month: Option<u64>,
    pub day_ends: UnixSeconds,
    pub month_ends: UnixSeconds,
}

impl QuotaWindows {
    /// The windows `now` falls in, with `quota`'s limits.
    pub fn at(now: UnixSeconds, quota: Quota) -> QuotaWindows {
        let day = utc_date(now);
        let month = day[..7].to_owned();
        QuotaWindows {
            day_ends: (now / 86_400 + 1) * 86_400,
            month_ends: month_end(&day),
            day,
            month,
            per_day: quota.per_day,
            per_month: quota.per_month,
        }
    }

    /// Whether both windows are still the current ones at `now`.
    pub fn current_at(&self, now: UnixSeconds) -> bool {
        now < self.day_ends
    }
}

/// The token-quota windows a moment falls in: its UTC minute, day and month, each as a number
/// that only grows (minutes and days since the epoch; months since year 0), and when each ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenWindows {
    /// Minute, day, month numbers, in [`TokenQuota::windows`] order.
    pub ids: [u64; 3],
    /// When each window ends (unix seconds), same order.
    pub ends: [UnixSeconds; 3],
}

impl TokenWindows {
    /// Arithmetic only (it runs on every metered request): no date string is made.
    pub fn at(now: UnixSeconds) -> TokenWindows {
        let day = now / 86_400;
        let (year, month, _) = civil_from_days(day);
        let (next_year, next_month) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        let month_ends = days_from_civil(next_year, next_month, 1).map_or(u64::MAX, |d| d * 86_400);
        TokenWindows {
            ids: [now / 60, day, year * 12 + month - 1],
            ends: [(now / 60 + 1) * 60, (day + 1) * 86_400, month_ends],
        }
    }
}

/// The first second of the month after the one `date` (`YYYY-MM-DD`) falls in.
fn month_end(date: &str) -> UnixSeconds {
    let year: u64 = date[..4].parse().unwrap_or(1970);
    let month: u64 = date[5..7].parse().unwrap_or(1);
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    utc_day_number(&format!("{year:04}-{month:02}-01")).map_or(u64::MAX, |d| d * 86_400)
}

/// Counts to add, one batch: per key per day and per app per day.
/// Each entry is `(id, field, count)`, the field a [`usage_field`]: the date as [`utc_date`]
/// writes it for requests, with a suffix for tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageCounts {
    pub keys: Vec<(String, String, u64)>,
    pub apps: Vec<(String, String, u64)>,
}

/// What a usage count counts. Stores keep each under its own field of a subject's day, so a
/// store that knew only requests reads tokens as 0 and nothing is migrated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Measure {
    Requests,
    InputTokens,
    OutputTokens,
}

impl Measure {
    pub const ALL: [Measure; 3] = [
        Measure::Requests,
        Measure::InputTokens,
        Measure::OutputTokens,
    ];

    /// What follows the date in the measure's field.
    fn suffix(self) -> &'static str {
        match self {
            Measure::Requests => "",
            Measure::InputTokens => ":in",
            Measure::OutputTokens => ":out",
        }
    }
}

/// The stored field of `measure` on `date` (`YYYY-MM-DD`): the date itself for requests (as
/// before tokens were counted), `YYYY-MM-DD:in` / `:out` for tokens. Sorts with its date, so
/// retention by date applies to every measure alike.
pub fn usage_field(date: &str, measure: Measure) -> String {
    format!("{date}{}", measure.suffix())
}

/// The date of a [`usage_field`], if it is one.
pub fn usage_field_date(field: &str) -> Option<&str> {
    let (date, suffix) = field.split_at_checked(10)?;
    Measure::ALL
        .iter()
        .any(|m| m.suffix() == suffix)
        .then_some(date)
}

/// One subject's counts on one day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DayUsage {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Counts under an id that names them for good: a store applies a given id at most once, so a
/// batch whose write timed out can be sent again without being counted twice. An id is never
/// reused for other counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageBatch {
    pub id: String,
    pub counts: UsageCounts,
}

impl UsageBatch {
    /// These counts under a fresh random id (128 bits: unique across instances and restarts).
    pub fn new(counts: UsageCounts) -> UsageBatch {
        UsageBatch {
            id: format!("{:032x}", rand::random::<u128>()),
            counts,
        }
    }

    /// Counters (entries) in the batch.
    pub fn len(&self) -> usize {
        self.counts.keys.len() + self.counts.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whose usage to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageSubject<'a> {
    Key(&'a str),
    App(&'a str),
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_windows_agree_with_the_calendar_strings() {
        // Every week of 1970..2100 around midnight, plus leap days and year ends.
        let days = (0..47_482u64)
            .step_by(7)
            .chain([11_016, 11_017, 19_782, 20_088, 20_089]);
        for day in days {
            for now in [day * 86_400, day * 86_400 + 86_399] {
                let w = TokenWindows::at(now);
                let date = utc_date(now);
                let year: u64 = date[..4].parse().expect("year");
                let month: u64 = date[5..7].parse().expect("month");
                assert_eq!(w.ids[2], year * 12 + month - 1, "{date}");
                assert_eq!(w.ends[2], month_end(&date), "{date}");
                assert_eq!(w.ends[1], (day + 1) * 86_400);
                assert_eq!(w.ends[0] - 60, now / 60 * 60);
            }
        }
    }

    #[test]
    fn quota_windows_follow_the_utc_calendar() {
        let quota = Quota {
            per_day: Some(10),
            per_month: None,
        };
        // 2024-02-29 23:59:59 UTC, a leap day: the day ends in a second, the month with it.
        let last = utc_day_number("2024-02-29").expect("day") * 86_400 + 86_399;
        let w = QuotaWindows::at(last, quota);
        assert_eq!(
            (w.day.as_str(), w.month.as_str()),
            ("2024-02-29", "2024-02")
        );
        assert_eq!((w.day_ends, w.month_ends), (last + 1, last + 1));
        assert!(w.current_at(last) && !w.current_at(last + 1));
        let next = QuotaWindows::at(last + 1, quota);
        assert_eq!(
            (next.day.as_str(), next.month.as_str()),
            ("2024-03-01", "2024-03")
        );
        assert_eq!(next.day_ends, last + 1 + 86_400);
        assert_eq!(
            next.month_ends,
            utc_day_number("2024-04-01").expect("day") * 86_400
        );
        // December rolls into the next year.
        let dec = QuotaWindows::at(utc_day_number("2026-12-01").expect("day") * 86_400, quota);
        assert_eq!(
            dec.month_ends,
            utc_day_number("2027-01-01").expect("day") * 86_400
        );
    }

    use super::*;

    #[test]
    fn utc_date_of_known_instants() {
        let cases = [
            (0, "1970-01-01"),
            (86_399, "1970-01-01"),
            (86_400, "1970-01-02"),
            (946_684_799, "1999-12-31"),
            // 2000 is a leap year (divisible by 400).
            (951_782_400, "2000-02-29"),
            (951_868_799, "2000-02-29"),
            (951_868_800, "2000-03-01"),
            (1_700_000_000, "2023-11-14"),
            (1_709_164_800, "2024-02-29"),
            (1_709_251_199, "2024-02-29"),
            (1_709_251_200, "2024-03-01"),
            (4_102_444_800, "2100-01-01"),
            // 2100 is not (divisible by 100, not by 400): February 28 is followed by March 1.
            (4_107_456_000, "2100-02-28"),
            (4_107_542_400, "2100-03-01"),
            (253_402_300_799, "9999-12-31"),
        ];
        for (at, date) in cases {
            assert_eq!(utc_date(at), date, "at {at}");
        }
    }

    #[test]
    fn utc_day_number_inverts_utc_date() {
        for n in (0..157_000u64).step_by(7) {
            assert_eq!(utc_day_number(&utc_date(n * 86_400)), Some(n));
        }
        assert_eq!(utc_day_number("1970-01-01"), Some(0));
        assert_eq!(utc_day_number("2024-02-29"), Some(19_782));
        for bad in [
            "2023-02-29",
            "2024-02-30",
            "2024-13-01",
            "2024-00-10",
            "2024-1-01",
            "1969-12-31",
            "2024-02-2x",
            "+024-02-28",
            "",
        ] {
            assert_eq!(utc_day_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn utc_date_walks_every_day_in_order() {
        // 1970-01-01 .. 2400-12-31: each day is the one after the previous, with month lengths
        // and leap years by the Gregorian rules.
        let (mut year, mut month, mut day) = (1970u64, 1u64, 1u64);
        let leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        for n in 0..157_000u64 {
            let expected = format!("{year:04}-{month:02}-{day:02}");
            assert_eq!(utc_date(n * 86_400 + 43_200), expected);
            let length = match month {
                2 if leap(year) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > length {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }
}
