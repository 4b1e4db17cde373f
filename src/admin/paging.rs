//! Paginated listings (`limit`, `cursor`, `Link: <...>; rel="next"`) and entity tags
//! (`ETag` on an app, `If-Match` on its edits).

use super::validate::whole_number;
use super::AdminBody;
use super::{json, query_param};
use crate::error::AdminError;
use crate::model::{Page, PageRequest};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use serde::Serialize;

/// Records per page when the caller does not say.
const DEFAULT_LIMIT: usize = 100;
/// The contract's most records per page.
const MAX_LIMIT: u64 = 1000;

/// `cursor` and `limit` from the query string.
pub(super) fn params(query: Option<&str>) -> Result<(Option<String>, usize), AdminError> {
    let limit = match query_param(query, "limit") {
        None => DEFAULT_LIMIT,
        // At most MAX_LIMIT, so it fits usize.
        Some(text) => {
            usize::try_from(whole_number("limit", &text, MAX_LIMIT)?).unwrap_or(DEFAULT_LIMIT)
        }
    };
    let cursor = query_param(query, "cursor").filter(|c| !c.is_empty());
    if cursor.as_deref().is_some_and(|c| !valid_cursor(c)) {
        return Err(AdminError::Invalid {
            field: "cursor",
            message: "is not a cursor from a previous page".to_owned(),
        });
    }
    Ok((cursor, limit))
}

/// Cursors are listing positions, `{created_at}.{id}` (digits, a dot, alphanumerics; a
/// credential's name may also hold `_` and `-`), or an
/// audit stream's entry ids (`{millis}-{sequence}`).
fn valid_cursor(cursor: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    cursor.len() <= 128
        && (cursor.split_once('.').is_some_and(|(at, id)| {
            digits(at)
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }) || cursor
            .split_once('-')
            .is_some_and(|(ms, seq)| digits(ms) && digits(seq)))
}

pub(super) fn request(cursor: &Option<String>, limit: usize) -> PageRequest<'_> {
    PageRequest {
        cursor: cursor.as_deref(),
        limit,
    }
}

/// The page as a JSON array, with a `Link` to the next one when records may remain.
pub(super) fn respond<T: Serialize>(
    path: &str,
    query: Option<&str>,
    page: Page<T>,
) -> Response<AdminBody> {
    let mut response = json(StatusCode::OK, &page.items);
    if let Some(next) = page.next {
        if let Ok(link) = HeaderValue::from_str(&next_link(path, query, &next)) {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    response
}

/// The same query with `cursor` replaced: `<path?...&cursor=C>; rel="next"`.
fn next_link(path: &str, query: Option<&str>, cursor: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k != "cursor" {
            out.append_pair(&k, &v);
        }
    }
    out.append_pair("cursor", cursor);
    format!("<{path}?{}>; rel=\"next\"", out.finish())
}

pub(super) fn etag(version: u64) -> HeaderValue {
    HeaderValue::from(version)
        .to_str()
        .ok()
        .and_then(|v| HeaderValue::from_str(&format!("\"{v}\"")).ok())
        .unwrap_or_else(|| HeaderValue::from_static("\"0\""))
}

/// The version an `If-Match` asks for: `None` when absent or `*` (the app need only exist).
/// One strong tag is supported; a weak tag never matches (RFC 9110 §13.1.1), so it is 412, and
/// a tag that is not one of ours is 412 too, since no version can match it.
pub(super) fn if_match(headers: &HeaderMap) -> Result<Option<u64>, AdminError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| AdminError::BadJson("If-Match is not valid text".to_owned()))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    if text.contains(',') {
        return Err(AdminError::Invalid {
            field: "If-Match",
            message: "give one entity tag (from the ETag of a GET)".to_owned(),
        });
    }
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<u64>().ok())
        .map(Some)
        .ok_or(AdminError::PreconditionFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_keeps_the_filters_and_replaces_the_cursor() {
        assert_eq!(
            next_link(
                "/v1/keys",
                Some("search=a%20b&cursor=old&limit=5"),
                "00000000001.k1"
            ),
            "</v1/keys?search=a+b&limit=5&cursor=00000000001.k1>; rel=\"next\""
        );
        assert_eq!(
            next_link("/v1/apps", None, "1.a"),
            "</v1/apps?cursor=1.a>; rel=\"next\""
        );
    }

    #[test]
    fn cursors_and_limits_are_checked() {
        assert!(params(Some("limit=0")).is_err());
        assert!(params(Some("limit=1001")).is_err());
        assert!(params(Some("cursor=x%27%20or")).is_err());
        let (cursor, limit) = params(Some("cursor=00000000001.abc&limit=1000")).expect("ok");
        assert_eq!((cursor.as_deref(), limit), (Some("00000000001.abc"), 1000));
        assert_eq!(params(None).expect("ok"), (None, 100));
    }

    #[test]
    fn if_match_takes_one_strong_tag_or_star() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_MATCH, HeaderValue::from_static(v));
            if_match(&h)
        };
        assert_eq!(with("\"7\"").ok(), Some(Some(7)));
        assert_eq!(with("*").ok(), Some(None));
        assert!(matches!(
            with("W/\"7\""),
            Err(AdminError::PreconditionFailed)
        ));
        assert!(matches!(with("\"x\""), Err(AdminError::PreconditionFailed)));
        assert!(with("\"1\", \"2\"").is_err());
        assert_eq!(if_match(&HeaderMap::new()).ok(), Some(None));
    }
}
