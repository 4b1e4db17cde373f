//! What every admin call checks the same way: names, whole numbers in the query string, and
//! the 422 answer naming the field. Shared by the handlers, the audit and export readers and
//! paging, so none of them reaches into another for it.

use crate::error::AdminError;

/// Longest app or key name accepted.
const MAX_NAME_LEN: usize = 200;
pub(super) const DAY_SECONDS: u64 = 86_400;

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> AdminError {
    AdminError::Invalid {
        field,
        message: message.into(),
    }
}

/// A query parameter that must be a whole number from 1 to `max`; 422 naming `field` otherwise.
pub(super) fn whole_number(field: &'static str, text: &str, max: u64) -> Result<u64, AdminError> {
    match text.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            field,
            format!("must be a whole number from 1 to {max}"),
        )),
    }
}

pub(super) fn valid_name(name: &str) -> Result<String, AdminError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("must be at most {MAX_NAME_LEN} bytes"),
        ));
    }
    // Names reach admins' terminals (the CLI) and logs: an ESC or C1 sequence would drive the
    // terminal (OSC 52 writes the clipboard), a newline would forge a line.
    if name.chars().any(char::is_control) {
        return Err(invalid(
            "name",
            "must not contain control characters (ESC, newline, tab, DEL, ...)",
        ));
    }
    Ok(name.to_owned())
}

/// Longest credential description accepted.
const MAX_DESCRIPTION_LEN: usize = 1000;

/// A description: at most [`MAX_DESCRIPTION_LEN`] bytes, no control characters (as names).
pub(super) fn valid_description(text: &str) -> Result<String, AdminError> {
    let text = text.trim();
    if text.len() > MAX_DESCRIPTION_LEN {
        return Err(invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION_LEN} bytes"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(
            "description",
            "must not contain control characters (ESC, newline, tab, DEL, ...)",
        ));
    }
    Ok(text.to_owned())
}

/// Whether `name` contains `search`, case-insensitively (no search: everything matches).
pub(super) fn matches(name: &str, search: Option<&str>) -> bool {
    search.is_none_or(|s| name.to_lowercase().contains(&s.to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hold_no_control_characters() {
        for bad in [
            "a\u{1b}]52;c;eA==\u{7}",
            "a\u{9b}1m",
            "a\u{7f}",
            "a\nb",
            "a\tb",
            "\u{0}",
        ] {
            assert!(
                matches!(
                    valid_name(bad),
                    Err(AdminError::Invalid { field: "name", .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            valid_name("  Ünïcødé ✓ 名前 ").ok().as_deref(),
            Some("Ünïcødé ✓ 名前")
        );
    }
}
