//! Budgets: what counts a key's requests before one is forwarded — its rate limit, per
//! instance ([`local`]) or shared across instances ([`shared`]), its day and month quota
//! ([`quota`]), and on metered routes its token quota ([`tokens`]) — behind the one call the
//! pipeline makes, [`Budgets::check`], whose [`Grant`] writes its own headers. Shared budgets
//! are spent from slices leased from the store ([`slice`]); while the store is unreachable they
//! fall back to per-instance limits.
//!
//! # What it never does
//! It never waits on the store for a key that holds a live slice, and never reads the config
//! except through the [`LiveConfig`] it is handed.

pub mod headers;
pub mod local;
pub mod quota;
pub mod shared;
pub mod slice;
pub mod tokens;

use self::local::{Budget, Decision, RateLimits};
use self::quota::{QuotaExceeded, QuotaStatus, Quotas};
use self::shared::SharedRateLimits;
use self::tokens::{KeyTokens, TokenQuotaExceeded, TokenQuotaStatus, TokenQuotas};
use crate::auth::Principal;
use crate::live::LiveConfig;
use http::HeaderMap;
use std::sync::Arc;

/// Every budget of every key, shared by all connections.
pub struct Budgets {
    /// Per-instance limiters (also the fallback of shared ones).
    pub local: RateLimits,
    pub shared: SharedRateLimits,
    pub quotas: Quotas,
    pub tokens: Arc<TokenQuotas>,
}

opaque_debug!(Budgets);

/// What an admitted request was granted: its key's rate-limit state after it, the tightest
/// quota window when the key has a quota, and on a metered route with a token quota the key's
/// token state (the response's tokens are spent on it) and tightest token window.
#[derive(Clone, Debug)]
pub struct Grant {
    pub rate: Budget,
    pub quota: Option<QuotaStatus>,
    pub tokens: Option<(Arc<KeyTokens>, TokenQuotaStatus)>,
}

impl Grant {
    /// The `RateLimit-*`, (with a quota) `X-Quota-*` and (with a token quota)
    /// `X-Token-Quota-*` headers of a forwarded response.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let r = self.rate;
        headers::rate_limit_headers(headers, r.limit, r.remaining, r.reset);
        if let Some(status) = self.quota {
            headers::quota_headers(headers, status);
        }
        if let Some((_, status)) = &self.tokens {
            headers::token_quota_headers(headers, *status);
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
    Tokens(TokenQuotaExceeded),
}

impl Budgets {
    /// Counts one request of `principal`'s key: the token quota first on a `metered` route
    /// (it counts nothing at admission), then the rate limit, then the quota, so a request
    /// one of them refuses consumes none of the next.
    pub async fn check(
        &self,
        principal: &Principal,
        live: &LiveConfig,
        metered: bool,
    ) -> Result<Grant, Refused> {
        let token_quota = metered
            .then(|| tokens::effective(principal.app.token_quota, live.default_token_quota))
            .flatten();
        let tokens = match token_quota {
            Some(q) => Some(
                self.tokens
                    .check(&principal.key.id, q)
                    .await
                    .map_err(Refused::Tokens)?,
            ),
            None => None,
        };
        let key_id = &principal.key.id;
        let limit = principal.app.rate_limit.unwrap_or(live.default_rate_limit);
        // The shared budget when `rate_limit.shared` is on; the local limiter otherwise.
        let decision = if live.shared_rate_limits {
            self.shared.check(&self.local, key_id, limit).await
        } else {
            self.local.check(key_id, limit)
        };
        let rate = match decision {
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
        let quota = quota::effective(principal.app.quota, live.default_quota);
        let quota = self
            .quotas
            .check(key_id, quota)
            .await
            .map_err(Refused::Quota)?;
        Ok(Grant {
            rate,
            quota,
            tokens,
        })
    }

    /// Background upkeep (every second): idle limiter state dropped, unused quota slices given
    /// back, what was admitted during an outage settled.
    pub async fn upkeep(&self) {
        self.local.prune();
        self.shared.prune();
        self.quotas.upkeep().await;
    }
}
