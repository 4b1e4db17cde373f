//! Reading the file into [`RawConfig`] while collecting every key-level problem, not only the
//! first: serde stops at the first unknown key or wrongly typed value, so each one found is
//! reported and its entry blanked out of a copy of the text (line numbers kept), and the copy
//! is read again. What is left is validated as usual, so `check` reports unknown keys and type
//! errors together with the semantic problems.
//!
//! A YAML syntax error (bad indentation, a stray character) is reported, and the line it names
//! is blanked with the more indented lines under it, so the rest of the file is still read and
//! checked; problems on blanked lines cannot appear, and a required field lost with them ends
//! the search (it was reported as what it was). An error with no line, or an entry that cannot
//! be blanked safely (inside a `{...}` flow mapping), ends the search there.

use super::error::Problem;
use super::file::RawConfig;
use std::path::Path;

/// More than any real file has; bounds the work on a pathological one.
const MAX_PROBLEMS: usize = 100;

/// The file's raw config when one could be read (after blanking the entries that were
/// reported), the key-level problems found on the way, and the text that was read (same lines
/// as the file, the reported ones blanked) for finding the positions of later problems.
pub(super) fn read(file: &Path, text: &str) -> (Option<RawConfig>, Vec<Problem>, String) {
    let mut problems = Vec::new();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut blanked = false;
    while problems.len() < MAX_PROBLEMS {
        let current = lines.join("\n");
        let error = match serde_yaml::from_str::<RawConfig>(&current) {
            Ok(raw) => return (Some(raw), problems, current),
            Err(e) => e,
        };
        let message = error.to_string();
        // A required field we blanked ourselves: already reported as what it was.
        if blanked && message.contains("missing field") {
            break;
        }
        problems.push(Problem::from_yaml(file, &error));
        let Some(loc) = error.location() else { break };
        let cut = if is_entry_error(&message) {
            blank_entry(&mut lines, loc.line(), loc.column())
        } else {
            blank_line(&mut lines, loc.line())
        };
        if !cut {
            break;
        }
        blanked = true;
    }
    (None, problems, lines.join("\n"))
}

/// Errors about one entry (its key or its value), which blanking that entry removes.
fn is_entry_error(message: &str) -> bool {
    [
        "unknown field",
        "invalid type",
        "invalid value",
        "unknown variant",
        "invalid length",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// Blanks the block-mapping entry on `line` (1-based) whose key or value starts at `column`:
/// from its key to the end of the line, and the more indented lines under it. `false` when the
/// line is not a plain `key: value` entry that can be cut without breaking its neighbours.
fn blank_entry(lines: &mut [String], line: usize, column: usize) -> bool {
    let Some(index) = line.checked_sub(1) else {
        return false;
    };
    let Some(text) = lines.get(index) else {
        return false;
    };
    // The key starts after the indentation and any `- ` sequence markers.
    let key_start = text
        .char_indices()
        .find(|(_, c)| *c != ' ' && *c != '-')
        .map_or(text.len(), |(i, _)| i);
    let prefix = &text[..key_start];
    let Some(at) = column.checked_sub(1).filter(|c| *c >= key_start) else {
        return false;
    };
    // Either the key itself, or a value right after `key:` on a line of plain block style.
    let between = text.get(key_start..at).unwrap_or("{");
    let plain = at == key_start || (between.contains(':') && !between.contains(['{', '[', ',']));
    if !plain {
        return false;
    }
    let indent = key_start;
    // A `- key:` item keeps its `-`, so the item's other keys stay one mapping.
    lines[index] = prefix.trim_end().to_owned();
    for next in lines.iter_mut().skip(index + 1) {
        let spaces = next.len() - next.trim_start_matches(' ').len();
        if next.trim().is_empty() || next.trim_start().starts_with('#') || spaces > indent {
            next.clear();
        } else {
            break;
        }
    }
    true
}

/// Blanks line `line` (1-based) of a syntax error and the more indented lines under it; `false`
/// if it is blank already (nothing would change, so reading again would fail the same way).
fn blank_line(lines: &mut [String], line: usize) -> bool {
    let Some(index) = line.checked_sub(1).filter(|i| *i < lines.len()) else {
        return false;
    };
    if lines[index].trim().is_empty() {
        return false;
    }
    let indent = lines[index].len() - lines[index].trim_start_matches(' ').len();
    lines[index].clear();
    for next in lines.iter_mut().skip(index + 1) {
        let spaces = next.len() - next.trim_start_matches(' ').len();
        if !next.trim().is_empty() && spaces > indent {
            next.clear();
        } else {
            break;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blanks_a_nested_entry_and_keeps_an_items_marker() {
        let mut lines: Vec<String> = "a:\n  bad:\n    x: 1\n  good: 2\nr:\n  - typo: 1\n    k: 2"
            .lines()
            .map(str::to_owned)
            .collect();
        assert!(blank_entry(&mut lines, 2, 3));
        assert!(blank_entry(&mut lines, 6, 5));
        assert_eq!(lines.join("\n"), "a:\n\n\n  good: 2\nr:\n  -\n    k: 2");
    }

    #[test]
    fn leaves_flow_mappings_alone() {
        let mut lines = vec!["a: {b: 1, c: 2}".to_owned()];
        assert!(!blank_entry(&mut lines, 1, 11));
    }
}
