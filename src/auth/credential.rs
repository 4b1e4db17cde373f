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

/// What a request presents, read in one pass over its headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presented<'a> {
    /// The key, trimmed; `None` when the request carries none.
    pub key: Option<&'a str>,
    /// Whether `Authorization` carries a bearer token (which is then ours to strip).
    pub bearer: bool,
}

/// The key presented and how (see [`Presented`]).
pub fn presented(headers: &HeaderMap) -> Result<Presented<'_>, CredentialError> {
    let api_key = single(headers, &X_API_KEY)?.filter(|v| !v.is_empty());
    let token = single(headers, &AUTHORIZATION)?.and_then(bearer_token);
    let bearer = token.filter(|v| !v.is_empty());
    let key = match (api_key, bearer) {
        (Some(a), Some(b)) if a != b => return Err(CredentialError::Conflicting),
        (a, b) => a.or(b),
    };
    Ok(Presented {
        key,
        bearer: token.is_some(),
    })
}

/// The key presented, trimmed; `None` when the request carries none.
pub fn extract(headers: &HeaderMap) -> Result<Option<&str>, CredentialError> {
    presented(headers).map(|p| p.key)
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

    mod props {
        use super::super::*;
        use crate::auth::key;
        use http::HeaderValue;
        use proptest::prelude::*;

        /// A header name of ours in any case, or an unrelated one.
        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("X-API-Key"),
                Just("x-api-key"),
                Just("X-Api-KEY"),
                Just("Authorization"),
                Just("authorization"),
                Just("AUTHORIZATION"),
                Just("x-other"),
            ]
            .prop_map(str::to_owned)
        }

        /// Values a header may legally carry (HTAB, SP, visible ASCII, obs-text).
        fn value() -> impl Strategy<Value = Vec<u8>> {
            let scheme = prop_oneof![
                Just(""),
                Just("Bearer "),
                Just("bearer\t"),
                Just("BEARER  "),
                Just("Basic "),
                Just(" Bearer "),
                Just("Bearer"),
                Just("Bearerx "),
            ];
            let body = prop_oneof![
                Just("sg_abc123_S3cr3t".to_owned()),
                "[ \t]{0,2}sg_[a-zA-Z0-9_]{0,10}[ \t]{0,2}",
                "[ -~\t]{0,20}",
            ];
            let tail =
                prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..4);
            (scheme, body, tail).prop_map(|(s, b, t)| {
                let mut v = format!("{s}{b}").into_bytes();
                v.extend(t);
                v
            })
        }

        fn headers(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                if let Ok(v) = HeaderValue::from_bytes(v) {
                    map.append(HeaderName::from_bytes(k.as_bytes()).expect("name"), v);
                }
            }
            map
        }

        /// The rules of the contract, read as simply as possible.
        fn model(map: &HeaderMap) -> Result<Option<String>, CredentialError> {
            let read = |name: &str| -> Result<Option<String>, CredentialError> {
                let all: Vec<&HeaderValue> = map.get_all(name).iter().collect();
                match all.as_slice() {
                    [] => Ok(None),
                    [one] => one
                        .to_str()
                        .map(|s| Some(s.trim().to_owned()))
                        .map_err(|_| CredentialError::Unreadable),
                    _ => Err(CredentialError::Conflicting),
                }
            };
            let api = read("x-api-key")?.filter(|s| !s.is_empty());
            let bearer = read("authorization")?.and_then(|a| {
                let (scheme, rest) = a.split_once([' ', '\t'])?;
                let token = rest.trim();
                (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
                    .then(|| token.to_owned())
            });
            match (api, bearer) {
                (Some(a), Some(b)) if a != b => Err(CredentialError::Conflicting),
                (a, b) => Ok(a.or(b)),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

            #[test]
            fn extract_is_the_contract(pairs in prop::collection::vec((name(), value()), 0..4)) {
                let map = headers(&pairs);
                let got = extract(&map);
                prop_assert_eq!(got.clone().map(|k| k.map(str::to_owned)), model(&map));
                if let Ok(Some(k)) = got {
                    prop_assert!(!k.is_empty());
                    prop_assert_eq!(k, k.trim());
                    if let Some(p) = key::parse(k) {
                        prop_assert_eq!(format!("sg_{}_{}", p.id, p.secret), k);
                    }
                }
                // Whatever is recognised as a bearer token is stripped before forwarding.
                if got.is_ok() && map.get_all(AUTHORIZATION).iter().count() == 1 {
                    let bearer = map.get(AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(bearer_token);
                    prop_assert_eq!(is_bearer(&map), bearer.is_some());
                    // The one-pass read the pipeline uses agrees.
                    prop_assert_eq!(presented(&map).map(|p| p.bearer), Ok(bearer.is_some()));
                }
            }

            #[test]
            fn key_parse_never_panics(text in any::<String>()) {
                if let Some(p) = key::parse(&text) {
                    prop_assert!(p.id.bytes().all(|b| b.is_ascii_alphanumeric()));
                    prop_assert!(p.secret.bytes().all(|b| b.is_ascii_alphanumeric()));
                    prop_assert_eq!(format!("sg_{}_{}", p.id, p.secret), text);
                }
            }
        }
    }
}
