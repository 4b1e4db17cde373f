//! Path normalisation: the one view of a request path that is matched, authorised and forwarded.
//!
//! Resolves dot-segments, merges repeated slashes, decodes percent-encoded unreserved characters
//! and upper-cases the hex of the rest. Anything that another component could read differently
//! (an encoded `/` or `\`, a NUL, a climb above the root, `..;`) is rejected, never guessed at.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with /")]
    NotAbsolute,
    #[error("the path contains an encoded slash or backslash")]
    EncodedSeparator,
    #[error("the path contains a NUL byte")]
    Nul,
    #[error("the path contains a character that is not allowed: {0:?}")]
    BadCharacter(char),
    #[error("the path contains a malformed percent-encoding")]
    BadEncoding,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path contains a dot-segment with parameters")]
    DotSegmentParams,
    /// Checked after routing, against the matched route (see `Route::check_parameters`).
    #[error("the path carries `;` parameters, which this route does not accept")]
    Parameters,
}

/// Normalises an origin-form path (without the query). Borrows when nothing changes.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    check_characters(path)?;
    if is_already_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    rebuild(path).map(Cow::Owned)
}

fn check_characters(path: &str) -> Result<(), PathError> {
    for &b in path.as_bytes() {
        match b {
            0 => return Err(PathError::Nul),
            b'\\' | b'#' | b'?' | 0x01..=0x20 | 0x7f..=0xff => {
                return Err(PathError::BadCharacter(char::from(b)))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The common case: no escapes, no dot or empty segments, no matrix parameters. One pass over
/// the bytes (it runs on every request).
fn is_already_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut segment_start = 1;
    for i in 1..=bytes.len() {
        let end = i == bytes.len();
        if !end && bytes[i] != b'/' {
            if bytes[i] == b'%' || bytes[i] == b';' {
                return false;
            }
            continue;
        }
        let segment = &bytes[segment_start..i];
        if segment == b"." || segment == b".." || (segment.is_empty() && !end) {
            return false;
        }
        segment_start = i + 1;
    }
    true
}

fn rebuild(path: &str) -> Result<String, PathError> {
    let raw: Vec<&str> = path[1..].split('/').collect();
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    let mut trailing_slash = false;
    for (i, seg) in raw.iter().enumerate() {
        let last = i + 1 == raw.len();
        let seg = decode_segment(seg)?;
        trailing_slash = last;
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                out.pop().ok_or(PathError::AboveRoot)?;
            }
            s if is_dot_with_params(s) => return Err(PathError::DotSegmentParams),
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_slash || out.is_empty() {
        result.push('/');
    }
    Ok(result)
}

/// `..;x` or `.;x`: some servlet containers strip `;...` and then see a dot-segment. Also
/// `..%3Bx` (the segment is already decoded, so the hex is upper case): a server that decodes
/// before it strips parameters reads it the same way.
fn is_dot_with_params(seg: &str) -> bool {
    let head = seg.split(';').next().unwrap_or(seg);
    let head = head.split("%3B").next().unwrap_or(head);
    matches!(head, "." | "..")
}

/// Decodes `%XX` of unreserved characters, upper-cases the hex of the others, and rejects
/// encodings whose meaning differs between servers.
fn decode_segment(seg: &str) -> Result<String, PathError> {
    let bytes = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
        let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(PathError::BadEncoding);
        };
        let value = hi << 4 | lo;
        match value {
            0 => return Err(PathError::Nul),
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            v if is_unreserved(v) => out.push(char::from(v)),
            v => {
                out.push('%');
                out.push(char::from(HEX_UPPER[usize::from(v >> 4)]));
                out.push(char::from(HEX_UPPER[usize::from(v & 0xf)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 unreserved characters: decoding them never changes what a path means.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> String {
        normalize(input)
            .map(|c| c.into_owned())
            .unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    #[test]
    fn rewrites() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E%2e/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/%2e/b", "/a/b"),
            ("/%61%62c", "/abc"),
            ("/a%7e", "/a~"),
            ("/a%20b", "/a%20b"),
            ("/a%3ab", "/a%3Ab"),
            ("/a%252e%252e/b", "/a%252e%252e/b"),
            ("/a;v=1/b", "/a;v=1/b"),
            ("/..a/b", "/..a/b"),
            ("/a/...", "/a/..."),
            ("///", "/"),
            ("/a/..", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(ok(input), want, "normalising {input}");
        }
    }

    #[test]
    fn borrows_when_unchanged() {
        assert!(matches!(
            normalize("/api/v1/tools/x/deploy"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn rejects() {
        let cases = [
            ("a/b", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5Cb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a%00b", PathError::Nul),
            ("/a\0b", PathError::Nul),
            ("/a\\b", PathError::BadCharacter('\\')),
            ("/a#b", PathError::BadCharacter('#')),
            ("/a b", PathError::BadCharacter(' ')),
            ("/..", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/%2e%2e/etc", PathError::AboveRoot),
            ("/a/..;/b", PathError::DotSegmentParams),
            ("/a/.;x/b", PathError::DotSegmentParams),
            ("/a/..%3b/b", PathError::DotSegmentParams),
            ("/a/%2e%3Bx/b", PathError::DotSegmentParams),
            ("/a%zz", PathError::BadEncoding),
            ("/a%2", PathError::BadEncoding),
            ("/a%", PathError::BadEncoding),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), Err(want), "normalising {input:?}");
        }
    }

    #[test]
    fn idempotent_on_rewrites() {
        for input in ["/a/%2e%2e/b/", "//x//%7e/./y", "/a%3ab/..", "/a%252e"] {
            let once = ok(input);
            assert_eq!(ok(&once), once);
        }
    }
}

/// Properties over hostile paths: whatever comes in, what goes out is one canonical path that no
/// server downstream can read as a different one.
#[cfg(test)]
pub(crate) mod props {
    use super::*;
    use proptest::prelude::*;

    /// Every invariant a normalised path must hold; `Err` names the first one broken.
    pub(crate) fn check_output(out: &str) -> Result<(), String> {
        if !out.starts_with('/') {
            return Err(format!("{out:?} does not start with /"));
        }
        if out.contains("//") {
            return Err(format!("{out:?} contains //"));
        }
        let bytes = out.as_bytes();
        if let Some(b) = bytes.iter().find(|b| !(0x21..0x7f).contains(*b)) {
            return Err(format!("{out:?} contains byte {b:#x}"));
        }
        for bad in [b'\\', b'#', b'?'] {
            if bytes.contains(&bad) {
                return Err(format!("{out:?} contains {:?}", char::from(bad)));
            }
        }
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
                if hex.len() != 2
                    || !hex
                        .iter()
                        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
                {
                    return Err(format!("{out:?}: escape at {i} is not %XX in upper case"));
                }
                let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
                    .map_err(|e| e.to_string())?;
                if v == 0 || v == b'/' || v == b'\\' {
                    return Err(format!("{out:?}: forbidden escape %{v:02X}"));
                }
                if is_unreserved(v) {
                    return Err(format!(
                        "{out:?}: escape of unreserved {:?} left",
                        char::from(v)
                    ));
                }
                i += 3;
            } else {
                i += 1;
            }
        }
        for seg in out[1..].split('/') {
            let head = seg.split(';').next().unwrap_or_default();
            let head = head.split("%3B").next().unwrap_or_default();
            if head == "." || head == ".." {
                return Err(format!("{out:?} has a dot-segment {seg:?}"));
            }
        }
        match normalize(out) {
            Ok(again) if again == out => Ok(()),
            Ok(again) => Err(format!("not idempotent: {out:?} -> {again:?}")),
            Err(e) => Err(format!("not idempotent: {out:?} -> {e}")),
        }
    }

    /// Inputs that must be refused whatever surrounds them.
    fn must_reject(input: &str) -> bool {
        let lower = input.to_ascii_lowercase();
        !input.starts_with('/')
            || !input.is_ascii()
            || input.bytes().any(|b| b <= 0x20 || b == 0x7f || b == b'\\')
            || ["%2f", "%5c", "%00"].iter().any(|e| lower.contains(e))
    }

    fn escape(byte: u8, lower: bool) -> String {
        if lower {
            format!("%{byte:02x}")
        } else {
            format!("%{byte:02X}")
        }
    }

    /// One piece of a segment: what attackers and confused clients put in paths.
    fn atom() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => Just(String::new()),
            4 => Just(".".to_owned()),
            4 => Just("..".to_owned()),
            2 => prop_oneof![
                Just("%2e"), Just("%2E"), Just("%2e%2e"), Just("%2E%2e"), Just(".%2e"),
                Just("%2e."), Just("%252e"), Just("%252e%252e"), Just("%25"), Just("%252f"),
                Just("..;"), Just(".;x"), Just(";"), Just(";v=1"), Just("%3b"), Just("..%3B"),
                Just("%2f"), Just("%2F"), Just("%5c"), Just("%5C"), Just("%00"), Just("\\"),
                Just("%"), Just("%2"), Just("%zz"), Just("%g0"), Just("..."), Just("~"),
                Just("%7e"), Just("%41"), Just("%61"), Just("%2d"), Just("%5f"),
            ]
            .prop_map(str::to_owned),
            6 => (any::<u8>(), any::<bool>()).prop_map(|(b, lower)| escape(b, lower)),
            // double encoding of any byte: %25XX
            2 => (any::<u8>(), any::<bool>()).prop_map(|(b, lower)| format!("%25{}", &escape(b, lower)[1..])),
            6 => "[a-zA-Z0-9._~-]{1,6}",
            2 => "[!$&'()*+,;=:@{}\\[\\]|^`\"<>]{1,3}",
            1 => "[\\x00-\\x20\\x7f]",
            1 => "[é\u{1F600}\u{200B}\u{FF0E}\u{2215}]",
            1 => any::<char>().prop_map(String::from),
        ]
    }

    fn segment() -> impl Strategy<Value = String> {
        prop::collection::vec(atom(), 0..4).prop_map(|a| a.concat())
    }

    /// A path: mostly rooted, with any number of slashes between segments.
    fn path() -> impl Strategy<Value = String> {
        (
            prop_oneof![8 => Just("/"), 1 => Just(""), 1 => Just("//"), 1 => Just("///")],
            prop::collection::vec((segment(), 1usize..3), 0..12),
        )
            .prop_map(|(lead, segs)| {
                let mut p = lead.to_owned();
                for (i, (seg, slashes)) in segs.iter().enumerate() {
                    if i > 0 {
                        p.push_str(&"/".repeat(*slashes));
                    }
                    p.push_str(seg);
                }
                p
            })
    }

    fn check(input: &str) -> Result<(), TestCaseError> {
        if let Ok(out) = normalize(input) {
            prop_assert!(!must_reject(input), "{input:?} accepted as {out:?}");
            check_output(&out).map_err(TestCaseError::fail)?;
        }
        Ok(())
    }

    /// The simplest model of dot-segment removal, for inputs with nothing to decode.
    fn model(input: &str) -> Option<String> {
        let raw: Vec<&str> = input[1..].split('/').collect();
        let mut out: Vec<&str> = Vec::new();
        let mut trailing = false;
        for (i, seg) in raw.iter().enumerate() {
            let last = i + 1 == raw.len();
            match *seg {
                "" | "." => trailing = last,
                ".." => {
                    out.pop()?;
                    trailing = last;
                }
                s => {
                    out.push(s);
                    trailing = false;
                }
            }
        }
        let mut s: String = out.iter().map(|seg| format!("/{seg}")).collect();
        if trailing || s.is_empty() {
            s.push('/');
        }
        Some(s)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        #[test]
        fn hostile_paths(input in path()) {
            check(&input)?;
        }

        #[test]
        fn arbitrary_strings(input in any::<String>()) {
            check(&input)?;
            check(&format!("/{input}"))?;
        }

        #[test]
        fn arbitrary_ascii(input in "/[ -~]{0,80}") {
            check(&input)?;
        }

        #[test]
        fn every_escape_of_every_byte(byte in any::<u8>(), lower in any::<bool>(), pre in "[a.]{0,2}", post in "[a.]{0,2}") {
            let input = format!("/x/{pre}{}{post}/y", escape(byte, lower));
            let result = normalize(&input);
            match byte {
                b';' if pre == "." || pre == ".." => {
                    prop_assert_eq!(result, Err(PathError::DotSegmentParams))
                }
                0 => prop_assert_eq!(result, Err(PathError::Nul)),
                b'/' | b'\\' => prop_assert_eq!(result, Err(PathError::EncodedSeparator)),
                _ => {
                    let out = result.map_err(|e| TestCaseError::fail(format!("{input:?}: {e}")))?;
                    check_output(&out).map_err(TestCaseError::fail)?;
                    if is_unreserved(byte) {
                        prop_assert!(!out.contains('%'), "{input:?} -> {out:?}");
                    } else {
                        let upper = format!("%{byte:02X}");
                        prop_assert!(out.contains(&upper), "{input:?} -> {out:?}");
                    }
                }
            }
        }

        #[test]
        fn double_encoding_is_decoded_once_only(byte in any::<u8>(), lower in any::<bool>()) {
            let input = format!("/a/%25{}/b", &escape(byte, lower)[1..]);
            let out = normalize(&input).map_err(|e| TestCaseError::fail(format!("{input:?}: {e}")))?;
            // `%25` stays encoded and the hex after it is plain text: the upstream sees `%XX`
            // as literal characters, never the byte they would decode to.
            prop_assert_eq!(out.as_ref(), input.as_str());
        }

        #[test]
        fn dot_segments_follow_the_simple_model(segs in prop::collection::vec(
            prop_oneof![Just(""), Just("."), Just(".."), Just("a"), Just("b"), Just("..."), Just(".a")], 0..10)
        ) {
            let input = format!("/{}", segs.join("/"));
            match model(&input) {
                Some(want) => prop_assert_eq!(normalize(&input).map(Cow::into_owned), Ok(want)),
                None => prop_assert_eq!(normalize(&input), Err(PathError::AboveRoot)),
            }
        }
    }

    #[test]
    fn overlong_inputs_do_not_panic_or_blow_up() {
        let deep = "/a".repeat(200_000);
        assert_eq!(normalize(&deep).map(|c| c.len()), Ok(deep.len()));
        let climb = format!("{}{}", "/a".repeat(100_000), "/..".repeat(100_000));
        assert_eq!(normalize(&climb).map(Cow::into_owned), Ok("/".to_owned()));
        let above = "/..".repeat(100_000);
        assert_eq!(normalize(&above), Err(PathError::AboveRoot));
        let escapes = "/%2e%41".repeat(50_000);
        let out = normalize(&escapes).expect("valid");
        check_output(&out).expect("invariants");
        let slashes = "/".repeat(300_000);
        assert_eq!(normalize(&slashes).map(Cow::into_owned), Ok("/".to_owned()));
    }

    #[test]
    fn unicode_is_rejected_not_panicking() {
        for input in [
            "/é",
            "/a/\u{1F600}",
            "/\u{FF0E}\u{FF0E}/x",
            "/a\u{2215}b",
            "/\u{200B}",
        ] {
            assert!(
                matches!(normalize(input), Err(PathError::BadCharacter(_))),
                "{input:?}"
            );
        }
    }
}
