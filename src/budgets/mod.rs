//! Budgets: what counts a key's requests before one is forwarded — its rate limit, per
//! instance ([`local`]) or shared across instances ([`shared`]), and its day and month quota
//! ([`quota`]) — behind the one call the pipeline makes, [`Budgets::check`], whose [`Grant`]
//! writes its own headers. Shared budgets are spent from slices leased from the store
//! ([`slice`]); while the store is unreachable they fall back to per-instance limits.
//!
//! A new kind of budget (token quotas) lands here alone: a field of [`Budgets`], one step of
//! `check`, one part of [`Grant`] and of [`Refused`].
//!
//! # What it never does
//! It never waits on the store for a key that holds a live slice, and never reads the config
//! except through the [`LiveConfig`] it is handed.

pub mod headers;
pub mod local;
pub mod quota;
pub mod shared;
pub mod slice;

use self::local::{Budget, Decision, RateLimits};
use self::quota::{QuotaExceeded, QuotaStatus, Quotas};
use self::shared::SharedRateLimits;
use crate::auth::Principal;
use crate::live::LiveConfig;
use http::HeaderMap;

/// Every budget of every key, shared by all connections.
pub struct Budgets {
    /// Per-instance limiters (also the fallback of shared ones).
    pub local: RateLimits,
    pub shared: SharedRateLimits,
    pub quotas: Quotas,
}

opaque_debug!(Budgets);

/// What an admitted request was granted: its key's rate-limit state after it, and the tightest
/// quota window when the key has a quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub rate: Budget,
    pub quota: Option<QuotaStatus>,
}

impl Grant {
    /// The `RateLimit-*` and (with a quota) `X-Quota-*` headers of a forwarded response.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let r = self.rate;
        headers::rate_limit_headers(headers, r.limit, r.remaining, r.reset);
        if let Some(status) = self.quota {
            headers::quota_headers(headers, status);
        }
    }
}

/// Why a request was refused; the error module turns it into its 429.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    RateLimited {
        limit: u32,
        retry_after: u64,
        reset: u64,
    },
    Quota(QuotaExceeded),
}

impl Budgets {
    /// Counts one request of `principal`'s key: the rate limit first, then the quota, so a
    /// request the rate limit refuses consumes no quota.
    pub async fn check(&self, principal: &Principal, live: &LiveConfig) -> Result<Grant, Refused> {
        let key_id = &principal.key.id;
        let limit = principal.app.rate_limit.unwrap_or(live.default_rate_limit);
        // The shared budget when `rate_limit.shared` is on; the local limiter otherwise.
        let rate = match self.shared.check(&self.local, key_id, limit).await {
            Decision::Limited {
                limit,
                retry_after,
                reset,
            } => {
                return Err(Refused::RateLimited {
                    limit,
                    retry_after,
                    reset,
                })
            }
            Decision::Allowed {
                limit,
                remaining,
                reset,
            } => Budget {
                limit,
                remaining,
                reset,
            },
        };
        let quota = self
            .quotas
            .check(key_id, principal.app.quota)
            .await
            .map_err(Refused::Quota)?;
        Ok(Grant { rate, quota })
    }

    /// Applies a reloaded config's budget settings (`rate_limit.shared`, the default quota).
    pub fn reload(&self, shared: bool, default_quota: Option<crate::model::Quota>) {
        self.shared.set_enabled(shared);
        self.quotas.set_default(default_quota);
    }

    /// Background upkeep (every second): idle limiter state dropped, unused quota slices given
    /// back, what was admitted during an outage settled.
    pub async fn upkeep(&self) {
        self.local.prune();
        self.shared.prune();
        self.quotas.upkeep().await;
    }
}
