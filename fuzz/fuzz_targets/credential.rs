//! Reading the credential from hostile headers: never panics; a key found is trimmed and non-empty.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use scopegate::auth::{credential, key};

const NAMES: [&str; 4] = ["X-API-Key", "Authorization", "x-aPi-KeY", "x-other"];

fuzz_target!(|data: &[u8]| {
    // Records separated by NUL (no header value holds one): first byte picks the header name, the rest is its value.
    let mut headers = HeaderMap::new();
    for record in data.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let name = NAMES[usize::from(record[0]) % NAMES.len()];
        let Ok(value) = HeaderValue::from_bytes(&record[1..]) else {
            continue;
        };
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value,
        );
    }
    let _ = credential::is_bearer(&headers);
    if let Ok(Some(k)) = credential::extract(&headers) {
        assert!(!k.is_empty(), "empty key");
        assert_eq!(k, k.trim(), "untrimmed key");
        if let Some(p) = key::parse(k) {
            assert_eq!(format!("sg_{}_{}", p.id, p.secret), k);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = key::parse(text);
        let _ = key::mask(text);
    }
});
