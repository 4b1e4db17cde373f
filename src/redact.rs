//! Keeping credentials out of what the gateway prints: a URL such as `store.redis` may carry a
//! password (`redis://user:pw@host`, `unix:///run/redis.sock?pass=pw`), and config errors,
//! start-up errors and logs must still say which URL they are about without echoing it.
//!
//! Masks rather than parses: the URLs that matter most are the malformed ones, which no URL
//! parser would take apart. Where in doubt, more is masked, never less.

use std::borrow::Cow;

/// What stands in for a secret.
const MASK: &str = "***";
/// Query parameters that carry a password (the Redis crate reads `pass` for unix sockets).
const SECRET_PARAMS: [&str; 2] = ["pass=", "password="];

/// `url` with its user info and password parameters masked: `redis://user:pw@host` becomes
/// `redis://user:***@host`, `redis://token@host` becomes `redis://***@host`. The whole text is
/// taken as one URL, so a password with spaces or `/` in a malformed URL is masked too.
pub fn url(url: &str) -> Cow<'_, str> {
    match url.split_once("://") {
        Some((scheme, rest)) => match mask_after_scheme(rest) {
            Cow::Borrowed(_) => Cow::Borrowed(url),
            Cow::Owned(rest) => Cow::Owned(format!("{scheme}://{rest}")),
        },
        None => mask_params(url),
    }
}

/// `text` with every URL in it passed through [`url`]. A URL runs from its `://` to the next
/// space, quote or end of the text, as in an error message that quotes it.
pub fn in_text(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(after.len());
        out.push_str(&mask_after_scheme(&after[..end]));
        rest = &after[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// `text` (an error from a library given `url`) through [`in_text`], and with every verbatim
/// copy of `url`'s secrets masked, for messages that quote a password without its URL.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = in_text(text).into_owned();
    for secret in secrets(url) {
        out = out.replace(secret, MASK);
    }
    out
}

/// The parts of `url` that [`url`] masks.
fn secrets(url: &str) -> Vec<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let mut found = Vec::new();
    if let Some((info, _)) = rest.rsplit_once('@') {
        found.push(info.split_once(':').map_or(info, |(_, password)| password));
    }
    for param in SECRET_PARAMS {
        let mut search = rest;
        while let Some(at) = find_param(search, param) {
            let value = &search[at + param.len()..];
            let end = value.find(['&', '#']).unwrap_or(value.len());
            found.push(&value[..end]);
            search = &value[end..];
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

/// What follows `scheme://`: user info (up to the last `@`) and password parameters masked.
fn mask_after_scheme(rest: &str) -> Cow<'_, str> {
    let Some((info, host)) = rest.rsplit_once('@') else {
        return mask_params(rest);
    };
    // The user name says which account without giving it away; a lone token may be the secret.
    let user = info.split_once(':').map(|(user, _)| user);
    let masked = match user {
        Some(user) => format!("{user}:{MASK}@{}", mask_params(host)),
        None => format!("{MASK}@{}", mask_params(host)),
    };
    Cow::Owned(masked)
}

/// Masks the value of every `pass=` / `password=` parameter.
fn mask_params(text: &str) -> Cow<'_, str> {
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    for param in SECRET_PARAMS {
        let mut masked = String::new();
        let mut rest: &str = &out;
        let mut changed = false;
        while let Some(at) = find_param(rest, param) {
            let value_at = at + param.len();
            let value = &rest[value_at..];
            let end = value.find(['&', '#']).unwrap_or(value.len());
            masked.push_str(&rest[..value_at]);
            masked.push_str(MASK);
            rest = &value[end..];
            changed = true;
        }
        if changed {
            masked.push_str(rest);
            out = Cow::Owned(masked);
        }
    }
    out
}

/// Where `param` (such as `pass=`) starts a query parameter in `text`, case-insensitively.
fn find_param(text: &str, param: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find(param).map(|i| i + from) {
        if at > 0 && matches!(text.as_bytes()[at - 1], b'?' | b'&') {
            return Some(at);
        }
        from = at + param.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        for (input, want) in [
            (
                "redis://user:hunter2@bad host:6379",
                "redis://user:***@bad host:6379",
            ),
            (
                "redis://:hunter2@127.0.0.1:notaport",
                "redis://:***@127.0.0.1:notaport",
            ),
            ("rediss://token@h:6380/0", "rediss://***@h:6380/0"),
            ("redis://u:p@ss:w@rd@h", "redis://u:***@h"),
            ("redis://:hun ter/2@h", "redis://:***@h"),
            (
                "unix:///run/redis.sock?db=1&pass=hunter2&user=x",
                "unix:///run/redis.sock?db=1&pass=***&user=x",
            ),
            (
                "redis+unix:///s?PASSWORD=hunter2",
                "redis+unix:///s?PASSWORD=***",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://h/?bypass=1", "redis://h/?bypass=1"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(url(input), want, "{input}");
        }
    }

    #[test]
    fn urls_inside_messages_lose_their_credentials() {
        let message =
            r#"invalid type: string "redis://user:hunter2@bad host:6379", expected struct store"#;
        let out = in_text(message);
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains(r#""redis://user:***@bad host:6379""#), "{out}");
        let two = "`http://a:pw1@x` and `http://b:pw2@y?pass=pw3`";
        assert_eq!(
            in_text(two),
            "`http://a:***@x` and `http://b:***@y?pass=***`"
        );
        assert!(matches!(in_text("no url here"), Cow::Borrowed(_)));
    }

    #[test]
    fn scrub_masks_verbatim_secrets_too() {
        let url = "redis://user:hunter2@h";
        assert_eq!(
            scrub("AUTH failed for hunter2 at redis://user:hunter2@h", url),
            "AUTH failed for *** at redis://user:***@h"
        );
        assert_eq!(scrub("pass hunter3", "unix:///s?pass=hunter3"), "pass ***");
        assert_eq!(scrub("plain", "redis://h"), "plain");
    }
}
