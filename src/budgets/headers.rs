//! The headers a grant (or a refusal) of a budget carries: the IETF draft `RateLimit-*` fields
//! `X-Quota-*` and `X-Token-Quota-*`. Written here only; the error module uses them for 429 answers.

use super::quota::QuotaStatus;
use super::tokens::TokenQuotaStatus;
use http::HeaderValue;

/// The IETF draft `RateLimit-*` fields: the burst, what is left of it, and whole seconds until
/// it is full again.
pub(crate) fn rate_limit_headers(
    headers: &mut http::HeaderMap,
    limit: u32,
    remaining: u32,
    reset: u64,
) {
    headers.insert(&RATELIMIT_LIMIT, HeaderValue::from(limit));
    headers.insert(&RATELIMIT_REMAINING, HeaderValue::from(remaining));
    headers.insert(&RATELIMIT_RESET, HeaderValue::from(reset));
}

/// `X-Quota-Limit`, `X-Quota-Remaining`, `X-Quota-Reset`: the tightest quota window (the one
/// with the fewest requests left), its requests left, and whole seconds until it ends.
pub(crate) fn quota_headers(headers: &mut http::HeaderMap, status: QuotaStatus) {
    headers.insert(&QUOTA_LIMIT, HeaderValue::from(status.limit));
    headers.insert(&QUOTA_REMAINING, HeaderValue::from(status.remaining));
    headers.insert(&QUOTA_RESET, HeaderValue::from(status.reset));
}

/// `X-Token-Quota-Limit`, `-Remaining`, `-Reset`: the tightest token-quota window (the one with
/// the fewest tokens left), its tokens left, and whole seconds until it ends.
pub(crate) fn token_quota_headers(headers: &mut http::HeaderMap, status: TokenQuotaStatus) {
    headers.insert(&TOKEN_QUOTA_LIMIT, HeaderValue::from(status.limit));
    headers.insert(&TOKEN_QUOTA_REMAINING, HeaderValue::from(status.remaining));
    headers.insert(&TOKEN_QUOTA_RESET, HeaderValue::from(status.reset));
}

static TOKEN_QUOTA_LIMIT: http::HeaderName = http::HeaderName::from_static("x-token-quota-limit");
static TOKEN_QUOTA_REMAINING: http::HeaderName =
    http::HeaderName::from_static("x-token-quota-remaining");
static TOKEN_QUOTA_RESET: http::HeaderName = http::HeaderName::from_static("x-token-quota-reset");

static QUOTA_LIMIT: http::HeaderName = http::HeaderName::from_static("x-quota-limit");
static QUOTA_REMAINING: http::HeaderName = http::HeaderName::from_static("x-quota-remaining");
static QUOTA_RESET: http::HeaderName = http::HeaderName::from_static("x-quota-reset");

static RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: http::HeaderName = http::HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("ratelimit-reset");
