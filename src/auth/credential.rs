//! Finding the API key in a request: `X-API-Key: <key>` or `Authorization: Bearer <key>`.

use http::header::{HeaderMap, AUTHORIZATION};
use http::HeaderName;

/// The key header scopegate reads (and removes before forwarding).
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// A request whose credentials cannot be read one way only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the request carries more than one credential")]
    Conflicting,
    #[error("the credential header is not valid text")]
    Unreadable,
}

/// The key presented, trimmed; `None` when the request carries none.
pub fn extract(headers: &HeaderMap) -> Result<Option<&str>, CredentialError> {
    let api_key = single(headers, &X_API_KEY)?.filter(|v| !v.is_empty());
    let bearer = single(headers, &AUTHORIZATION)?
        .and_then(bearer_token)
        .filter(|v| !v.is_empty());
    match (api_key, bearer) {
        (Some(a), Some(b)) if a != b => Err(CredentialError::Conflicting),
        (a, b) => Ok(a.or(b)),
    }
}

/// Whether `Authorization` carries a bearer token (which is then ours to strip).
pub fn is_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .is_some()
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, CredentialError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(CredentialError::Conflicting);
    }
    let text = first.to_str().map_err(|_| CredentialError::Unreadable)?;
    Ok(Some(text.trim()))
}

/// The token of a `Bearer` authorization (scheme case-insensitive), or `None` for other schemes.
fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    #[test]
    fn reads_either_header() {
        assert_eq!(extract(&headers(&[("X-API-Key", " k1 ")])), Ok(Some("k1")));
        assert_eq!(
            extract(&headers(&[("authorization", "Bearer k2")])),
            Ok(Some("k2"))
        );
        assert_eq!(
            extract(&headers(&[("Authorization", "bEaReR   k3 ")])),
            Ok(Some("k3"))
        );
        assert_eq!(
            extract(&headers(&[("Authorization", "Basic abc")])),
            Ok(None)
        );
        assert_eq!(extract(&headers(&[])), Ok(None));
        assert_eq!(extract(&headers(&[("x-api-key", "")])), Ok(None));
    }

    #[test]
    fn same_key_twice_is_fine_different_keys_are_not() {
        let same = headers(&[("x-api-key", "k"), ("authorization", "Bearer k")]);
        assert_eq!(extract(&same), Ok(Some("k")));
        let differ = headers(&[("x-api-key", "k"), ("authorization", "Bearer j")]);
        assert_eq!(extract(&differ), Err(CredentialError::Conflicting));
        let twice = headers(&[("x-api-key", "k"), ("x-api-key", "k")]);
        assert_eq!(extract(&twice), Err(CredentialError::Conflicting));
    }

    #[test]
    fn bearer_detection() {
        assert!(is_bearer(&headers(&[("authorization", "Bearer x")])));
        assert!(!is_bearer(&headers(&[("authorization", "Basic x")])));
    }
}
