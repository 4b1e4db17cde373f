//! Printing admin answers: lists as aligned tables that fit 100 columns (long cells cut with
//! `~`, unless `--wide`), single objects as `field: value` lines. Control characters in what
//! the admin API answers (names stored before they were refused) are printed escaped, never
//! raw: an ESC or C1 sequence in a name would otherwise drive the admin's terminal.

use serde_json::Value;
use std::borrow::Cow;
use std::fmt::Write;

/// One column of a table.
#[derive(Clone, Copy, Debug)]
pub(super) struct Column {
    /// The JSON field shown.
    pub field: &'static str,
    /// Longest cell before it is cut (in characters), unless the table is wide.
    pub max: usize,
}

/// What a cut cell ends with: ASCII, so widths stay one byte per character in any terminal.
const CUT: char = '~';

/// Renders objects as a table with the given columns.
pub(super) fn render(rows: &[Value], columns: &[Column], wide: bool) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| fit(cell(&row[c.field]), c.max, wide))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.field.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let header: Vec<String> = columns.iter().map(|c| c.field.to_uppercase()).collect();
    push_line(&mut out, &header, &widths);
    for row in &cells {
        push_line(&mut out, row, &widths);
    }
    out
}

/// One object as `field: value` lines, every field, nothing cut.
pub(super) fn record(row: &Value) -> String {
    let Value::Object(map) = row else {
        return format!("{}\n", cell(row));
    };
    let width = map.keys().map(String::len).max().unwrap_or(0);
    map.iter()
        .map(|(k, v)| {
            let k = escape_controls(k);
            format!("{:<w$} {}\n", format!("{k}:"), cell(v), w = width + 1)
        })
        .collect()
}

/// `text` with every control character written as an escape: `\n`, `\r`, `\t`, `\x1b` (other
/// C0 controls and DEL), `\u{9b}` (C1 controls). Borrowed when there is none.
pub(super) fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON text (from serde_json, which escapes C0 controls only) with DEL and C1 controls
/// escaped too (`\u009b`): the same JSON value, nothing raw for a terminal to act on.
pub(super) fn escape_json_controls(json: &str) -> Cow<'_, str> {
    if !json.chars().any(char::is_control) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        // Outside strings serde_json writes only ASCII newlines and spaces, which stay.
        if c.is_control() && !matches!(c, '\n' | '\r' | '\t') {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn fit(text: String, max: usize, wide: bool) -> String {
    if wide {
        return text;
    }
    // RFC 3339 times to the minute: `2026-01-31T12:00:00Z` → `2026-01-31 12:00`.
    let b = text.as_bytes();
    if b.len() >= 19 && b[4] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':' {
        return format!("{} {}", &text[..10], &text[11..16]);
    }
    if text.chars().count() <= max || max < 2 {
        return text;
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push(CUT);
    cut
}

fn push_line(out: &mut String, cells: &[String], widths: &[usize]) {
    let line: Vec<String> = cells
        .iter()
        .zip(widths)
        .map(|(c, w)| format!("{c:<w$}", w = *w))
        .collect();
    out.push_str(line.join("  ").trim_end());
    out.push('\n');
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => escape_controls(s).into_owned(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        // A rate limit reads as the CLI takes it.
        Value::Object(map) if map.contains_key("per_second") && map.contains_key("burst") => {
            format!("{}/{}", cell(&map["per_second"]), cell(&map["burst"]))
        }
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{}={}", escape_controls(k), cell(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: &[Column] = &[
        Column {
            field: "id",
            max: 6,
        },
        Column {
            field: "name",
            max: 10,
        },
        Column {
            field: "scopes",
            max: 10,
        },
    ];

    #[test]
    fn aligns_columns_and_shows_missing_values() {
        let rows = vec![
            serde_json::json!({"id": "a1", "name": "tools", "scopes": ["x", "y"]}),
            serde_json::json!({"id": "b22", "name": null, "scopes": []}),
        ];
        let text = render(&rows, COLUMNS, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID   NAME   SCOPES");
        assert_eq!(lines[1], "a1   tools  x,y");
        assert_eq!(lines[2], "b22  -      -");
    }

    #[test]
    fn cuts_long_cells_unless_wide() {
        let rows = vec![
            serde_json::json!({"id": "0123456789", "name": "n", "scopes": [],
            "rate_limit": {"per_second": 5, "burst": 10}}),
        ];
        assert_eq!(
            render(&rows, COLUMNS, false).lines().nth(1),
            Some("01234~  n     -")
        );
        assert_eq!(
            render(&rows, COLUMNS, true).lines().nth(1),
            Some("0123456789  n     -")
        );
        let columns = [Column {
            field: "rate_limit",
            max: 10,
        }];
        assert_eq!(render(&rows, &columns, false).lines().nth(1), Some("5/10"));
        let rows = vec![serde_json::json!({"at": "2026-01-31T12:34:56.789Z"})];
        let columns = [Column {
            field: "at",
            max: 16,
        }];
        assert_eq!(
            render(&rows, &columns, false).lines().nth(1),
            Some("2026-01-31 12:34")
        );
        assert_eq!(
            render(&rows, &columns, true).lines().nth(1),
            Some("2026-01-31T12:34:56.789Z")
        );
    }

    #[test]
    fn control_characters_are_printed_escaped() {
        let name = "x\u{9b}31m\u{1b}]52;c;eA==\u{7}\u{7f}\n\t\r\u{0}ü";
        let escaped = r"x\u{9b}31m\x1b]52;c;eA==\x07\x7f\n\t\r\x00ü";
        assert_eq!(escape_controls(name), escaped);
        assert!(matches!(escape_controls("plain ü"), Cow::Borrowed(_)));
        let rows = vec![serde_json::json!({"id": "a1", "name": name, "scopes": [name]})];
        let text = render(&rows, COLUMNS, true);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert_eq!(text.lines().count(), 2, "{text}");
        let text = record(&serde_json::json!({"name": name, "details": {"k\u{1b}": name}}));
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains(escaped), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
        let json = serde_json::to_string_pretty(&serde_json::json!({"name": name})).expect("JSON");
        let shown = escape_json_controls(&json);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "{shown:?}"
        );
        let back: Value = serde_json::from_str(&shown).expect("still JSON");
        assert_eq!(back["name"], name);
    }

    #[test]
    fn a_record_shows_every_field() {
        let text = record(&serde_json::json!({"id": "k1", "allowed_ips": ["10.0.0.0/8"]}));
        assert_eq!(text, "allowed_ips: 10.0.0.0/8\nid:          k1\n");
    }
}
