//! `apps ...` and `keys ...`: each a call to the admin API, printed as a table or JSON.

use super::client::{encode, AdminClient, ClientError};
use super::table;
use super::{AdminArgs, AppsCommand, KeysCommand};
use http::Method;
use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitCode;

const APP_COLUMNS: &[&str] = &[
    "id",
    "name",
    "scopes",
    "rate_limit",
    "created_at",
    "created_by",
];
const USAGE_COLUMNS: &[&str] = &["date", "requests"];
const KEY_COLUMNS: &[&str] = &[
    "id",
    "app_id",
    "name",
    "masked",
    "status",
    "created_at",
    "expires_at",
    "last_used_at",
];

pub async fn apps(config: &Path, args: &AdminArgs, command: AppsCommand) -> ExitCode {
    let Some(client) = connect(config, args) else {
        return ExitCode::FAILURE;
    };
    let result = match command {
        AppsCommand::Create { name, scopes } => {
            client
                .call(
                    Method::POST,
                    "/v1/apps",
                    Some(json!({"name": name, "scopes": scopes})),
                )
                .await
        }
        AppsCommand::List { search } => client.list(&with_search("/v1/apps", search)).await,
        AppsCommand::Update { id, name, scopes } => {
            let mut body = serde_json::Map::new();
            if let Some(n) = name {
                body.insert("name".into(), json!(n));
            }
            if let Some(s) = scopes {
                body.insert("scopes".into(), json!(s));
            }
            client
                .call(
                    Method::PATCH,
                    &format!("/v1/apps/{}", encode(&id)),
                    Some(Value::Object(body)),
                )
                .await
        }
        AppsCommand::Usage { id, days } => {
            let path = format!("/v1/apps/{}/usage?days={days}", encode(&id));
            return print_result(
                client.call(Method::GET, &path, None).await,
                args.json,
                USAGE_COLUMNS,
            );
        }
        AppsCommand::Delete { id } => {
            client
                .call(Method::DELETE, &format!("/v1/apps/{}", encode(&id)), None)
                .await
        }
    };
    print_result(result, args.json, APP_COLUMNS)
}

pub async fn keys(config: &Path, args: &AdminArgs, command: KeysCommand) -> ExitCode {
    let Some(client) = connect(config, args) else {
        return ExitCode::FAILURE;
    };
    let result = match command {
        KeysCommand::Create {
            app,
            name,
            expires_in_days,
        } => {
            let mut body = json!({"name": name});
            if let Some(days) = expires_in_days {
                body["expires_in_days"] = json!(days);
            }
            let answer = client
                .call(
                    Method::POST,
                    &format!("/v1/apps/{}/keys", encode(&app)),
                    Some(body),
                )
                .await;
            if let (Ok(v), false) = (&answer, args.json) {
                println!("key: {}", v["key"].as_str().unwrap_or("-"));
                println!("(shown once: store it now; only its hash is kept)");
            }
            answer
        }
        KeysCommand::List {
            app: Some(app),
            search,
        } => {
            client
                .list(&with_search(
                    &format!("/v1/apps/{}/keys", encode(&app)),
                    search,
                ))
                .await
        }
        KeysCommand::List { app: None, search } => {
            client.list(&with_search("/v1/keys", search)).await
        }
        KeysCommand::Usage { id, days } => {
            let path = format!("/v1/keys/{}/usage?days={days}", encode(&id));
            return print_result(
                client.call(Method::GET, &path, None).await,
                args.json,
                USAGE_COLUMNS,
            );
        }
        KeysCommand::Revoke { id } => {
            client
                .call(Method::DELETE, &format!("/v1/keys/{}", encode(&id)), None)
                .await
        }
    };
    print_result(result, args.json, KEY_COLUMNS)
}

fn with_search(path: &str, search: Option<String>) -> String {
    match search {
        Some(s) => format!("{path}?search={}", encode(&s)),
        None => path.to_owned(),
    }
}

/// Builds the client from flags, falling back to the config file and its token variable.
fn connect(config_path: &Path, args: &AdminArgs) -> Option<AdminClient> {
    let needs_config = args.admin_url.is_none() || args.token.is_none();
    let config = if needs_config {
        match crate::config::load(config_path) {
            Ok(c) => Some(c),
            Err(errors) => {
                for p in &errors.problems {
                    eprintln!("{p}");
                }
                eprintln!("scopegate: pass --admin-url and --token, or fix the config above");
                return None;
            }
        }
    } else {
        None
    };
    let Some(url) = args.admin_url.clone().or_else(|| {
        config
            .as_ref()
            .map(|c| format!("http://{}", c.admin.listen))
    }) else {
        eprintln!("scopegate: no admin URL: pass --admin-url");
        return None;
    };
    let token = match args.token.clone() {
        Some(t) => t,
        None => {
            let Some(env) = config
                .as_ref()
                .and_then(|c| c.admin.tokens.first())
                .map(|i| i.env.clone())
            else {
                eprintln!("scopegate: no admin token: pass --token");
                return None;
            };
            match std::env::var(&env) {
                Ok(t) => t,
                Err(_) => {
                    eprintln!("scopegate: no admin token: pass --token or set {env}");
                    return None;
                }
            }
        }
    };
    Some(AdminClient::new(&url, token))
}

fn print_result(result: Result<Value, ClientError>, as_json: bool, columns: &[&str]) -> ExitCode {
    match result {
        Err(e) => {
            eprintln!("scopegate: {e}");
            ExitCode::FAILURE
        }
        Ok(Value::Null) => {
            if as_json {
                println!("{{}}");
            } else {
                println!("done");
            }
            ExitCode::SUCCESS
        }
        Ok(value) if as_json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(Value::Array(rows)) => {
            print!("{}", table::render(&rows, columns));
            ExitCode::SUCCESS
        }
        Ok(row) => {
            print!("{}", table::render(&[row], columns));
            ExitCode::SUCCESS
        }
    }
}
