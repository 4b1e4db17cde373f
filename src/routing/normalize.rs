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

/// The common case: no escapes, no dot or empty segments, no matrix parameters.
fn is_already_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.contains(&b'%') || bytes.contains(&b';') {
        return false;
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg == "." || seg == ".." || (seg.is_empty() && !last) {
            return false;
        }
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

/// `..;x` or `.;x`: some servlet containers strip `;...` and then see a dot-segment.
fn is_dot_with_params(seg: &str) -> bool {
    matches!(seg.split(';').next(), Some(".") | Some(".."))
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
