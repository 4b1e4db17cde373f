//! The records scopegate keeps: apps, their keys, and the limits attached to them.
//!
//! These are what the store persists and the admin API shows; nothing here talks to the network.

use serde::{Deserialize, Serialize};
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

/// An application: the holder of scopes. Keys belong to apps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Overrides the config's default for every key of this app.
    pub rate_limit: Option<RateLimit>,
    pub created_at: UnixSeconds,
    pub created_by: String,
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
}

impl KeyRecord {
    /// Whether the key is past its expiry at `now`.
    pub fn is_expired(&self, now: UnixSeconds) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}
