//! Running a management command: log in to the admin API, make the call [`super::calls`]
//! built, print the answer as a table, a record or JSON.

use super::calls::{AdminCall, Answer, UsageError, View};
use super::client::{AdminClient, ClientError};
use super::commands::AdminArgs;
use super::table::{self, Column};
use http::StatusCode;
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;

/// Why a management command failed, ready to print after `scopegate: `.
#[derive(Debug, thiserror::Error)]
pub(super) enum ManageError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("the admin API has no {0} (is the gateway older than this CLI?)")]
    NoEndpoint(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Login(String),
}

/// Builds the call, makes it, prints the answer; the exit code says how it went.
pub(super) async fn run(
    config: &Path,
    args: &AdminArgs,
    call: Result<AdminCall, UsageError>,
) -> ExitCode {
    match execute(config, args, call).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The server's message may quote stored names; a URL given may carry a password.
            let text = e.to_string();
            let text = crate::redact::in_text(&text);
            eprintln!("scopegate: {}", table::escape_controls(&text));
            ExitCode::FAILURE
        }
    }
}

async fn execute(
    config: &Path,
    args: &AdminArgs,
    call: Result<AdminCall, UsageError>,
) -> Result<(), ManageError> {
    let call = call?;
    let client = connect(config, args)?;
    let answer = match call.answer {
        Answer::Text => client.text(&call.path).await.map(Value::String),
        Answer::List(_) => client.list(&call.path).await,
        _ => {
            client
                .call(call.method.clone(), &call.path, call.body.clone())
                .await
        }
    };
    let value = answer.map_err(|e| explain(e, &call))?;
    print(&value, call.answer, args);
    Ok(())
}

/// A 404 names what was not found (or the call the server does not know).
fn explain(error: ClientError, call: &AdminCall) -> ManageError {
    match (&error, &call.subject) {
        (ClientError::Refused { status, .. }, Some((what, id)))
            if *status == StatusCode::NOT_FOUND =>
        {
            ManageError::NotFound {
                what,
                id: id.clone(),
            }
        }
        (ClientError::Refused { status, message }, None)
            if *status == StatusCode::NOT_FOUND && message == "not found" =>
        {
            let path = call.path.split('?').next().unwrap_or_default();
            ManageError::NoEndpoint(format!("{} {path}", call.method))
        }
        _ => ManageError::Client(error),
    }
}

fn print(value: &Value, answer: Answer, args: &AdminArgs) {
    match (value, answer) {
        (Value::String(text), Answer::Text) => print!("{text}"),
        (_, _) if args.json => {
            let json = serde_json::to_string_pretty(value).unwrap_or_default();
            println!("{}", table::escape_json_controls(&json));
        }
        (Value::Null, _) => println!("done"),
        (_, Answer::Issued) => {
            let mut shown = value.clone();
            if let Value::Object(map) = &mut shown {
                map.remove("key");
            }
            print!("{}", table::record(&shown));
            println!();
            println!("key: {}", value["key"].as_str().unwrap_or("-"));
            println!("(shown once: store it now; only its hash is kept)");
        }
        (Value::Array(upstreams), Answer::List(View::Upstreams)) => {
            print!("{}", upstream_tables(upstreams, args.wide));
        }
        (Value::Array(rows), Answer::List(View::Credentials)) if !args.wide => {
            let rows: Vec<Value> = rows.iter().map(short_mask).collect();
            print!("{}", table::render(&rows, CREDENTIALS, false));
        }
        (Value::Array(rows), Answer::List(view)) => {
            print!("{}", table::render(rows, columns(view), args.wide));
        }
        (row, _) => print!("{}", table::record(row)),
    }
}

/// A credential row with its mask's run of `*` cut to [`MASK_STARS`], so the two ends it
/// shows fit the table (`--wide` and `show` print it whole).
fn short_mask(row: &Value) -> Value {
    let mut row = row.clone();
    if let Some(masked) = row["masked"].as_str() {
        let stars = masked.chars().filter(|c| *c == '*').count();
        if stars > MASK_STARS {
            let short = masked.replacen(&"*".repeat(stars), &"*".repeat(MASK_STARS), 1);
            row["masked"] = Value::String(short);
        }
    }
    row
}

