//! Edits a streaming OpenAI request so its answer carries usage: the chat completions API sends
//! a stream's usage (a last chunk) only when the request sets
//! `"stream_options": {"include_usage": true}`.
//!
//! The edit keeps every other byte as the client sent it: the member is inserted right after
//! the opening `{`, or, when the client sent `stream_options`, only that object (or its
//! `include_usage` value) is touched and its other fields stay.

use serde_json::{Map, Value};
use std::ops::Range;

/// Inserted when the request has no `stream_options`.
const MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;
/// Replaces a `"stream_options": null`.
const OPTIONS: &[u8] = br#"{"include_usage":true}"#;

/// For a streaming OpenAI request body (`"stream": true`, a JSON object) that lacks
/// `"stream_options": {"include_usage": true}`, the edited body that has it; `None` when
/// nothing must change (not JSON, not an object, stream absent/false, include_usage already
/// true) or nothing can (a `stream_options` that is neither an object nor `null`, which the
/// API refuses anyway).
///
/// Keys are compared as written: a body that spells `stream_options` with escapes is left
/// alone rather than given a second member.
pub fn include_usage(body: &[u8]) -> Option<Vec<u8>> {
    // Most requests do not stream: a body that never names `stream` is not parsed at all.
    memchr::memmem::find(body, b"\"stream\"")?;
    let root = body.iter().position(|b| !is_whitespace(*b))?;
    if body[root] != b'{' {
        return None;
    }
    // Only the two members that matter are kept; the rest (the messages) is skipped unbuilt.
    let request = match serde_json::from_slice::<Probe>(body) {
        Ok(probe) => probe,
        // A repeated member (which a derived struct refuses): read whole, the last one wins.
        Err(_) => Probe::of(serde_json::from_slice::<Value>(body).ok()?)?,
    };
    if request.stream != Some(Value::Bool(true)) {
        return None;
    }
    match request.stream_options {
        None => Some(splice(body, root + 1..root + 1, MEMBER)),
        Some(Value::Null) => {
            let span = member_value(body, root, b"stream_options")?;
            Some(splice(body, span, OPTIONS))
        }
        Some(Value::Object(options)) => set_include_usage(body, root, &options),
        Some(_) => None,
    }
}

/// What `include_usage` reads of a request; other members are skipped without being built.
#[derive(serde::Deserialize)]
struct Probe {
    #[serde(default)]
    stream: Option<Value>,
    /// `Some(Value::Null)` for an explicit `null`, `None` when absent.
    #[serde(default, deserialize_with = "present")]
    stream_options: Option<Value>,
}

impl Probe {
    fn of(value: Value) -> Option<Probe> {
        let object = value.as_object()?;
        Some(Probe {
            stream: object.get("stream").cloned(),
            stream_options: object.get("stream_options").cloned(),
        })
    }
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    <Value as serde::Deserialize>::deserialize(d).map(Some)
}

/// `stream_options` is an object: sets its `include_usage` (unless already `true`), keeping
/// its other members.
fn set_include_usage(body: &[u8], root: usize, options: &Map<String, Value>) -> Option<Vec<u8>> {
    let span = member_value(body, root, b"stream_options")?;
    match options.get("include_usage") {
        Some(Value::Bool(true)) => None,
        Some(_) => {
            let value = member_value(body, span.start, b"include_usage")?;
            Some(splice(body, value, b"true"))
        }
        None => {
            let at = span.start + 1;
            let member: &[u8] = if options.is_empty() {
                br#""include_usage":true"#
            } else {
                br#""include_usage":true,"#
            };
            Some(splice(body, at..at, member))
        }
    }
}

fn splice(body: &[u8], span: Range<usize>, with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() - span.len() + with.len());
    out.extend_from_slice(&body[..span.start]);
    out.extend_from_slice(with);
    out.extend_from_slice(&body[span.end..]);
    out
}

