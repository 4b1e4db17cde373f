//! Printing admin answers as aligned text tables.

use serde_json::Value;

/// Renders objects as a table with the given columns (JSON field names).
pub fn render(rows: &[Value], columns: &[&str]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| cell(&row[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let header: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
    push_line(&mut out, &header, &widths);
    for row in &cells {
        push_line(&mut out, row, &widths);
    }
    out
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
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_and_shows_missing_values() {
        let rows = vec![
            serde_json::json!({"id": "a1", "name": "tools", "scopes": ["x", "y"]}),
            serde_json::json!({"id": "b22", "name": null, "scopes": []}),
        ];
        let text = render(&rows, &["id", "name", "scopes"]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID   NAME   SCOPES");
        assert_eq!(lines[1], "a1   tools  x,y");
        assert_eq!(lines[2], "b22  -");
    }
}
