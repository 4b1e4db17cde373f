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
/// taken as one URL, so a password with spaces or `/` in a malformed URL is masked too, and so
/// is the user info of a URL whose scheme is misspelled (`redis//:pw@host`, `redis:/u:pw@h`):
/// see [`user_info`].
pub(crate) fn url(url: &str) -> Cow<'_, str> {
    let Some((start, at)) = user_info(url) else {
        return mask_params(url);
    };
    let info = &url[start..at];
    // The user name says which account without giving it away; a lone token may be the secret.
    let user = info.split_once(':').map(|(user, _)| user);
    let host = mask_params(&url[at + 1..]);
    Cow::Owned(match user {
        Some(user) => format!("{}{user}:{MASK}@{host}", &url[..start]),
        None => format!("{}{MASK}@{host}", &url[..start]),
    })
}

/// `text` with every URL-ish word in it passed through [`url`]: a word (up to a space or quote)
/// with `://` or `@` in it, as in an error message that quotes a value, misspelled or not.
pub(crate) fn in_text(text: &str) -> Cow<'_, str> {
    if !text.contains("://") && !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(is_word_end).unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        if word.contains("://") || word.contains('@') {
            out.push_str(&url(word));
        } else {
            out.push_str(word);
        }
        // The delimiter itself, then the next word.
        let delimiter = after.chars().next().map_or(0, char::len_utf8);
        out.push_str(&after[..delimiter]);
        rest = &after[delimiter..];
    }
    Cow::Owned(out)
}

/// Where a URL quoted in a message ends.
fn is_word_end(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>')
}

/// `text` (an error from a library given `url`) through [`in_text`], and with every verbatim
/// copy of `url`'s secrets masked, for messages that quote a password without its URL.
pub(crate) fn scrub(text: &str, url: &str) -> String {
    let mut out = in_text(text).into_owned();
    for secret in secrets(url) {
        out = out.replace(secret, MASK);
    }
    out
}

/// Where `url`'s user info lies (start, and the index of the `@` that ends it), for any text
/// with an `@`, however malformed: it runs to the last `@` from just after the first run of
/// `/` (`redis://`, `redis//`, `redis:/`, `//`), or, with no `/` before the `@`, from the start
/// of the text (`redis:user:pw@host` shows as `redis:***@host`). Where in doubt, more is masked.
fn user_info(url: &str) -> Option<(usize, usize)> {
    let at = url.rfind('@')?;
    let start = match url[..at].find('/') {
        Some(slash) => slash + url[slash..at].len() - url[slash..at].trim_start_matches('/').len(),
        None => 0,
    };
    Some((start, at))
}

/// The parts of `url` that [`url`] masks.
fn secrets(url: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = url;
    if let Some((start, at)) = user_info(url) {
        let info = &url[start..at];
        found.push(info.split_once(':').map_or(info, |(_, password)| password));
        rest = &url[at + 1..];
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
            // Misspelled schemes: no `://` to say where the user info starts.
            ("redis//:S3cret@host", "redis//:***@host"),
            ("redis:/user:S3cret@host:6379", "redis:/user:***@host:6379"),
            ("//:S3cret@h", "//:***@h"),
            ("redis:user:S3cret@host", "redis:***@host"),
            ("redis:/S3cret@host/x@y", "redis:/***@y"),
            ("rediss://u:S3cret@h:x", "rediss://u:***@h:x"),
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
        let misspelled = r#"invalid type: string "redis//:S3cret@host", expected struct store"#;
        assert_eq!(
            in_text(misspelled),
            r#"invalid type: string "redis//:***@host", expected struct store"#
        );
        assert_eq!(
            in_text("at redis:/u:S3cret@h:1 now"),
            "at redis:/u:***@h:1 now"
        );
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
        assert_eq!(scrub("bad S3cret", "redis//:S3cret@h"), "bad ***");
    }
}