/// The span of the value of member `key` of the object opening at `object` (a `{`) in
/// `json`, which is valid JSON; the last such member when the key repeats (as the parser
/// reads it). Nested objects' members do not count.
fn member_value(json: &[u8], object: usize, key: &[u8]) -> Option<Range<usize>> {
    let mut depth = 0u32;
    let mut expect_key = false;
    let mut key_hit = false;
    let mut value_start = None;
    let mut found = None;
    let mut i = object;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let end = string_end(json, i)?;
                if depth == 1 && expect_key {
                    key_hit = &json[i + 1..end] == key;
                }
                i = end;
            }
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1;
            }
            b':' if depth == 1 => {
                expect_key = false;
                if key_hit {
                    key_hit = false;
                    value_start = Some(i + 1);
                }
            }
            b',' | b'}' if depth == 1 => {
                if let Some(start) = value_start.take() {
                    found = Some(trim(json, start..i));
                }
                if json[i] == b'}' {
                    return found;
                }
                expect_key = true;
            }
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the `"` closing the string that opens at `open`.
fn string_end(json: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', json.get(i..)?)?;
        if json[at] == b'"' {
            return Some(at);
        }
        i = at + 2;
    }
}

fn trim(json: &[u8], span: Range<usize>) -> Range<usize> {
    let mut span = span;
    while span.start < span.end && is_whitespace(json[span.start]) {
        span.start += 1;
    }
    while span.end > span.start && is_whitespace(json[span.end - 1]) {
        span.end -= 1;
    }
    span
}

fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edited(body: &str) -> Option<String> {
        include_usage(body.as_bytes()).map(|b| String::from_utf8(b).expect("utf-8"))
    }

    #[test]
    fn a_stream_without_options_gets_them_first_and_keeps_every_other_byte() {
        let body = "  {\"model\": \"gpt-4o\",\n \"stream\": true, \"messages\": []}";
        assert_eq!(
            edited(body).as_deref(),
            Some("  {\"stream_options\":{\"include_usage\":true},\"model\": \"gpt-4o\",\n \"stream\": true, \"messages\": []}")
        );
    }

    #[test]
    fn include_usage_false_becomes_true_and_other_options_stay() {
        let body = r#"{"stream":true,"stream_options":{"x":[1,{"include_usage":false}], "include_usage" : false },"n":1}"#;
        assert_eq!(
            edited(body).as_deref(),
            Some(
                r#"{"stream":true,"stream_options":{"x":[1,{"include_usage":false}], "include_usage" : true },"n":1}"#
            )
        );
    }

    #[test]
    fn options_without_include_usage_get_it_and_keep_theirs() {
        let body = r#"{"stream_options": {"continuous_usage_stats": true}, "stream": true}"#;
        let out = edited(body).expect("edited");
        assert_eq!(
            out,
            r#"{"stream_options": {"include_usage":true,"continuous_usage_stats": true}, "stream": true}"#
        );
        let empty = r#"{"stream": true, "stream_options": {}}"#;
        assert_eq!(
            edited(empty).as_deref(),
            Some(r#"{"stream": true, "stream_options": {"include_usage":true}}"#)
        );
        let null = r#"{"stream": true, "stream_options": null, "model": "m"}"#;
        assert_eq!(
            edited(null).as_deref(),
            Some(r#"{"stream": true, "stream_options": {"include_usage":true}, "model": "m"}"#)
        );
    }

    #[test]
    fn every_edit_parses_with_include_usage_true_and_the_rest_unchanged() {
        for body in [
            r#"{"stream":true}"#,
            r#"{"stream":true,"stream_options":{"include_usage":null,"a":"}\"{"}}"#,
            r#"{"messages":[{"content":"\"stream_options\": {}"}],"stream":true}"#,
            r#"{"stream_options":{"include_usage":false},"stream":true,"stream_options":{"b":2}}"#,
        ] {
            let out = include_usage(body.as_bytes()).expect(body);
            let mut got: Value = serde_json::from_slice(&out).expect("edited body is JSON");
            assert_eq!(
                got["stream_options"]["include_usage"],
                Value::Bool(true),
                "{body}"
            );
            let mut want: Value = serde_json::from_str(body).expect("JSON");
            got["stream_options"]
                .as_object_mut()
                .expect("object")
                .remove("include_usage");
            if let Some(options) = want
                .get_mut("stream_options")
                .and_then(Value::as_object_mut)
            {
                options.remove("include_usage");
            } else {
                want["stream_options"] = Value::Object(Map::new());
            }
            assert_eq!(got, want, "{body}");
        }
    }

    #[test]
    fn nothing_changes_when_nothing_must() {
        for body in [
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"stream":false}"#,
            r#"{"model":"m"}"#,
            r#"{"stream":"true"}"#,
            r#"[{"stream":true}]"#,
            r#"{"stream":true"#,
            "not json",
            "",
            r#"{"stream":true,"stream_options":"x"}"#,
        ] {
            assert_eq!(edited(body), None, "{body}");
        }
    }
}
