//! The headers a grant (or a refusal) of a budget carries: the IETF draft `RateLimit-*` fields
//! `X-Quota-*` and `X-Token-Quota-*`. Written here only; the error module uses them for 429 answers.

use super::quota::QuotaStatus;
use super::tokens::TokenQuotaStatus;
use http::HeaderValue;
use std::sync::OnceLock;

/// Numbers below this have a ready header value (a copy of a pointer, no allocation).
const READY_NUMBERS: u64 = 4096;

/// `n` as a header value: from a table built once for small numbers (rate-limit burst, what
/// is left of it, seconds to a reset), else formatted.
fn number(n: impl Into<u64>) -> HeaderValue {
    static READY: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
    let n = n.into();
    if n >= READY_NUMBERS {
        return HeaderValue::from(n);
    }
    let ready = READY.get_or_init(|| {
        // One string for all of them, kept for the life of the process.
        let digits: &'static str = Box::leak(
            (0..READY_NUMBERS)
                .map(|i| i.to_string())
                .collect::<String>()
                .into_boxed_str(),
        );
        let mut at = 0;
        (0..READY_NUMBERS)
            .map(|i| {
                let len = i.checked_ilog10().map_or(1, |l| l as usize + 1);
                let value = HeaderValue::from_static(&digits[at..at + len]);
                at += len;
                value
            })
            .collect()
    });
    ready[n as usize].clone()
}

/// The IETF draft `RateLimit-*` fields: the burst, what is left of it, and whole seconds until
/// it is full again.
pub(crate) fn rate_limit_headers(
    headers: &mut http::HeaderMap,
    limit: u32,
    remaining: u32,
    reset: u64,
) {
    headers.insert(&RATELIMIT_LIMIT, number(limit));
    headers.insert(&RATELIMIT_REMAINING, number(remaining));
    headers.insert(&RATELIMIT_RESET, number(reset));
}

/// `X-Quota-Limit`, `X-Quota-Remaining`, `X-Quota-Reset`: the tightest quota window (the one
/// with the fewest requests left), its requests left, and whole seconds until it ends.
pub(crate) fn quota_headers(headers: &mut http::HeaderMap, status: QuotaStatus) {
    headers.insert(&QUOTA_LIMIT, number(status.limit));
    headers.insert(&QUOTA_REMAINING, number(status.remaining));
    headers.insert(&QUOTA_RESET, number(status.reset));
}

/// `X-Token-Quota-Limit`, `-Remaining`, `-Reset`: the tightest token-quota window (the one with
/// the fewest tokens left), its tokens left, and whole seconds until it ends.
pub(crate) fn token_quota_headers(headers: &mut http::HeaderMap, status: TokenQuotaStatus) {
    headers.insert(&TOKEN_QUOTA_LIMIT, number(status.limit));
    headers.insert(&TOKEN_QUOTA_REMAINING, number(status.remaining));
    headers.insert(&TOKEN_QUOTA_RESET, number(status.reset));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_the_same_from_the_table_and_past_it() {
        for n in [
            0u64,
            1,
            9,
            10,
            99,
            100,
            999,
            1000,
            4094,
            4095,
            4096,
            4097,
            1 << 40,
        ] {
            assert_eq!(number(n).to_str().expect("ascii"), n.to_string());
        }
    }
}
