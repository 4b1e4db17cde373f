//! A credential's plaintext ([`Secret`]: zeroized on drop, never printed), the checks its name
//! and value pass before anything is stored, and the masked form the admin API shows.

use zeroize::Zeroizing;

/// Longest credential name: `[A-Za-z0-9_-]{1,64}`.
pub const MAX_NAME_LEN: usize = 64;
/// Largest value: 8 KiB, far above any provider key, small enough for one header.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;
/// Characters shown at each end of a masked value.
const MASK_SHOWN: usize = 3;
/// Shorter values are masked whole: showing 3 + 3 of them would show most of the value.
const MASK_MIN_CHARS: usize = 12;

/// A credential's value in memory: zeroized on drop, `Debug` prints `Secret(***)`, and it is
/// deliberately neither `Display` nor `Serialize`.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(Zeroizing::new(value))
    }

    /// The plaintext: only to seal it, mask it or put it in an upstream request's header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// Whether `name` matches `[A-Za-z0-9_-]{1,64}`; the message says what is wrong otherwise.
pub fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NAME_LEN} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("may hold only letters, digits, `_` and `-`".to_owned());
    }
    Ok(())
}

/// A value must be non-empty, at most [`MAX_VALUE_BYTES`], and free of control characters: it
/// goes into an upstream request's header, where a CR or LF would inject another header. The
/// message never quotes the value.
pub fn valid_value(value: &Secret) -> Result<(), String> {
    let text = value.expose();
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if text.len() > MAX_VALUE_BYTES {
        return Err(format!("must be at most {MAX_VALUE_BYTES} bytes"));
    }
    if text.chars().any(char::is_control) {
        return Err(
            "must not contain control characters (newline, carriage return, tab, ...)".to_owned(),
        );
    }
    Ok(())
}

/// The first 3 and last 3 characters, the rest as `*` (one per character); a value shorter
/// than 12 characters is all `*`.
pub fn masked(value: &Secret) -> String {
    let chars: Vec<char> = value.expose().chars().collect();
    let n = chars.len();
    if n < MASK_MIN_CHARS {
        return "*".repeat(n);
    }
    let mut out: String = chars[..MASK_SHOWN].iter().collect();
    out.push_str(&"*".repeat(n - 2 * MASK_SHOWN));
    out.extend(&chars[n - MASK_SHOWN..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Secret {
        Secret::new(text.to_owned())
    }

    #[test]
    fn masking_shows_three_and_three() {
        assert_eq!(masked(&s("sk-abcdefghijXYZ")), "sk-**********XYZ");
        assert_eq!(masked(&s("123456789012")), "123******012");
        assert_eq!(masked(&s("short-val")), "*********");
        assert_eq!(masked(&s("ÄÖÜ1234567890xyz")), "ÄÖÜ**********xyz");
    }

    #[test]
    fn debug_hides_the_value() {
        assert_eq!(format!("{:?}", s("sk-secret")), "Secret(***)");
    }

    #[test]
    fn names_follow_the_pattern() {
        for good in ["MY_API", "a", "tenant-a_openai-2", &"x".repeat(64)] {
            assert!(valid_name(good).is_ok(), "{good}");
        }
        for bad in ["", "my api", "a.b", "ä", "a/b", &"x".repeat(65), "a\n"] {
            assert!(valid_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_hold_no_control_characters_and_fit_a_header() {
        assert!(valid_value(&s("sk-ok value")).is_ok());
        assert!(valid_value(&s(&"v".repeat(MAX_VALUE_BYTES))).is_ok());
        for bad in [
            String::new(),
            "v".repeat(MAX_VALUE_BYTES + 1),
            "a\nb".to_owned(),
            "a\rb".to_owned(),
            "a\tb".to_owned(),
            "a\u{0}".to_owned(),
            "a\u{7f}".to_owned(),
            "a\u{85}".to_owned(),
        ] {
            let message = valid_value(&s(&bad)).expect_err("refused");
            assert!(bad.is_empty() || !message.contains(&bad), "{message}");
        }
    }
}