/// Stars a credential table shows for the hidden middle of a value.
const MASK_STARS: usize = 8;

/// `GET /v1/upstreams` as one table of targets per upstream, under a line naming the upstream
/// and its balancing: nine columns in one table would not fit 100.
fn upstream_tables(upstreams: &[Value], wide: bool) -> String {
    let text = |v: &Value| table::escape_controls(v.as_str().unwrap_or("-")).into_owned();
    upstreams
        .iter()
        .map(|upstream| {
            let targets: Vec<Value> = upstream["targets"]
                .as_array()
                .map(|targets| targets.iter().map(target_row).collect())
                .unwrap_or_default();
            format!(
                "upstream {} (balance: {})\n{}",
                text(&upstream["name"]),
                text(&upstream["balance"]),
                table::render(&targets, TARGETS, wide)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A target as a table row: `url` shown as `target`, `open_connections` as `connections`
/// (shorter headers, so the table fits).
fn target_row(target: &Value) -> Value {
    serde_json::json!({
        "target": target["url"],
        "address": target["address"],
        "weight": target["weight"],
        "healthy": target["healthy"],
        "ejected_until": target["ejected_until"],
        "in_flight": target["in_flight"],
        "connections": target["open_connections"],
    })
}

const fn c(field: &'static str, max: usize) -> Column {
    Column { field, max }
}
const ID: usize = 12;
/// Times are shown to the minute in tables (`2026-01-31 12:00`).
const TIME: usize = 16;
const APPS: &[Column] = &[
    c("id", ID),
    c("name", 16),
    c("scopes", 22),
    c("rate_limit", 10),
    c("created_at", TIME),
    c("created_by", 10),
];
const KEYS: &[Column] = &[
    c("id", ID),
    c("app_id", ID),
    c("name", 12),
    c("status", 8),
    c("created_by", 10),
    c("expires_at", TIME),
    c("last_used_at", TIME),
];
const USAGE: &[Column] = &[
    c("date", 10),
    c("requests", 12),
    c("input_tokens", 14),
    c("output_tokens", 14),
];
const SCOPES: &[Column] = &[c("name", 24), c("description", 72)];
const ROUTES: &[Column] = &[
    c("methods", 16),
    c("path", 44),
    c("scope", 20),
    c("upstream", 12),
];
/// The targets of one upstream (see [`target_row`]); an ejection time is shown to the minute.
const TARGETS: &[Column] = &[
    c("target", 24),
    c("address", 15),
    c("weight", 6),
    c("healthy", 7),
    c("ejected_until", TIME),
    c("in_flight", 9),
    c("connections", 11),
];
const AUDIT: &[Column] = &[
    c("at", TIME),
    c("actor", 10),
    c("action", 12),
    c("app_id", ID),
    c("key_id", ID),
    c("details", 28),
];
const CREDENTIALS: &[Column] = &[
    c("name", 20),
    c("masked", 20),
    c("description", 16),
    c("updated_at", TIME),
    c("last_used_at", TIME),
];
const EXPORT: &[Column] = &[
    c("date", 10),
    c("app_id", ID),
    c("key_id", ID),
    c("requests", 12),
];

/// Each view's columns, cut so that a table fits 100 columns.
fn columns(view: View) -> &'static [Column] {
    match view {
        View::Apps => APPS,
        View::Keys => KEYS,
        View::Usage => USAGE,
        View::Scopes => SCOPES,
        View::Routes => ROUTES,
        View::Upstreams => TARGETS,
        View::Audit => AUDIT,
        View::Export => EXPORT,
        View::Credentials => CREDENTIALS,
    }
}

/// The client from flags, falling back to the config file and its token variable.
fn connect(config_path: &Path, args: &AdminArgs) -> Result<AdminClient, ManageError> {
    let has_token = args.token.is_some() || args.token_file.is_some();
    let config = if args.admin_url.is_none() || !has_token {
        match crate::config::load(config_path) {
            Ok(c) => Some(c),
            Err(errors) => {
                for p in &errors.problems {
                    eprintln!("{p}");
                }
                return Err(ManageError::Login(
                    "pass --admin-url and --token-file (or --token), or fix the config above"
                        .into(),
                ));
            }
        }
    } else {
        None
    };
    let url = match (&args.admin_url, &config) {
        (Some(url), _) => url.clone(),
        (None, Some(c)) => format!("http://{}", super::health::reachable(c.admin.listen)),
        (None, None) => return Err(ManageError::Login("no admin URL: pass --admin-url".into())),
    };
    Ok(AdminClient::new(&url, token(args, config.as_ref())?))
}

/// `--token-file`, `--token`, or the variable named by `admin.token_env`, in that order.
fn token(args: &AdminArgs, config: Option<&crate::config::Config>) -> Result<String, ManageError> {
    if let Some(file) = &args.token_file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            ManageError::Login(format!("cannot read --token-file {}: {e}", file.display()))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ManageError::Login(format!(
                "--token-file {} is empty",
                file.display()
            )));
        }
        return Ok(token.to_owned());
    }
    if let Some(token) = &args.token {
        return Ok(token.clone());
    }
    let env = config
        .and_then(|c| c.admin.tokens.first())
        .map(|i| i.env.clone())
        .ok_or_else(|| ManageError::Login("no admin token: pass --token-file or --token".into()))?;
    std::env::var(&env).map_err(|_| {
        ManageError::Login(format!(
            "no admin token: pass --token-file or --token, or set {env}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_fits_100_columns() {
        for view in [
            View::Apps,
            View::Keys,
            View::Usage,
            View::Scopes,
            View::Routes,
            View::Upstreams,
            View::Audit,
            View::Export,
            View::Credentials,
        ] {
            let cols = columns(view);
            let width: usize =
                cols.iter().map(|c| c.max.max(c.field.len())).sum::<usize>() + 2 * (cols.len() - 1);
            assert!(width <= 100, "{view:?}: {width}");
        }
    }

    #[test]
    fn upstreams_print_a_table_of_targets_each() {
        let answer = serde_json::json!([
            {"name": "models", "balance": "round_robin", "targets": [
                {"url": "http://127.0.0.1:7002", "address": "127.0.0.1:7002", "weight": 2,
                 "healthy": true, "ejected_until": null, "in_flight": 3, "open_connections": 4},
                {"url": "http://models-b.internal:7002", "address": "10.0.0.7:7002",
                 "weight": 1, "healthy": false, "ejected_until": "2026-01-31T12:00:10Z",
                 "in_flight": 0, "open_connections": 0},
            ]},
            {"name": "to\u{1b}ols", "balance": "least_requests", "targets": []},
        ]);
        let text = upstream_tables(answer.as_array().expect("array"), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "upstream models (balance: round_robin)");
        let header = [
            "TARGET",
            "ADDRESS",
            "WEIGHT",
            "HEALTHY",
            "EJECTED_UNTIL",
            "IN_FLIGHT",
        ];
        let words: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(words[..6], header, "{text}");
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "http://127.0.0.1:7002",
                "127.0.0.1:7002",
                "2",
                "true",
                "-",
                "3",
                "4"
            ]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            [
                "http://models-b.interna~",
                "10.0.0.7:7002",
                "1",
                "false",
                "2026-01-31",
                "12:00",
                "0",
                "0"
            ]
        );
        // A blank line between upstreams; a name's control character is shown escaped.
        assert_eq!(lines[4], "");
        assert_eq!(lines[5], "upstream to\\x1bols (balance: least_requests)");
        assert!(text.lines().all(|l| l.len() <= 100), "{text}");
    }

    #[test]
    fn a_token_file_is_trimmed() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret\n").expect("write");
        let args = AdminArgs {
            token_file: Some(file),
            ..AdminArgs::default()
        };
        assert_eq!(token(&args, None).expect("token"), "s3cret");
    }
}
