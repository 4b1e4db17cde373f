//! normalize + RouteTable::find on the repository's gateway.yaml: a path is accepted only in its
//! one canonical form, and the route found is the one that form matches.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use scopegate::routing::normalize::normalize;
use scopegate::routing::{RouteMatch, RouteTable};
use std::path::Path;
use std::sync::OnceLock;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway.yaml");
        scopegate::config::load(&path)
            .unwrap_or_else(|e| panic!("gateway.yaml: {e}"))
            .routes
    })
}

const METHODS: [Method; 8] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::CONNECT,
];

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn check_output(out: &str) {
    assert!(out.starts_with('/'), "{out:?}");
    assert!(!out.contains("//"), "{out:?}");
    let bytes = out.as_bytes();
    assert!(
        bytes
            .iter()
            .all(|b| (0x21..0x7f).contains(b) && !matches!(b, b'\\' | b'#' | b'?')),
        "{out:?}"
    );
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = &bytes[i + 1..i + 3];
            assert!(
                hex.iter()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
                "{out:?}"
            );
            let v = u8::from_str_radix(std::str::from_utf8(hex).expect("ascii"), 16).expect("hex");
            assert!(v != 0 && v != b'/' && v != b'\\', "{out:?}");
            assert!(!is_unreserved(v), "unreserved escape left in {out:?}");
            i += 3;
        } else {
            i += 1;
        }
    }
    for seg in out[1..].split('/') {
        let head = seg.split(';').next().unwrap_or_default();
        let head = head.split("%3B").next().unwrap_or_default();
        assert!(head != "." && head != "..", "dot-segment in {out:?}");
    }
    assert_eq!(normalize(out).as_deref(), Ok(out), "not idempotent");
}

fn matches(pattern: &str, path: &str) -> bool {
    let want: Vec<&str> = pattern.split('/').collect();
    let got: Vec<&str> = path.split('/').collect();
    want.len() == got.len()
        && want.iter().zip(&got).all(|(w, g)| {
            if w.starts_with('{') && w.ends_with('}') {
                !g.is_empty()
            } else {
                w == g
            }
        })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(selector) % METHODS.len()];
    // Any bytes: what reaches normalize is a &str, so lossy-decode non-UTF-8.
    let input = String::from_utf8_lossy(rest);
    let Ok(path) = normalize(&input) else {
        return;
    };
    let lower = input.to_ascii_lowercase();
    assert!(
        !["%2f", "%5c", "%00", "\\", "\0"]
            .iter()
            .any(|e| lower.contains(e)),
        "{input:?} accepted as {path:?}"
    );
    assert!(input.is_ascii(), "{input:?} accepted");
    check_output(&path);
    if let RouteMatch::Found(route) = table().find(method, &path) {
        assert!(
            matches(&route.pattern, &path),
            "{method} {input:?} -> {path:?} routed to {}",
            route.pattern
        );
    }
});
